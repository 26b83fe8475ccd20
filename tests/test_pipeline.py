"""The stage contract: order, missing inputs, skipping by content hash, metrics.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.tracking import NullTracker
from runner import pipeline
from runner.stage import Resources, StageContext, StageError
from tests.fixtures.records import extraction_record


def chunk(doc: str, i: int) -> dict:
    return {"id": f"{doc}#{i}", "doc_id": doc, "heading": f"5.{i} Procedure {i}",
            "section_path": ["5 Procedures", f"5.{i} Procedure {i}"],
            "text": f"Procedure {i} of {doc}: the network function {doc[:2].upper()}{i} answers."}


def extraction(doc: str, i: int) -> dict:
    """A record as the extract stage writes it."""
    acr = f"A{i}{doc[:2].upper()}"
    return extraction_record(
        f"{doc}#{i}", doc, spec=f"TS 99.{100 + ord(doc[0])}", clause=f"5.{i}",
        section_path=["5 Procedures", f"5.{i} Procedure {i}"],
        llm={"model": "m", "dropped": {"example_copy": 1}},
        result={"acronyms": [{"acronym": acr, "expansion": f"Alpha {i} {doc} expansion",
                                     "origin": "rule"}],
                       "spec_refs": [], "definitions": [], "clause_refs": [], "releases": [],
                       "entities": [], "summary": None,
                       "qa": [{"question": f"What is item {i} of {doc}?", "answer": f"Item {i} of {doc}",
                               "evidence": f"Item {i} of {doc}", "origin": "m"}]})


@pytest.fixture
def ctx(tmp_path, compose, session_cache):
    from runner.config import build

    # The stage cache is this test's own; the base model, converted from its GGUF once for the
    # test run, is shared (the dataset stage reads its tokenizer).
    build(compose().model, "model").local_dir(session_cache)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(session_cache / "models", target_is_directory=True)
    cfg = compose("lora.batch_size=2", f"cache_dir={tmp_path / 'cache'}")
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "extractions.jsonl", "w") as fh, open(run / "chunks.jsonl", "w") as ch:
        for doc in ("alpha", "bravo", "charlie", "delta", "echo"):
            for i in range(4):
                fh.write(json.dumps(extraction(doc, i)) + "\n")
                ch.write(json.dumps(chunk(doc, i)) + "\n")
    return StageContext(run_dir=run, cfg=cfg, tracker=NullTracker())


def test_missing_input_names_the_stage_that_writes_it(ctx):
    with pytest.raises(StageError, match=r"needs dataset.*'dataset' stage.*stages=\[dataset,evaluate\]"):
        pipeline.run(ctx.run_dir, ctx.cfg, ctx.tracker, ["evaluate"])


def test_unknown_stage(ctx):
    with pytest.raises(StageError, match="unknown stage 'train'"):
        pipeline.run(ctx.run_dir, ctx.cfg, ctx.tracker, ["train"])


def test_stage_runs_then_skips_until_input_or_config_change(ctx, monkeypatch):
    m1 = pipeline.run(ctx.run_dir, ctx.cfg, ctx.tracker, ["dataset"])
    assert m1["dataset/documents"] == 5
    assert m1["dataset/facts"] == 60  # 20 Q&A, 20 acronyms, 20 clause titles
    assert m1["dataset/qa"] > 20 and m1["dataset/acronym"] > 20 and m1["dataset/spec_clause"] > 20  # phrasings
    before = (ctx.run_dir / "dataset" / "train.jsonl").read_bytes()

    from runner.stages import dataset as stage
    calls = []
    real = stage.run
    monkeypatch.setattr(stage, "run", lambda c: calls.append(1) or real(c))
    assert pipeline.run(ctx.run_dir, ctx.cfg, ctx.tracker, ["dataset"]) == m1 and calls == []  # unchanged: skipped
    assert json.loads((ctx.run_dir / ".state" / "last_run.json").read_text())["dataset"]["status"] == "skipped"

    ctx.cfg.dataset.seed = 7  # config change: runs again
    pipeline.run(ctx.run_dir, ctx.cfg, ctx.tracker, ["dataset"])
    assert calls == [1]

    with open(ctx.run_dir / "extractions.jsonl", "a") as fh:  # input change: runs again
        fh.write(json.dumps(extraction("foxtrot", 0)) + "\n")
    pipeline.run(ctx.run_dir, ctx.cfg, ctx.tracker, ["dataset"])
    assert calls == [1, 1]

    good = (ctx.run_dir / "dataset" / "train.jsonl").read_bytes()
    (ctx.run_dir / "dataset" / "train.jsonl").write_text("tampered\n")  # damaged output
    pipeline.run(ctx.run_dir, ctx.cfg, ctx.tracker, ["dataset"])
    assert calls == [1, 1]  # restored from the stage cache, not recomputed
    assert (ctx.run_dir / "dataset" / "train.jsonl").read_bytes() == good

    ctx.cfg.stage_cache = False
    (ctx.run_dir / "dataset" / "train.jsonl").write_text("tampered\n")
    pipeline.run(ctx.run_dir, ctx.cfg, ctx.tracker, ["dataset"])  # without the cache: runs again
    assert calls == [1, 1, 1]
    assert (ctx.run_dir / "dataset" / "train.jsonl").read_bytes() == good
    assert before.count(b"\n") == m1["dataset/train"] > 0  # the first output held every train row


def test_split_is_by_document_and_holdout_has_no_train_duplicates(ctx):
    pipeline.run(ctx.run_dir, ctx.cfg, ctx.tracker, ["dataset"])
    docs = {}
    rows = {}
    for s in ("train", "valid", "test"):
        rows[s] = [json.loads(l) for l in open(ctx.run_dir / "dataset" / f"{s}.jsonl")]
        # Document examples are held out by document (facts by wording and by the unseen share).
        docs[s] = {r["meta"]["doc_id"] for r in rows[s] if r["meta"]["kind"] in ("summary", "extraction")}
        assert all(r["messages"][-1]["role"] == "assistant" for r in rows[s])
    assert not (docs["train"] & docs["valid"]) and not (docs["train"] & docs["test"])
    assert not (docs["valid"] & docs["test"])
    assert docs["valid"] and docs["test"]


def test_another_run_with_the_same_inputs_reuses_the_stage_cache(ctx, monkeypatch):
    m1 = pipeline.run(ctx.run_dir, ctx.cfg, ctx.tracker, ["dataset"])
    other = ctx.run_dir.parent / "sweep-job-2"
    other.mkdir()
    for f in ("extractions.jsonl", "chunks.jsonl"):
        (other / f).write_bytes((ctx.run_dir / f).read_bytes())
    ctx2 = StageContext(run_dir=other, cfg=ctx.cfg, tracker=NullTracker())
    from runner.stages import dataset as stage
    monkeypatch.setattr(stage, "run", lambda c: pytest.fail("should come from the stage cache"))
    assert pipeline.run(ctx2.run_dir, ctx2.cfg, ctx2.tracker, ["dataset"]) == m1
    for s in ("train", "valid", "test"):
        assert (other / "dataset" / f"{s}.jsonl").read_bytes() == \
            (ctx.run_dir / "dataset" / f"{s}.jsonl").read_bytes()
    status = json.loads((other / ".state" / "last_run.json").read_text())["dataset"]["status"]
    assert status == "cached"
    ctx2.cfg.stage_cache = False  # off: the stage really runs
    (other / ".state" / "dataset.json").unlink()
    with pytest.raises(pytest.fail.Exception):
        pipeline.run(ctx2.run_dir, ctx2.cfg, ctx2.tracker, ["dataset"])


def test_metrics_json_keeps_earlier_stages(ctx):
    (ctx.run_dir / "metrics.json").write_text(json.dumps({"convert/docs": 5}))
    m = pipeline.run(ctx.run_dir, ctx.cfg, ctx.tracker, ["dataset"])
    saved = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert saved["convert/docs"] == 5 and saved["dataset/documents"] == m["dataset/documents"]
    assert all(isinstance(v, (int, float)) for v in saved.values())


def test_a_failing_stage_leaves_no_completed_state(ctx, monkeypatch):
    pipeline.run(ctx.run_dir, ctx.cfg, ctx.tracker, ["dataset"])
    from runner.stages import dataset as stage

    def boom(c):
        raise RuntimeError("disk full")
    monkeypatch.setattr(stage, "run", boom)
    ctx.cfg.dataset.seed = 99
    with pytest.raises(StageError, match="stage dataset failed: RuntimeError: disk full") as err:
        pipeline.run(ctx.run_dir, ctx.cfg, ctx.tracker, ["dataset"])
    assert err.value.stage == "dataset"
    state = json.loads((ctx.run_dir / ".state" / "dataset.json").read_text())
    assert state["status"] == "running"  # not complete: never skipped, never trusted downstream
    last = json.loads((ctx.run_dir / ".state" / "last_run.json").read_text())
    assert last["dataset"]["status"] == "failed"
    assert (ctx.run_dir / "dataset" / "train.jsonl").exists()  # earlier output is not lost
    monkeypatch.undo()
    pipeline.run(ctx.run_dir, ctx.cfg, ctx.tracker, ["dataset"])
    assert json.loads((ctx.run_dir / ".state" / "dataset.json").read_text())["status"] == "done"


def test_a_stage_with_transient_failures_is_never_done_nor_shared(ctx, monkeypatch):
    from runner.stages import dataset as stage

    real = stage.run
    calls = []
    monkeypatch.setattr(stage, "run", lambda c: calls.append(1) or {**real(c), "dataset/transient_failures": 1})
    pipeline.run(ctx.run_dir, ctx.cfg, ctx.tracker, ["dataset"])
    pipeline.run(ctx.run_dir, ctx.cfg, ctx.tracker, ["dataset"])
    assert calls == [1, 1]  # not up to date: the rerun retries
    assert not list((Path(ctx.cfg.cache_dir) / "stages").glob("dataset/*"))  # never cached
    monkeypatch.setattr(stage, "run", lambda c: calls.append(1) or real(c))
    pipeline.run(ctx.run_dir, ctx.cfg, ctx.tracker, ["dataset"])
    pipeline.run(ctx.run_dir, ctx.cfg, ctx.tracker, ["dataset"])
    assert calls == [1, 1, 1]  # healed: done and skipped
    assert list((Path(ctx.cfg.cache_dir) / "stages").glob("dataset/*"))


def test_inputs_made_under_another_config_are_refused(ctx):
    pipeline.run(ctx.run_dir, ctx.cfg, ctx.tracker, ["dataset"])
    # dataset/ was made with lora.batch_size=2; consuming it under 3 must not pass silently
    ctx.cfg.lora.batch_size = 3
    (ctx.run_dir / "adapters").mkdir()
    with pytest.raises(StageError, match=r"dataset was made by the 'dataset' stage under another "
                                         r"config.*stages=\[dataset,finetune\]"):
        pipeline.run(ctx.run_dir, ctx.cfg, ctx.tracker, ["finetune"])
    ctx.cfg.lora.batch_size = 2
    (ctx.run_dir / "dataset" / "train.jsonl").write_text("edited by hand\n")
    with pytest.raises(StageError, match="dataset was changed after the 'dataset' stage made it"):
        pipeline.run(ctx.run_dir, ctx.cfg, ctx.tracker, ["finetune"])


def test_shared_components_are_built_once_and_closed(tmp_path):
    class Server:
        closed = 0

        def close(self):
            Server.closed += 1

    res = Resources()
    built = []
    a = res.shared("llm", lambda: built.append(1) or Server())
    assert res.shared("llm", lambda: built.append(1) or Server()) is a and built == [1]
    res.release("llm")
    assert Server.closed == 1
    res.shared("other", Server)
    res.close()
    assert Server.closed == 2  # released ones are not closed twice


def test_build_dir_swaps_in_only_a_complete_folder(tmp_path):
    from components.files import build_dir

    out = tmp_path / "dataset"
    with build_dir(out) as tmp:
        (tmp / "train.jsonl").write_text("v1\n")
    assert (out / "train.jsonl").read_text() == "v1\n"
    with pytest.raises(RuntimeError):
        with build_dir(out) as tmp:
            (tmp / "train.jsonl").write_text("half")
            raise RuntimeError("crash mid-write")
    assert (out / "train.jsonl").read_text() == "v1\n"  # the earlier output survives
    assert not (tmp_path / "dataset.partial").exists()


def test_build_dir_recovers_the_previous_folder_from_a_crash_mid_swap(tmp_path, monkeypatch):
    import os

    from components import files

    out = tmp_path / "dataset"
    with files.build_dir(out) as tmp:
        (tmp / "train.jsonl").write_text("v1\n")
    real = os.replace

    def crash_on_second(src, dst):
        if str(src).endswith(".partial"):
            raise KeyboardInterrupt("killed between the two renames")
        real(src, dst)

    monkeypatch.setattr(files.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        with files.build_dir(out) as tmp:
            (tmp / "train.jsonl").write_text("v2\n")
    monkeypatch.setattr(files.os, "replace", real)
    assert not out.exists() and (tmp_path / "dataset.old" / "train.jsonl").read_text() == "v1\n"
    files.recover_dir(out)
    assert (out / "train.jsonl").read_text() == "v1\n" and not (tmp_path / "dataset.old").exists()


def test_a_folder_listing_changes_with_a_file_and_not_with_a_read(tmp_path):
    """What convert's fingerprint and the stored base-model measurements are keyed on."""
    import os

    from components.files import stat_listing

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.md").write_text("x")
    (tmp_path / "a.md").write_text("aa")
    first = stat_listing(tmp_path)
    assert [(p.relative_to(tmp_path).as_posix(), size) for p, size, _ in first] == [("a.md", 2), ("b/x.md", 1)]
    assert (tmp_path / "a.md").read_text() == "aa" and stat_listing(tmp_path) == first
    assert stat_listing(tmp_path / "a.md") == first[:1]
    os.utime(tmp_path / "b" / "x.md", ns=(0, 0))
    assert stat_listing(tmp_path) != first
