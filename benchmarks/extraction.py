"""Extraction quality and speed: the embedded model (real llama.cpp, SmolLM2-135M) on the
hand-labelled fixture chunks (tests/data/labelled), with ``extractor=llm`` (the model alone) and
``extractor=hybrid`` (rules + the model), side by side on the same machine.

Per mode, against the hand labels:
- acronym_precision / acronym_recall: the (acronym, expansion) pairs a record passes downstream;
- spec_ref_precision / spec_ref_recall: its normalised specification references;
- qa_grounded_rate: kept answers whose quote occurs in the chunk and supports the answer,
  re-checked here (goal: every kept answer grounded); qa_kept: how many;
- qa_keep_rate: kept (after grounding and verification) over proposed pairs;
- model_qa_grounded_rate: proposed pairs that passed grounding, before verification;
- chunks_per_min: chunks through the stage per minute, server start excluded.
The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT / "tests" / "data" / "labelled"


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from runner.config import resolve_hardware

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    resolve_hardware(cfg)
    return cfg


def score(run: Path) -> dict:
    from components.llm import grounding as G

    labels = {r["chunk_id"]: r for r in map(json.loads, open(DATA / "labels.jsonl"))}
    texts = {c["id"]: c["text"] for c in map(json.loads, open(DATA / "chunks.jsonl"))}
    recs = [json.loads(l) for l in open(run / "extractions.jsonl")]
    t = dict.fromkeys(("acr_hit", "acr_got", "acr_want", "ref_hit", "ref_got", "ref_want", "qa", "qa_ok"), 0)
    for r in recs:
        lab, res = labels[r["chunk_id"]], r["result"]
        got = {(a["acronym"], " ".join(G.tokens(a["expansion"]))) for a in res["acronyms"]}
        want = {(a, " ".join(G.tokens(e))) for a, e in lab["acronyms"].items()}
        t["acr_hit"] += len(got & want)
        t["acr_got"] += len(got)
        t["acr_want"] += len(want)
        refs = {x["ref"] for x in res["spec_refs"]}
        t["ref_hit"] += len(refs & set(lab["spec_refs"]))
        t["ref_got"] += len(refs)
        t["ref_want"] += len(lab["spec_refs"])
        for q in res["qa"]:
            t["qa"] += 1
            t["qa_ok"] += G.contains_quote(q["evidence"], texts[r["chunk_id"]]) and \
                G.unsupported_in_answer(q["answer"], q["evidence"]) is None

    def rate(a, b):
        return round(t[a] / t[b], 4) if t[b] else 0.0
    return {"acronym_precision": rate("acr_hit", "acr_got"), "acronym_recall": rate("acr_hit", "acr_want"),
            "spec_ref_precision": rate("ref_hit", "ref_got"), "spec_ref_recall": rate("ref_hit", "ref_want"),
            "qa_grounded_rate": rate("qa_ok", "qa") if t["qa"] else 1.0, "qa_kept": t["qa"]}


def labelled_run(run: Path) -> Path:
    """A run directory holding the labelled chunks and their documents, as process leaves them."""
    run.mkdir()
    shutil.copy(DATA / "chunks.jsonl", run / "chunks.jsonl")
    shutil.copytree(DATA / "documents", run / "documents")
    return run


def run_mode(mode: str, extra: list[str], tmp: Path) -> dict:
    from components.tracking import NullTracker
    from runner import pipeline
    from runner.config import build
    from runner.stage import Resources
    from runner.stages import extract

    run = labelled_run(tmp / mode)
    cfg = compose([f"extraction.extractor={mode}", f"cache_dir={tmp / 'cache'}", *extra])
    res = Resources()
    t0 = time.perf_counter()
    res.shared("llm", lambda: extract.start_service(build(cfg.service, "service")))  # start outside the timing
    start_s = time.perf_counter() - t0
    m = extract.run(pipeline.context("extract", run, cfg, NullTracker(), res))
    out = score(run)
    out.update({"qa_keep_rate": m["extract/qa_keep_rate"],
                "model_qa_grounded_rate": m["extract/qa_grounded_rate"],
                "json_valid_rate": m["extract/json_valid_rate"],
                "schema_valid_rate": m["extract/schema_valid_rate"],
                "model_acronym_precision": m.get("extract/acronym_precision"),
                "model_acronym_recall": m.get("extract/acronym_recall"),
                "chunks_per_min": m["extract/chunks_per_min"], "server_start_s": round(start_s, 2),
                "requests": int(m.get("extract/usage_requests", 0)),
                "chunks": int(m["extract/chunks"]), "skipped": int(m.get("extract/skipped", 0))})
    print(f"{mode}: {json.dumps(out)}", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("overrides", nargs="*", help="extra config overrides, e.g. service.threads=4")
    args = ap.parse_args()
    extra = [f"extraction.max_tokens={args.max_tokens}", *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        results = {mode: run_mode(mode, extra, Path(tmp)) for mode in ("llm", "hybrid")}
    h, l = results["hybrid"], results["llm"]
    print(json.dumps({
        "hybrid": h, "llm": l,
        "hybrid_vs_llm_acronym_recall": round(h["acronym_recall"] / l["acronym_recall"], 2) if l["acronym_recall"] else None,
        "goals_met": {"acronym_precision>=0.9": h["acronym_precision"] >= 0.9,
                      "acronym_recall>=0.9": h["acronym_recall"] >= 0.9,
                      "spec_ref_recall>=0.95": h["spec_ref_recall"] >= 0.95,
                      "kept_answers_grounded": h["qa_grounded_rate"] == 1.0 and l["qa_grounded_rate"] == 1.0},
    }))


if __name__ == "__main__":
    main()
