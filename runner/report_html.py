"""``report.html``: the run report with pictures, one file that opens offline (PNG embedded as
base64, no script, no external stylesheet). The same PNGs are kept in ``plots/`` for MLflow."""
from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path

from components import plots
from components.files import build_dir, write_bytes, write_text
from components.secrets import scrub
from components import stats
from runner.report import (SET_LABELS, Facts, collect, comparison, extraction_quality, headline, knowledge, markdown,
                           mcq_categories)

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
# Documents drawn one bar each in the per-source picture; the table lists them all.
MAX_SOURCES = 25

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1000px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.4}
h1{border-bottom:2px solid #1f77b4;padding-bottom:.2em}h2{margin-top:1.8em;color:#1f4e79}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f0f4f8}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}
.FAILED,.KILLED{color:#b00020;font-weight:bold}.FINISHED{color:#1b7f3b;font-weight:bold}
.alert{background:#fff4e5;border-left:4px solid #ff7f0e;padding:.3em .6em;margin:.3em 0}
"""


def _t(x) -> str:
    return html.escape(scrub(str(x)))


def _num(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(header: list[str] | None, rows: list[list], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_t(h)}</th>" for h in header or [])
    body = "".join("<tr>" + "".join(f"<td class='n'>{_t(_num(c))}</td>" if i in numeric
                                    else f"<td>{_t(c)}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def pictures(f: Facts) -> dict[str, bytes]:
    """PNG name -> bytes, for each picture the run has data for."""
    out: dict[str, bytes] = {}

    def draw(name: str, fn, *args, **kwargs) -> None:
        try:
            out[name] = fn(*args, **kwargs)
        except Exception as exc:  # a picture that cannot be drawn must not cost the report
            log.warning("report: picture %s not drawn: %s", name, exc)

    if f.series:
        draw("loss_curves.png", plots.loss_curves, f.series)
    quality = extraction_quality(f.extractions, f.kept_qa)
    if quality:
        docs = sorted((k for k in quality if k != "all"), key=lambda k: -quality[k]["chunks"])[:MAX_SOURCES]
        groups = ["all", *docs]
        draw("extraction_quality.png", plots.grouped_bars, groups,
             {rate: [quality[g][rate] for g in groups] for rate in ("valid", "grounded", "kept")},
             "Extraction quality per source", "rate", limit=1.05)
    if f.dataset:
        kinds = sorted({k for c in f.dataset.values() for k in c})
        splits = list(f.dataset)
        draw("dataset_mixture.png", plots.stacked_bars, splits,
             {k: [f.dataset[s].get(k, 0) for s in splits] for k in kinds},
             "Dataset mixture (meta.kind)", "examples")
    panels = base_vs_tuned_panels(f)
    if panels:
        draw("base_vs_tuned.png", plots.base_vs_tuned, panels)
    for name, cats in mcq_categories(f.eval).items():
        labels = list(cats)
        draw(f"{name}_per_category.png", plots.grouped_bars, labels,
             {"base": [cats[c][0] for c in labels], "tuned": [cats[c][1] for c in labels]},
             f"{SET_LABELS.get(name, name)}: accuracy per category", "accuracy", limit=1.05)
    if f.timings:
        draw("stage_timings.png", plots.hbars, {s: float(t.get("seconds", 0)) for s, t in f.timings.items()},
             "Stage timings", "seconds")
    return out


def base_vs_tuned_panels(f: Facts) -> dict[str, dict[str, tuple]]:
    """One panel per scale: accuracies of the probe sets (with 95 % Wilson intervals), and the
    losses."""
    panels: dict[str, dict[str, tuple]] = {}
    acc = {}
    for name, c in knowledge(f).items():
        n = int(c["n"])
        ci = [stats.wilson(round(c[k] * n), n) for k in ("base", "tuned")]
        acc[SET_LABELS.get(name, name)] = (c["base"], c["tuned"], *ci)
    if acc:
        panels["accuracy"] = acc
    losses = {k: v for k, v in comparison(f).items() if "loss" in k or "ppl" in k}
    if losses:
        panels["loss"] = {k.replace("_", " "): v for k, v in losses.items() if "loss" in k} or losses
    return panels


def _img(pngs: dict[str, bytes], name: str, alt: str) -> str:
    if name not in pngs:
        return ""
    data = base64.b64encode(pngs[name]).decode("ascii")
    return f"<img alt='{_t(alt)}' src='data:image/png;base64,{data}'>"


def render(f: Facts, pngs: dict[str, bytes]) -> str:
    status = str(f.info.get("status", "FINISHED"))
    parts = [f"<h1>Run report <span class='{_t(status.split()[0])}'>{_t(status)}</span></h1>",
             _table(None, [[k, v] for k, v in f.info.items()])]
    parts += ["<h2>Headline</h2><ul>"]
    parts += [f"<li>{_t(line.lstrip('- ').replace('**', ''))}</li>" for line in headline(f)]
    parts += ["</ul>"]
    if f.alerts:
        parts += ["<h2>Alerts</h2>"]
        parts += [f"<div class='alert'>{_t(json.dumps(a, ensure_ascii=False))[:500]}</div>"
                  for a in f.alerts[:100]]
    if f.series:
        parts += ["<h2>Loss curves</h2>", _img(pngs, "loss_curves.png", "loss by step")]
    quality = extraction_quality(f.extractions, f.kept_qa)
    if quality:
        parts += ["<h2>Extraction quality</h2>",
                  "<p>valid: chunks answered with valid JSON; grounded: extracted items the chunk "
                  "supports; kept: valid answers whose Q&amp;A is in the dataset.</p>",
                  _img(pngs, "extraction_quality.png", "extraction quality per source"),
                  _table(["source", "chunks", "valid", "grounded", "kept"],
                         [[k, q["chunks"], q["valid"], q["grounded"], q["kept"]]
                          for k, q in sorted(quality.items(), key=lambda kv: (kv[0] != "all", kv[0]))],
                         numeric={1, 2, 3, 4})]
        bad = [r for r in f.extractions if r.get("status") != "ok"]
        if bad:
            parts += [f"<h3>Extraction problems ({len(bad)})</h3>",
                      _table(["chunk", "status", "reason"],
                             [[r.get("chunk_id"), r.get("status"), str(r.get("error", ""))[:300]]
                              for r in bad[:100]])]
    if f.dataset:
        kinds = sorted({k for c in f.dataset.values() for k in c})
        parts += ["<h2>Dataset mixture</h2>", _img(pngs, "dataset_mixture.png", "dataset mixture"),
                  _table(["split", *kinds, "total"],
                         [[s, *(c.get(k, 0) for k in kinds), sum(c.values())] for s, c in f.dataset.items()],
                         numeric=set(range(1, len(kinds) + 2)))]
    sets, comp = knowledge(f), comparison(f)
    if sets or comp:
        parts += ["<h2>Base vs tuned</h2>", _img(pngs, "base_vs_tuned.png", "base vs tuned")]
        if (f.eval or {}).get("verdict"):
            parts += [f"<p><b>{_t(f.eval['verdict'])}</b></p>"]
    if sets:
        parts += ["<p>Never-trained probes, multiple choice scored by log-likelihood, the same items "
                  "for both models; difference with its 95 % bootstrap interval and McNemar's exact p.</p>",
                  _table(["set", "n", "base", "tuned", "difference", "95 % CI", "p"],
                         [[SET_LABELS.get(k, k), c["n"], c["base"], c["tuned"], c["diff"],
                           f"{c['ci_low']:+.2f} … {c['ci_high']:+.2f}", c["p"]] for k, c in sets.items()],
                         numeric={1, 2, 3, 4, 6})]
    if comp:
        parts += [_table(["measure", "base", "tuned", "delta"],
                         [[k, b, t, t - b] for k, (b, t) in comp.items()], numeric={1, 2, 3})]
    for name, cats in mcq_categories(f.eval).items():
        parts += [f"<h3>{_t(SET_LABELS.get(name, name))}: accuracy per category</h3>",
                  _img(pngs, f"{name}_per_category.png", f"{name} per category"),
                  _table(["category", "questions", "base", "tuned"],
                         [[c, n, b, t] for c, (b, t, n) in cats.items()], numeric={1, 2, 3})]
    preds = (f.eval or {}).get("samples") or (f.eval or {}).get("predictions") or []
    if preds:
        parts += ["<h3>Held-out samples</h3>",
                  _table(["question", "expected", "base", "tuned"],
                         [[str(r.get("question", ""))[:200], str(r.get("gold", ""))[:200],
                           str(r.get("base", ""))[:200], str(r.get("tuned", r.get("prediction", "")))[:200]]
                          for r in preds[:10]])]
    if f.timings:
        parts += ["<h2>Stage timings</h2>", _img(pngs, "stage_timings.png", "stage timings"),
                  _table(["stage", "status", "seconds"],
                         [[s, t.get("status"), t.get("seconds")] for s, t in f.timings.items()],
                         numeric={2})]
    failed = [d for d in f.manifest if d.get("status") == "failed"]
    if f.manifest:
        parts += ["<h2>Documents</h2>",
                  f"<p>{len(f.manifest) - len(failed)} converted, {len(failed)} failed.</p>"]
        if failed:
            parts += [_table(["document", "problem"], [[d.get("source"), d.get("error", "")] for d in failed])]
    if f.metrics:
        parts += ["<h2>Metrics</h2>",
                  _table(["metric", "value"], [[k, v] for k, v in sorted(f.metrics.items())], numeric={1})]
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width'><title>Run report</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")


def write_html(run_dir: Path, f: Facts, with_pictures: bool = True) -> Path:
    pngs = pictures(f) if with_pictures else {}
    if with_pictures:
        with build_dir(run_dir / PLOTS_DIR) as tmp:
            for name, data in pngs.items():
                write_bytes(tmp / name, data)
    path = run_dir / "report.html"
    write_text(path, render(f, pngs))
    return path


def write_report(run_dir: Path, metrics: dict, info: dict, series: dict | None = None,
                 pictures: bool = True) -> Path:
    """Write ``report.md`` and ``report.html`` (with its pictures in ``plots/`` when
    ``pictures``); return the path of ``report.md``."""
    facts = collect(run_dir, metrics, info, series)
    path = run_dir / "report.md"
    write_text(path, scrub(markdown(facts)))
    write_html(run_dir, facts, with_pictures=pictures)
    return path
