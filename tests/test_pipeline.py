"""The stage contract: order, missing inputs, skipping by content hash, metrics.json."""
from __future__ import annotations

import json

import pytest

from components.tracking import NullTracker
from runner import pipeline
from runner.stage import StageContext, StageError


def extraction(doc: str, i: int) -> dict:
    return {"chunk_id": f"{doc}#{i}", "doc_id": doc, "status": "ok", "rule_acronyms": [
        {"acronym": f"A{i}{doc[:2].upper()}", "expansion": f"Alpha {i} {doc} expansion"}],
        "extraction": {"acronyms": [], "spec_refs": [],
                       "qa": {"question": f"What is item {i} of {doc}?", "answer": f"Item {i} of {doc}"}},
        "grounding": {"acronyms": [], "spec_refs": [], "qa_support": 1.0, "qa_grounded": True}}


@pytest.fixture
def ctx(tmp_path, compose):
    cfg = compose("lora.batch_size=2")
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "extractions.jsonl", "w") as fh:
        for doc in ("alpha", "bravo", "charlie", "delta", "echo"):
            for i in range(4):
                fh.write(json.dumps(extraction(doc, i)) + "\n")
    return StageContext(run_dir=run, cfg=cfg, tracker=NullTracker())


def test_missing_input_names_the_stage_that_writes_it(ctx):
    with pytest.raises(StageError, match=r"needs chunks.jsonl.*'process' stage"):
        pipeline.run(ctx, ["extract"])


def test_unknown_stage(ctx):
    with pytest.raises(StageError, match="unknown stage 'train'"):
        pipeline.run(ctx, ["train"])


def test_stage_runs_then_skips_until_input_or_config_change(ctx, monkeypatch):
    m1 = pipeline.run(ctx, ["dataset"])
    assert m1["dataset/documents"] == 5
    assert sum(m1[f"dataset/{s}"] for s in ("train", "valid", "test")) == 40
    before = (ctx.run_dir / "dataset" / "train.jsonl").read_bytes()

    from runner.stages import dataset as stage
    calls = []
    real = stage.run
    monkeypatch.setattr(stage, "run", lambda c: calls.append(1) or real(c))
    assert pipeline.run(ctx, ["dataset"]) == m1 and calls == []  # unchanged: skipped
    assert json.loads((ctx.run_dir / ".state" / "last_run.json").read_text())["dataset"]["status"] == "skipped"

    ctx.cfg.dataset.seed = 7  # config change: runs again
    pipeline.run(ctx, ["dataset"])
    assert calls == [1]

    with open(ctx.run_dir / "extractions.jsonl", "a") as fh:  # input change: runs again
        fh.write(json.dumps(extraction("foxtrot", 0)) + "\n")
    pipeline.run(ctx, ["dataset"])
    assert calls == [1, 1]

    (ctx.run_dir / "dataset" / "train.jsonl").write_text("tampered\n")  # damaged output: runs again
    pipeline.run(ctx, ["dataset"])
    assert calls == [1, 1, 1]
    assert (ctx.run_dir / "dataset" / "train.jsonl").read_bytes() != b"tampered\n"
    assert before  # the first output existed


def test_split_is_by_document_and_holdout_has_no_train_duplicates(ctx):
    pipeline.run(ctx, ["dataset"])
    docs = {}
    rows = {}
    for s in ("train", "valid", "test"):
        rows[s] = [json.loads(l) for l in open(ctx.run_dir / "dataset" / f"{s}.jsonl")]
        docs[s] = {r["meta"]["doc_id"] for r in rows[s]}
        assert all(r["messages"][-1]["role"] == "assistant" for r in rows[s])
    assert not (docs["train"] & docs["valid"]) and not (docs["train"] & docs["test"])
    assert not (docs["valid"] & docs["test"])
    assert docs["valid"] and docs["test"]


def test_metrics_json_keeps_earlier_stages(ctx):
    (ctx.run_dir / "metrics.json").write_text(json.dumps({"convert/docs": 5}))
    m = pipeline.run(ctx, ["dataset"])
    saved = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert saved["convert/docs"] == 5 and saved["dataset/documents"] == m["dataset/documents"]
    assert all(isinstance(v, (int, float)) for v in saved.values())


def test_a_failing_stage_leaves_no_completed_state(ctx, monkeypatch):
    pipeline.run(ctx, ["dataset"])
    from runner.stages import dataset as stage

    def boom(c):
        raise RuntimeError("disk full")
    monkeypatch.setattr(stage, "run", boom)
    ctx.cfg.dataset.seed = 99
    with pytest.raises(RuntimeError):
        pipeline.run(ctx, ["dataset"])
    assert not (ctx.run_dir / ".state" / "dataset.json").exists()
    assert (ctx.run_dir / "dataset" / "train.jsonl").exists()  # earlier output is not lost
