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

from components import stats
from components.llm import record
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
    kept_qa: set = field(default_factory=set)  # chunk ids with a Q&A example in the dataset
    eval: dict | None = None
    alerts: list = field(default_factory=list)
    series: dict = field(default_factory=dict)  # label -> [(step, value)]


def collect(run_dir: Path, metrics: dict, info: dict, series: dict | None = None) -> Facts:
    f = Facts(metrics=dict(metrics), info=dict(info))
    timings = _load(run_dir / ".state" / "last_run.json") or {}  # stored with sorted keys
    f.timings = {s: timings[s] for s in sorted(timings, key=lambda s: ORDER.index(s) if s in ORDER else len(ORDER))}
    f.manifest = _load(run_dir / "documents" / "manifest.json") or []
    # The extraction records as the extractor's schema defines them (components/llm/record).
    f.extractions = record.read(run_dir / "extractions.jsonl", strict=False)
    for split in SPLITS:
        p = run_dir / "dataset" / f"{split}.jsonl"
        if p.is_file():
            kinds: Counter = Counter()
            for r in _jsonl(p):
                meta = r.get("meta") or {}
                kinds[meta.get("kind") or "unknown"] += 1
                if meta.get("kind") == "qa":
                    f.kept_qa.add(meta.get("chunk_id"))
            f.dataset[split] = kinds
    f.eval = _load(run_dir / "eval.json")
    f.alerts = _jsonl(run_dir / "alerts.jsonl")
    f.alerts += [{"alert": k[len("alert/"):], "value": v} for k, v in sorted(metrics.items())
                 if k.startswith("alert/")]
    f.series = {k: list(v) for k, v in (series or {}).items() if v}
    return f


def extraction_quality(records: list[dict], kept_qa: set) -> dict[str, dict]:
    """Per source document and overall (``"all"``), over the chunks sent to a model: share
    answered with valid JSON, share of the items the model proposed that the chunk supports
    (grounded, kept in the record), and share of chunks with a grounded Q&A in the dataset."""
    per: dict[str, dict] = {}
    for r in records:
        llm = r.get("llm")
        if not llm:  # rules only: nothing a model was asked
            continue
        for key in (r.get("doc_id") or "?", "all"):
            d = per.setdefault(key, {"chunks": 0, "ok": 0, "items": 0, "grounded": 0, "qa": 0, "kept": 0})
            d["chunks"] += 1
            if r.get("status") != "ok" or not llm.get("json_valid"):
                continue
            d["ok"] += 1
            proposed = llm.get("proposed") or {}
            d["items"] += sum(len(proposed.get(k) or []) for k in ("acronyms", "spec_refs", "entities", "qa"))
            d["grounded"] += sum(len(llm.get(k) or []) for k in ("acronyms", "spec_refs", "entities", "qa"))
            d["qa"] += bool(llm.get("qa_proposed"))
            d["kept"] += r.get("chunk_id") in kept_qa
    return {k: {"chunks": d["chunks"],
                "valid": d["ok"] / d["chunks"] if d["chunks"] else 0.0,
                "grounded": d["grounded"] / d["items"] if d["items"] else 0.0,
                "kept": min(1.0, d["kept"] / d["qa"]) if d["qa"] else 0.0}
            for k, d in per.items()}


SET_LABELS = {"your_documents": "your documents", "unseen_facts": "unseen facts", "general": "general telecom"}


def knowledge(f: Facts) -> dict[str, dict]:
    """Probe set -> its paired comparison (n, base, tuned, diff, ci_low, ci_high, p), from
    ``eval.json``."""
    sets = (f.eval or {}).get("sets") or {}
    order = list(SET_LABELS)
    return {k: sets[k]["comparison"] for k in sorted(sets, key=lambda k: order.index(k) if k in order else len(order))
            if isinstance(sets[k], dict) and "comparison" in sets[k]}


def mcq_categories(ev: dict | None) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Probe or MCQ set -> kind or category -> (base accuracy, tuned accuracy, questions)."""
    out: dict = {}
    for name, s in ((ev or {}).get("sets") or {}).items():
        cats = {c: (float(g["base"]), float(g["tuned"]), int(g["n"])) for c, g in (s.get("per_group") or {}).items()}
        if cats:
            out[name] = cats
    for name, table in ((ev or {}).get("mcq") or {}).items():  # eval.json before the probes
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
    """Base vs tuned losses: from ``eval.json``, an earlier run's comparison, or the metrics."""
    ev = f.eval or {}
    out = {k: (float(v["base"]), float(v["tuned"])) for k, v in (ev.get("losses") or {}).items()}
    comp = ev.get("comparison") or {}
    out.update({k: (float(v["base"]), float(v["tuned"])) for k, v in comp.items()
                if isinstance(v, dict) and "base" in v and "tuned" in v})
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
    verdict = (f.eval or {}).get("verdict")
    if verdict:
        lines.insert(1, f"- **verdict**: {verdict}")
    for name, c in knowledge(f).items():
        lines.append(f"- {SET_LABELS.get(name, name)}: base {c['base']:.2f} → tuned {c['tuned']:.2f}, "
                     f"{stats.describe(c)}")
        over = c.get("over_unseen")
        if over:
            lines.append(f"- taught beyond the unseen control (your documents' gain less the unseen facts' "
                         f"change): {stats.points(over['diff'])} (95 % CI {stats.signed(over['ci_low'])}"
                         f"…{stats.signed(over['ci_high'])})")
    if "finetune/train_loss_final" in m:
        lines.append(f"- final train loss: {m['finetune/train_loss_final']:.4g}")
    if "eval/val_loss_before" in m and "eval/val_loss_after" in m:
        b, a = m["eval/val_loss_before"], m["eval/val_loss_after"]
        lines.append(f"- validation loss: {b:.4g} → {a:.4g} ({a - b:+.3g})")
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
    preds = (f.eval or {}).get("samples") or (f.eval or {}).get("predictions") or []
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
