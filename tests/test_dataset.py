"""The dataset stage: kinds and mixture, formats and exports, meta, any corpus size (split by clause
when documents are few), near-duplicates across splits, the card, and MLflow artifacts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from components import dataset as D
from components.tracking import MLflowTracker, NullTracker
from runner import pipeline
from runner.stage import StageError
from tests.fixtures.records import extraction_record
from tests.fixtures.mlflow_store import fresh_store


def record(doc: str, i: int, qa: bool = True, spec: str | None = "TS 99.101") -> dict:
    text = f"Clause 5.{i} of {doc}: the gNB {i} sends the message to the AMF within {i}0 ms."
    res = {"acronyms": [{"acronym": f"X{i}{doc[:1].upper()}", "expansion": f"Xeno {i} {doc} Entity",
                         "origin": "rule"}],
           "spec_refs": [{"ref": "TS 38.331", "origin": "rule"}], "definitions": [],
           "clause_refs": [], "releases": [],
           "entities": [{"name": "gNB", "type": "network function", "origin": "m"}],
           "summary": {"text": f"Clause 5.{i} says when the gNB {i} sends the message.", "origin": "m"},
           "qa": ([{"question": f"Within what time does gNB {i} of {doc} send the message?",
                    "answer": f"Within {i}0 ms.", "evidence": text, "origin": "m"}] if qa else [])}
    if i == 0:
        res["definitions"] = [{"term": f"Term of {doc}", "definition": "a thing defined here.", "origin": "rule"}]
    return extraction_record(f"{doc}#{i}", doc, spec=spec, clause=f"5.{i}",
                             section_path=["5 Procedures", f"5.{i} Sending message {i}"],
                             rules={"doc_title": f"Guide {doc}"},
                             llm={"model": "m", "dropped": {"verify_disagrees": 2}}, result=res), \
        {"id": f"{doc}#{i}", "doc_id": doc, "text": text}


def make_run(tmp: Path, docs: dict[str, int]) -> Path:
    run = tmp / "run"
    run.mkdir()
    with open(run / "extractions.jsonl", "w") as ex, open(run / "chunks.jsonl", "w") as ch:
        for doc, n in docs.items():
            for i in range(n):
                r, c = record(doc, i)
                ex.write(json.dumps(r) + "\n")
                ch.write(json.dumps(c) + "\n")
    return run


def rows(run: Path, split: str, sub: str = "") -> list[dict]:
    return [json.loads(l) for l in open(run / "dataset" / sub / f"{split}.jsonl")]


def test_every_kind_with_meta_in_every_format_and_export(tmp_path, compose):
    run = make_run(tmp_path, {"alpha": 4, "bravo": 4, "charlie": 4, "delta": 4})
    cfg = compose("lora.batch_size=1", "dataset.mixture.extraction=1.0")
    m = pipeline.run(run, cfg, NullTracker(), ["dataset"])
    for kind in D.KINDS:
        assert m[f"dataset/{kind}"] > 0, kind
    assert m["dataset/split_by_document"] == 1
    for split in D.SPLITS:
        chat = rows(run, split)
        assert chat and all(r["messages"][-1]["role"] == "assistant" for r in chat)
        for r in chat:
            assert set(r["meta"]) == {"doc_id", "chunk_id", "spec", "clause", "kind", "source", "fact_id"}
            assert r["meta"]["source"] in ("rule", "m")
        share, alpaca = rows(run, split, "exports/sharegpt"), rows(run, split, "exports/alpaca")
        assert len(share) == len(alpaca) == len(chat)
        assert [c["from"] for c in share[0]["conversations"]] == ["system", "human", "gpt"]
        assert {"instruction", "input", "output", "meta"} <= set(alpaca[0])
    ext = next(r for s in D.SPLITS for r in rows(run, s, "exports/alpaca") if r["meta"]["kind"] == "extraction")
    assert ext["input"].startswith("Clause 5.") and json.loads(ext["output"])["acronyms"]
    spec = [r for r in rows(run, "train") if r["meta"]["kind"] == "spec_clause"]
    assert any(r["messages"][-1]["content"].startswith("TS 99.101, clause 5.") for r in spec)
    # Document examples are held out by document; facts by wording and by the unseen share.
    docs = {s: {r["meta"]["doc_id"] for r in rows(run, s) if r["meta"]["kind"] in D.DOCUMENT_KINDS}
            for s in D.SPLITS}
    assert not (docs["train"] & docs["valid"]) and not (docs["train"] & docs["test"])
    facts = {s: {r["meta"]["fact_id"] for r in rows(run, s) if r["meta"]["fact_id"]} for s in D.SPLITS}
    assert facts["valid"] <= facts["train"] and not (facts["train"] & facts["test"])
    mcq = next(r for r in rows(run, "train") if r["meta"]["kind"] == "mcq")
    assert mcq["messages"][0]["content"].startswith("You are a telecom standards assistant. Answer multiple-choice")
    assert mcq["messages"][-1]["content"].isdigit()
    probes = [json.loads(l) for l in open(run / "dataset" / "probes.jsonl")]
    assert {p["set"] for p in probes} == {"trained", "unseen"} and {p["split"] for p in probes} == {"valid", "test"}


@pytest.mark.parametrize("fmt, keys", [("completions", {"prompt", "completion", "meta"}),
                                       ("text", {"text", "meta"})])
def test_mlx_lm_formats(tmp_path, compose, fmt, keys):
    from mlx_lm.tuner.datasets import CompletionsDataset, TextDataset, create_dataset
    from types import SimpleNamespace

    run = make_run(tmp_path, {"alpha": 3, "bravo": 3, "charlie": 3})
    pipeline.run(run, compose("lora.batch_size=1", f"dataset.format={fmt}"), NullTracker(), ["dataset"])
    train = rows(run, "train")
    assert all(set(r) == keys for r in train)
    ds = create_dataset(train, None, SimpleNamespace(mask_prompt=False))
    assert isinstance(ds, CompletionsDataset if fmt == "completions" else TextDataset)


def test_one_specification_alone_is_split_by_clause(tmp_path, compose, caplog):
    run = make_run(tmp_path, {"only-spec": 10})
    m = pipeline.run(run, compose("lora.batch_size=2"), NullTracker(), ["dataset"])
    assert m["dataset/split_by_document"] == 0
    chunks_in = {s: {r["meta"]["chunk_id"] for r in rows(run, s) if r["meta"]["kind"] in D.DOCUMENT_KINDS}
                 for s in D.SPLITS}
    assert all(len(rows(run, s)) >= 2 for s in D.SPLITS)
    assert not (chunks_in["train"] & chunks_in["valid"]) and not (chunks_in["train"] & chunks_in["test"])
    assert not (chunks_in["valid"] & chunks_in["test"])
    card = (run / "dataset" / "README.md").read_text()
    assert "by clause within the documents" in card
    assert "split by clause" in caplog.text


def test_a_single_chunk_still_makes_a_dataset_to_train_and_validate_on(tmp_path, compose):
    run = make_run(tmp_path, {"tiny": 1})
    m = pipeline.run(run, compose("lora.batch_size=1", "dataset.mixture.extraction=1.0"), NullTracker(), ["dataset"])
    # One fact of each kind: none can be the unseen control, so only the document examples
    # are held out for test.
    assert m["dataset/train"] >= 1 and m["dataset/valid"] >= 1 and m["dataset/facts_unseen"] == 0
    assert "by example" in (run / "dataset" / "README.md").read_text()


def test_no_usable_example_fails_with_a_fix_that_works(tmp_path, compose):
    run = tmp_path / "run"
    run.mkdir()
    r, c = record("x", 1)
    r["result"] = {k: ([] if isinstance(v, list) else None) for k, v in r["result"].items()}
    r["section_path"], r["clause"] = [], ""
    (run / "extractions.jsonl").write_text(json.dumps(r) + "\n")
    (run / "chunks.jsonl").write_text(json.dumps(c) + "\n")
    with pytest.raises(StageError, match="support no example.*Add documents with an Abbreviations"):
        pipeline.run(run, compose(), NullTracker(), ["dataset"])
    # The fix: a document with an Abbreviations clause gives acronym examples.
    r2, c2 = record("y", 0)
    with open(run / "extractions.jsonl", "a") as fh:
        fh.write(json.dumps(r2) + "\n")
    with open(run / "chunks.jsonl", "a") as fh:
        fh.write(json.dumps(c2) + "\n")
    assert pipeline.run(run, compose("lora.batch_size=1"), NullTracker(), ["dataset"])["dataset/train"] > 0


def test_held_out_near_copies_of_training_examples_are_dropped_and_counted():
    cfg = D.DatasetConfig()
    base = {"input": "", "kind": "qa", "source": "m", "doc_id": "a", "chunk_id": "a#1", "spec": None, "clause": "1"}
    train = [{**base, "instruction": "How long does the UE wait before it retries the RRC setup procedure "
                                     "after a rejection from the network?", "output": "For 16 seconds as configured."}]
    near = {**train[0], "doc_id": "b", "instruction": train[0]["instruction"].replace("How long", "How long exactly")}
    other = {**base, "doc_id": "c", "instruction": "Which node selects the UPF?", "output": "The SMF."}
    splits = {"train": train, "valid": [near, other], "test": [dict(train[0], doc_id="d")]}
    dropped = D.drop_duplicates(splits, cfg)
    assert splits["valid"] == [other] and splits["test"] == []
    assert dropped["near_duplicates"] == 1 and dropped["train_copies"] == 1


def test_mixture_weights_scale_kinds_in_train():
    ex = [{"kind": "qa", "instruction": f"q{i}", "input": "", "output": "a"} for i in range(200)]
    ex += [{"kind": "extraction", "instruction": f"e{i}", "input": "", "output": "a"} for i in range(200)]
    mixed = D.mix(ex, {"qa": 2.0, "extraction": 0.5}, seed=0)
    n = {k: sum(e["kind"] == k for e in mixed) for k in ("qa", "extraction")}
    assert n["qa"] == 400 and 70 < n["extraction"] < 130
    assert D.mix(ex, {"qa": 2.0, "extraction": 0.5}, seed=0) == mixed  # seeded
    with pytest.raises(ValueError, match="unknown kind"):
        D.DatasetConfig(mixture={"jokes": 1.0})


def test_the_card_and_a_sample_go_to_mlflow(tmp_path, compose):
    import mlflow
    from mlflow.tracking import MlflowClient

    run = make_run(tmp_path, {"alpha": 3, "bravo": 3, "charlie": 3})
    tracker = MLflowTracker(uri=fresh_store(tmp_path / "mlflow.db"), experiment="t", root=tmp_path)
    with tracker.start({}, {}):
        pipeline.run(run, compose("lora.batch_size=1"), tracker, ["dataset"])
    card = (run / "dataset" / "README.md").read_text()
    for needed in ("## Counts", "By kind", "By source", "By document", "Models used: m",
                   "verify_disagrees: 18", "belongs to its owners", "stays with you"):
        assert needed in card, needed
    client = MlflowClient(tracking_uri=tracker.uri)
    arts = {a.path for a in client.list_artifacts(tracker.run_id, "dataset")}
    assert arts == {"dataset/README.md", "dataset/sample.jsonl"}
    mlflow.set_tracking_uri(None)


def _words(row: dict) -> int:
    """A stand-in tokenizer: one token per word of the rendered row."""
    if "messages" in row:
        return sum(len(m["content"].split()) for m in row["messages"])
    if "prompt" in row:
        return len(row["prompt"].split()) + len(row["completion"].split())
    return len(row["text"].split())


def test_no_row_is_cut_by_the_trainer_split_in_text_dropped_otherwise():
    long_answer = " ".join(f"Sentence {i} says what the gNB does." for i in range(20))  # 120 words
    e = {"instruction": "Summarise clause 5.", "input": "", "output": long_answer, "kind": "summary",
         "source": "m", "doc_id": "d", "chunk_id": "d#1", "spec": None, "clause": "5"}
    short = {**e, "output": "Short."}
    for fmt in ("chat", "completions"):
        splits = {"train": [e, short], "valid": [], "test": []}
        dropped = D.fit_length(splits, fmt, "sys", _words, max_tokens=50)
        assert splits["train"] == [short] and dropped == {"longer_than_max_seq_length": 1}
    splits = {"train": [e, short], "valid": [], "test": []}
    dropped = D.fit_length(splits, "text", "sys", _words, max_tokens=50)
    pieces = [D.render(x, "text", "sys")["text"] for x in splits["train"]]
    assert dropped == {"split_longer_than_max_seq_length": 1} and len(pieces) >= 4
    assert all(len(p.split()) <= 50 for p in pieces)
    assert " ".join(pieces[:-1]).split() == f"Summarise clause 5. {long_answer}".split()  # nothing lost
    assert all(p.rstrip().endswith(".") for p in pieces)  # cut at sentence ends
    one_sentence = {**e, "output": "word " * 80}
    splits = {"train": [one_sentence], "valid": [], "test": []}
    assert D.fit_length(splits, "text", "sys", _words, 50) == {"longer_than_max_seq_length": 1}


def test_records_of_another_shape_fail_naming_the_file_line_and_field(tmp_path, compose):
    run = make_run(tmp_path, {"alpha": 2})
    with open(run / "extractions.jsonl", "a") as fh:  # the shape before the record schema
        fh.write(json.dumps({"chunk_id": "alpha#9", "doc_id": "alpha", "status": "ok",
                             "extraction": {}, "grounding": {}}) + "\n")
    with pytest.raises(StageError, match=r"dataset: extractions\.jsonl line 3: chunk_sha: Field required"):
        pipeline.run(run, compose(), NullTracker(), ["dataset"])
