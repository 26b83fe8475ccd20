"""``report.md``: what a person reads after a run — what ran, what failed and why, the numbers."""
from __future__ import annotations

import json
from pathlib import Path

from components.files import write_text
from components.secrets import scrub


def _load(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_report(run_dir: Path, metrics: dict, info: dict) -> Path:
    lines = ["# Run report", ""]
    for k, v in info.items():
        lines.append(f"- **{k}**: {v}")
    timings = _load(run_dir / ".state" / "last_run.json") or {}
    if timings:
        lines += ["", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
        lines += [f"| {s} | {t['status']} | {t['seconds']} |" for s, t in timings.items()]
    manifest = _load(run_dir / "documents" / "manifest.json") or []
    failed = [m for m in manifest if m.get("status") == "failed"]
    if manifest:
        lines += ["", "## Documents", "",
                  f"{len(manifest) - len(failed)} converted, {len(failed)} failed."]
        if failed:
            lines += ["", "| document | problem |", "|---|---|"]
            lines += [f"| {m['source']} | {str(m.get('error', '')).replace('|', '/')} |" for m in failed]
    ex = run_dir / "extractions.jsonl"
    if ex.is_file():
        bad = []
        with open(ex, encoding="utf-8") as fh:
            for line in fh:
                r = json.loads(line)
                if r.get("status") != "ok":
                    bad.append(r)
        if bad:
            lines += ["", "## Extraction problems", "", "| chunk | status | reason |", "|---|---|---|"]
            lines += [f"| {r['chunk_id']} | {r['status']} | {str(r.get('error', '')).replace('|', '/')[:200]} |"
                      for r in bad[:50]]
            if len(bad) > 50:
                lines.append(f"\n… and {len(bad) - 50} more (see extractions.jsonl)")
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(metrics.items())]
    ev = _load(run_dir / "eval.json")
    if ev and ev.get("predictions"):
        lines += ["", "## Held-out samples", "", "| question | expected | model |", "|---|---|---|"]
        for r in ev["predictions"][:8]:
            cells = [str(r[k]).replace("|", "/").replace("\n", " ")[:160]
                     for k in ("question", "gold", "prediction")]
            lines.append("| " + " | ".join(cells) + " |")
    path = run_dir / "report.md"
    write_text(path, scrub("\n".join(lines) + "\n"))
    return path
