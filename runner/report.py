"""The run report: what a person reads after a run — what ran, what failed and why, the numbers.

``report.md`` (text) and ``report.html`` (self-contained, with pictures) are drawn from what the
run directory holds; a part a run did not produce is left out. The headline (a few lines) is
also the MLflow run's description.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from components.files import write_text
from components.secrets import scrub
from runner.pipeline import ORDER

SPLITS = ("train", "valid", "test")
# The per-step series the loss picture draws, as MLflow names them.
LOSS_SERIES = {"train": "finetune/train_loss", "validation": "finetune/val_loss"}


def _load(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rows.append(json.loads(line))
                except ValueError:  # a line cut by a crash: the rest still counts
                    continue
    except OSError:
        pass
    return rows


@dataclass
class Facts:
    """What a run directory holds, read once for both reports."""

    metrics: dict
    info: dict
    timings: dict = field(default_factory=dict)
    manifest: list = field(default_factory=list)
    extractions: list = field(default_factory=list)
    dataset: dict = field(default_factory=dict)  # split -> Counter of meta.kind
    kept_qa: Counter = field(default_factory=Counter)  # doc_id -> Q&A examples in the dataset
    eval: dict | None = None
    alerts: list = field(default_factory=list)
    series: dict = field(default_factory=dict)  # label -> [(step, value)]


def collect(run_dir: Path, metrics: dict, info: dict, series: dict | None = None) -> Facts:
    f = Facts(metrics=dict(metrics), info=dict(info))
    timings = _load(run_dir / ".state" / "last_run.json") or {}  # stored with sorted keys
    f.timings = {s: timings[s] for s in sorted(timings, key=lambda s: ORDER.index(s) if s in ORDER else len(ORDER))}
    f.manifest = _load(run_dir / "documents" / "manifest.json") or []
    f.extractions = _jsonl(run_dir / "extractions.jsonl")
    for split in SPLITS:
        p = run_dir / "dataset" / f"{split}.jsonl"
        if p.is_file():
            kinds: Counter = Counter()
            for r in _jsonl(p):
                meta = r.get("meta") or {}
                kinds[meta.get("kind") or "unknown"] += 1
                if meta.get("kind") == "qa":
                    f.kept_qa[meta.get("doc_id")] += 1
            f.dataset[split] = kinds
    f.eval = _load(run_dir / "eval.json")
    f.alerts = _jsonl(run_dir / "alerts.jsonl")
    f.alerts += [{"alert": k[len("alert/"):], "value": v} for k, v in sorted(metrics.items())
                 if k.startswith("alert/")]
    f.series = {k: list(v) for k, v in (series or {}).items() if v}
    return f


def extraction_quality(records: list[dict], kept_qa: Counter) -> dict[str, dict]:
    """Per source document and overall (``"all"``): share of chunks with valid JSON, share of
    extracted items the chunk supports (grounded), share of valid answers whose Q&A made it into
    the dataset (kept)."""
    per: dict[str, dict] = {}
    for r in records:
        for key in (r.get("doc_id") or "?", "all"):
            d = per.setdefault(key, {"chunks": 0, "ok": 0, "items": 0, "grounded": 0, "kept": 0})
            d["chunks"] += 1
            if r.get("status") != "ok":
                continue
            d["ok"] += 1
            ex, g = r.get("extraction") or {}, r.get("grounding") or {}
            d["items"] += len(ex.get("acronyms", [])) + len(ex.get("spec_refs", [])) + bool(ex.get("qa"))
            d["grounded"] += (len(g.get("acronyms", [])) + len(g.get("spec_refs", []))
                              + bool(g.get("qa_grounded")))
    for doc, n in kept_qa.items():
        if doc in per:  # examples of documents this extraction never saw are not its to keep
            per[doc]["kept"] += n
            per["all"]["kept"] += n
    return {k: {"chunks": d["chunks"],
                "valid": d["ok"] / d["chunks"] if d["chunks"] else 0.0,
                "grounded": d["grounded"] / d["items"] if d["items"] else 0.0,
                "kept": min(1.0, d["kept"] / d["ok"]) if d["ok"] else 0.0}
            for k, d in per.items()}


def mcq_categories(ev: dict | None) -> dict[str, dict[str, tuple[float, float, int]]]:
    """MCQ set -> category -> (base accuracy, tuned accuracy, questions), from ``eval.json``."""
    out: dict = {}
    for name, table in ((ev or {}).get("mcq") or {}).items():
        cats = {}
        for cat, c in (table.get("per_category") or {}).items():
            try:
                cats[cat] = (float(c["base"]["accuracy"]), float(c["tuned"]["accuracy"]), int(c.get("n", 0)))
            except (KeyError, TypeError, ValueError):
                continue
        if cats:
            out[name] = cats
    return out


def comparison(f: Facts) -> dict[str, tuple[float, float]]:
    """Base vs tuned pairs: from ``eval.json``'s comparison, or the loss before/after."""
    comp = (f.eval or {}).get("comparison") or {}
    out = {k: (float(v["base"]), float(v["tuned"])) for k, v in comp.items()
           if isinstance(v, dict) and "base" in v and "tuned" in v}
    m = f.metrics
    if not out and "eval/val_loss_before" in m and "eval/val_loss_after" in m:
        out["valid_loss"] = (float(m["eval/val_loss_before"]), float(m["eval/val_loss_after"]))
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def headline(f: Facts) -> list[str]:
    """The few numbers that say how the run went (markdown lines)."""
    m, lines = f.metrics, []
    status = f.info.get("status", "FINISHED")
    lines.append(f"**{status}**" + (f": {f.info['reason']}" if f.info.get("reason") else ""))
    if f.manifest:
        failed = sum(1 for d in f.manifest if d.get("status") == "failed")
        lines.append(f"- documents: {len(f.manifest) - failed} converted, {failed} failed")
    if "process/chunks" in m:
        lines.append(f"- chunks: {int(m['process/chunks'])}")
    if "extract/chunks" in m:
        lines.append(f"- extraction: {int(m['extract/chunks'])} chunks, valid JSON "
                     f"{_pct(m.get('extract/json_valid_rate', 0))}, Q&A grounded "
                     f"{_pct(m.get('extract/qa_grounded_rate', 0))}")
    if f.dataset:
        lines.append("- dataset: " + " / ".join(f"{sum(f.dataset[s].values())} {s}" for s in f.dataset))
    if "finetune/train_loss_final" in m:
        lines.append(f"- final train loss: {m['finetune/train_loss_final']:.4g}")
    if "eval/val_loss_before" in m and "eval/val_loss_after" in m:
        b, a = m["eval/val_loss_before"], m["eval/val_loss_after"]
        lines.append(f"- validation loss: {b:.4g} → {a:.4g} ({a - b:+.3g})")
    for key, label in (("eval/qa_exact_match", "exact match"), ("eval/mcq_accuracy", "MCQ accuracy")):
        if f"{key}_base" in m and f"{key}_tuned" in m:
            lines.append(f"- {label}: base {m[key + '_base']:.3g} → tuned {m[key + '_tuned']:.3g}")
    if f.alerts:
        lines.append(f"- alerts: {len(f.alerts)}")
    return lines


def _cell(x) -> str:
    return str(x).replace("|", "/").replace("\n", " ")


def markdown(f: Facts) -> str:
    lines = ["# Run report", ""]
    lines += [f"- **{k}**: {v}" for k, v in f.info.items()]
    lines += ["", "## Headline", "", *headline(f)]
    if f.timings:
        lines += ["", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
        lines += [f"| {s} | {t['status']} | {t['seconds']} |" for s, t in f.timings.items()]
    failed = [d for d in f.manifest if d.get("status") == "failed"]
    if f.manifest:
        lines += ["", "## Documents", "", f"{len(f.manifest) - len(failed)} converted, {len(failed)} failed."]
        if failed:
            lines += ["", "| document | problem |", "|---|---|"]
            lines += [f"| {d.get('source')} | {_cell(d.get('error', ''))} |" for d in failed]
    bad = [r for r in f.extractions if r.get("status") != "ok"]
    if bad:
        lines += ["", "## Extraction problems", "", "| chunk | status | reason |", "|---|---|---|"]
        lines += [f"| {r.get('chunk_id')} | {r.get('status')} | {_cell(r.get('error', ''))[:200]} |"
                  for r in bad[:50]]
        if len(bad) > 50:
            lines.append(f"\n… and {len(bad) - 50} more (see extractions.jsonl)")
    if f.alerts:
        lines += ["", "## Alerts", ""]
        lines += [f"- {_cell(json.dumps(a, ensure_ascii=False))[:300]}" for a in f.alerts[:50]]
    if f.metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(f.metrics.items())]
    preds = (f.eval or {}).get("predictions") or []
    if preds:
        lines += ["", "## Held-out samples", "", "| question | expected | model |", "|---|---|---|"]
        for r in preds[:8]:
            answer = r.get("tuned", r.get("prediction", ""))
            lines.append("| " + " | ".join(_cell(x)[:160] for x in
                                             (r.get("question", ""), r.get("gold", ""), answer)) + " |")
    return "\n".join(lines) + "\n"


def summary(run_dir: Path, metrics: dict, info: dict) -> str:
    """The headline as markdown (the MLflow run's description)."""
    return scrub("\n".join(headline(collect(run_dir, metrics, info))))


def write_report(run_dir: Path, metrics: dict, info: dict, series: dict | None = None,
                 pictures: bool = True) -> Path:
    """Write ``report.md`` and ``report.html`` (with its pictures in ``plots/`` when
    ``pictures``); return the path of ``report.md``."""
    from runner.report_html import write_html

    facts = collect(run_dir, metrics, info, series)
    path = run_dir / "report.md"
    write_text(path, scrub(markdown(facts)))
    write_html(run_dir, facts, with_pictures=pictures)
    return path
