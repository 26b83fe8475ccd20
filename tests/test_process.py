"""The process stage and the Python twin: config schema, normalization and chunking
properties, errors from the Rust binary, bad documents, the stage with a real context."""
from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from conftest import REPO
from components.processing import ProcessingError, process_config, rust, twin, write_config
from components.processing.chunking import chunk
from components.processing.config import ChunkConfig, NormalizeConfig
from components.processing.normalize import normalize
from components.processing.signals import signals
from components.tracking import NullTracker
from runner import pipeline
from runner.stage import StageContext, StageError

GROUP = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "process" / "default.yaml"))
DEFAULTS = {k: v for k, v in GROUP.items() if k != "_target_"}  # the engines' config
NORM = NormalizeConfig(nfc=True, strip_page_furniture=True, strip_toc=True, strip_toc_block=True, reflow=True)

# Invented 3GPP-style text (no specification text).
SPEC_DOC = """3GPP TS 38.999 V17.1.0 (2024-03)

Technical Specification

Contents

Foreword5
1Scope6
4.2.1Frobnicator structure7
4.2.2Frobnicator functions8

# 1 Scope

The present document specifies the frobnicator protocol (FBP) between the UE and the gNB.

# 4 Frobnicator

## 4.2 Overview

### 4.2.1 Frobnicator structure

The FBP entity receives SDUs from upper layers and delivers PDUs to the RLC entity. Each
PDU carries a header with a sequence number.
3GPP TS 38.999 V17.1.0 (2024-03)
12
Release 17
The FBP entity shall discard a PDU whose header is invalid.

| Field | Length | Meaning |
|---|---|---|
| SN | 12 bits | Sequence number |
| R | 1 bit | Reserved |

### 4.2.2 Frobnicator functions

The FBP supports header compression, reordering and duplicate detection for each DRB.
"""


def cfg_for(tmp_path: Path, **overrides):
    group = json.loads(json.dumps(DEFAULTS))
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if name:
            group[section][name] = value
        else:
            group[section] = value
    return process_config(group, input_dir=tmp_path / "documents", output_path=tmp_path / "chunks.jsonl")


@pytest.fixture(scope="session")
def binary():
    """The release binary, built through the same code path the stage uses."""
    if rust.cargo() is None and not rust.is_up_to_date():
        pytest.skip("cargo is not installed and no up-to-date binary exists; install Rust to test the Rust engine")
    return rust.ensure_binary()


# --- config -------------------------------------------------------------------------------

def test_defaults_validate_and_round_trip(tmp_path):
    cfg = cfg_for(tmp_path)
    path = write_config(cfg, tmp_path / "process.yaml")
    assert yaml.safe_load(path.read_text())["chunk"]["max_chars"] == DEFAULTS["chunk"]["max_chars"]
    assert Path(cfg.input_dir).is_absolute()


def test_composed_hydra_config_validates(tmp_path, compose):
    from runner.config import build

    validated = build(compose().process, "process")
    assert validated.engine in ("auto", "rust", "python")


@pytest.mark.parametrize("group, message", [
    ({"colour": "blue"}, "colour"),
    ({"chunk": {"max_chars": 100, "overlap_chars": 10, "min_chars": 10, "clause_headings": True,
                "mark_boilerplate": True, "extra": 1}}, "extra"),
    ({"chunk": {"max_chars": 100, "overlap_chars": 100, "min_chars": 10, "clause_headings": True,
                "mark_boilerplate": True}}, "overlap_chars"),
    ({"dedup": {**DEFAULTS["dedup"], "bands": 7}}, "multiple"),
    ({"dedup": {**DEFAULTS["dedup"], "threshold": 1.5}}, "threshold"),
    ({"engine": "java"}, "engine"),
])
def test_python_side_rejects_bad_config(tmp_path, group, message):
    with pytest.raises(ProcessingError, match=message) as err:
        process_config({**DEFAULTS, **group}, tmp_path, tmp_path / "c.jsonl")
    assert err.value.kind == "config"


def test_rust_side_rejects_unknown_key_with_typed_error(tmp_path, binary):
    (tmp_path / "documents").mkdir()
    raw = cfg_for(tmp_path).model_dump()
    raw["dedup"]["bucket_size"] = 3
    path = tmp_path / "process.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ProcessingError) as err:
        rust.run_binary(binary, path, 60)
    assert err.value.kind == "config"
    assert "bucket_size" in err.value.message
    assert err.value.path == str(path)


def test_binary_input_error_is_typed(tmp_path, binary):
    cfg = cfg_for(tmp_path)  # documents/ does not exist
    path = write_config(cfg, tmp_path / "process.yaml")
    with pytest.raises(ProcessingError) as err:
        rust.run_binary(binary, path, 60)
    assert err.value.kind == "input"
    assert err.value.path == cfg.input_dir


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fake-binary"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_crash_without_json_and_timeout_are_typed(tmp_path):
    crash = _script(tmp_path, "echo 'thread main panicked' >&2; exit 101")
    with pytest.raises(ProcessingError, match="status 101.*panicked") as err:
        rust.run_binary(crash, tmp_path / "p.yaml", 10)
    assert err.value.kind == "crash"
    slow = _script(tmp_path, "sleep 5")
    with pytest.raises(ProcessingError) as err:
        rust.run_binary(slow, tmp_path / "p.yaml", 0.5)
    assert err.value.kind == "timeout"


# --- normalization and chunking properties ----------------------------------------------

def test_telecom_prose_that_looks_like_a_toc_entry_is_kept():
    # A line opening with a generation's name and ending in an interface name is prose, and so
    # is a TOC-shaped line alone among prose; TOC lines two or more in a row go.
    text = ("4General7\n3GPP TS 38.999 V17.0.0 (2023-03)\n5General8\n\nThe SMF sends the tunnel info\n"
            "5GC to gNB over N3\nand 3GPP access over N2\n\n20MHz carriers are used in band n78\n\nEnd.")
    out = normalize(text, NORM)
    assert out == ("The SMF sends the tunnel info\n5GC to gNB over N3 and 3GPP access over N2\n\n"
                   "20MHz carriers are used in band n78\n\nEnd.")
    # Prose that, once joined, reads as a TOC entry stays in two lines rather than being lost
    # when the document is normalized again.
    once = normalize("8K video is carried over\n\nthe N3\n\nNext.", NORM)
    assert once == "8K video is carried over\nthe N3\n\nNext." and normalize(once, NORM) == once


def test_normalize_strips_furniture_toc_and_whitespace():
    out = normalize(SPEC_DOC.replace("\n", "\r\n").replace("The FBP", "The\tFBP\u00a0"), NORM)
    assert "3GPP TS 38.999" not in out and "Release 17" not in out and "\n12\n" not in out
    assert "4.2.1Frobnicator" not in out and "Foreword5" not in out
    assert "The FBP entity shall discard" in out and "| SN | 12 bits | Sequence number |" in out
    assert "\r" not in out and "\t" not in out and "  " not in out


texts = st.text(alphabet=st.sampled_from(list("ab Z9.|#-\t\r\n\u00a0\u200be\u0301é中")), max_size=400)


@settings(max_examples=200, deadline=None)
@given(texts)
@example("9Z\ra9")  # two lines that, joined, read as a TOC entry ("4.2Frobnicator5")
@example("Table of\ncontents")
def test_normalize_is_idempotent_and_clean(raw):
    out = normalize(raw, NORM)
    assert normalize(out, NORM) == out
    assert not out.startswith("\n") and not out.endswith("\n") and "\n\n\n" not in out
    for line in out.split("\n"):
        assert line == line.strip(" ") and "  " not in line
    assert not set(out) & set("\t\r\u00a0\u200b")


@st.composite
def documents(draw):
    word = st.sampled_from(["UE", "gNB", "the", "shall", "timer", "T310", "NG-RAN", "été", "(SDAP)", "x" * 30])
    blocks = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["heading", "para", "table", "list"]))
        if kind == "heading":
            blocks.append("#" * draw(st.integers(1, 4)) + " " + " ".join(draw(st.lists(word, min_size=1, max_size=4))))
        elif kind == "table":
            rows = draw(st.integers(1, 30))
            blocks.append("\n".join(f"| {draw(word)} | {i} |" for i in range(rows)))
        else:
            n = draw(st.integers(1, 300))
            sep = "\n" if kind == "list" else " "
            blocks.append(sep.join(draw(word) for _ in range(n)))
    return "\n\n".join(blocks)


budgets = st.tuples(st.integers(20, 600), st.integers(0, 100), st.integers(0, 300)).filter(
    lambda b: b[1] < b[0] and b[2] <= b[0]).map(lambda b: ChunkConfig(max_chars=b[0], overlap_chars=b[1], min_chars=b[2],
                                                 clause_headings=True, mark_boilerplate=True))


@settings(max_examples=200, deadline=None)
@given(documents(), budgets)
def test_chunking_invariants(raw, budget):
    doc = normalize(raw, NORM)
    sections, spans = chunk(doc, budget)
    covered = [False] * len(doc)
    for prev, sp in zip([None] + spans[:-1], spans):
        text = doc[sp.start:sp.end]
        assert text and text == text.strip(" \n")
        if prev:
            assert sp.start > prev.start and sp.end > prev.end
        for i in range(sp.start, sp.end):
            covered[i] = True
        if len(text) > budget.max_chars:  # only a whole table or a single heading line
            assert "\n\n" not in text and (text.startswith("|") or ("\n" not in text and (
                text.startswith("#") or len(text) <= 120)))
        section = sections[sp.section]
        assert (section.path[-1] if section.path else "") == section.heading
    # Whatever no chunk holds is a separator.
    assert all(c in " \n" for c, cov in zip(doc, covered) if not cov)


def test_signals_bounds_and_acronyms():
    s = signals("The UE and the gNB use NG-RAN.\n| a | b |", 100)
    assert s["acronym_density"] > 0 and 0 < s["table_density"] < 1 and 0 <= s["complexity"] <= 1


# --- the Python engine and the stage --------------------------------------------------------

def write_docs(root: Path, docs: dict[str, bytes | str]) -> Path:
    d = root / "documents"
    d.mkdir(parents=True, exist_ok=True)
    for name, body in docs.items():
        (d / name).write_bytes(body if isinstance(body, bytes) else body.encode())
    return d


@pytest.mark.parametrize("engine", ["python", "rust"])
def test_invalid_utf8_document_is_reported_not_fatal(tmp_path, engine, request):
    if engine == "rust":
        request.getfixturevalue("binary")
    write_docs(tmp_path, {"good.md": SPEC_DOC, "bad.md": b"# 1 Bad\n\xff\xfe broken", "bad.meta.json": "{}"})
    cfg = cfg_for(tmp_path, engine=engine)
    path = write_config(cfg, tmp_path / "process.yaml")
    result = rust.run(path, 60) if engine == "rust" else twin.run(cfg)
    assert result["documents"] == 1 and result["documents_failed"] == 1
    failure = result["failures"][0]
    assert failure["doc_id"] == "bad" and failure["kind"] == "invalid_utf8"
    assert failure["path"].endswith("bad.md")
    rows = [json.loads(line) for line in (tmp_path / "chunks.jsonl").read_text().splitlines()]
    assert rows and {r["doc_id"] for r in rows} == {"good"}


def make_ctx(tmp_path: Path, **process) -> StageContext:
    group = {**GROUP, **process}
    return pipeline.context("process", tmp_path, OmegaConf.create({"process": group}), NullTracker())


@pytest.mark.parametrize("engine", ["python", "rust"])
def test_stage_writes_chunks_result_and_metrics(tmp_path, engine, request):
    from runner.stages import process as stage

    if engine == "rust":
        request.getfixturevalue("binary")
    release18 = SPEC_DOC.replace("V17.1.0", "V18.0.0").replace("Release 17", "Release 18").replace(
        "delivers PDUs", "passes PDUs")
    write_docs(tmp_path, {"38999_r17.md": SPEC_DOC, "38999_r18.md": release18})
    metrics = stage.run(make_ctx(tmp_path, engine=engine))

    assert stage.INPUTS == ["documents"] and stage.OUTPUTS == ["chunks.jsonl", "chunks.clusters.jsonl"] and stage.CONFIG == ["process"]
    rows = [json.loads(line) for line in (tmp_path / "chunks.jsonl").read_text().splitlines()]
    assert rows and all({"id", "doc_id", "heading", "section_path", "text", "complexity", "start", "end"} <= r.keys()
                        for r in rows)
    assert all(r["doc_id"] == "38999_r17" for r in rows), "release 18 is all duplicates of release 17"
    assert metrics["process/exact_duplicates"] + metrics["process/near_duplicates"] == metrics["process/chunks_total"] - metrics["process/chunks_filtered"] - metrics["process/chunks"]
    assert metrics["process/near_duplicates"] >= 1
    assert metrics[f"process/{engine}_seconds"] > 0 and metrics["process/mb_per_s"] > 0
    for phase in ("read", "normalize", "chunk", "dedup", "write"):
        assert f"process/{phase}_seconds" in metrics
    result = json.loads((tmp_path / "process_result.json").read_text())
    assert result["engine"] == engine and result["chunks_written"] == len(rows)
    clusters = [json.loads(line) for line in (tmp_path / "chunks.clusters.jsonl").read_text().splitlines()]
    assert len(clusters) == result["duplicate_clusters"] == metrics["process/duplicate_clusters"] >= 1
    removed = sum(len(c["duplicates"]) for c in clusters)
    assert removed == metrics["process/exact_duplicates"] + metrics["process/near_duplicates"]
    assert all(c["kept"] in {r["id"] for r in rows} and c["kind"] in ("exact", "near") for c in clusters)
    written = yaml.safe_load((tmp_path / "process.yaml").read_text())
    assert written["input_dir"] == str((tmp_path / "documents").resolve())
    headings = {r["heading"] for r in rows}
    assert "4.2.1 Frobnicator structure" in headings
    table_chunk = next(r for r in rows if "| SN | 12 bits" in r["text"])
    assert "| R | 1 bit | Reserved |" in table_chunk["text"]


def test_stage_bad_config_is_a_stage_error_naming_the_key(tmp_path):
    from runner.stages import process as stage

    write_docs(tmp_path, {"a.md": SPEC_DOC})
    with pytest.raises(StageError, match="shingles") as err:
        stage.run(make_ctx(tmp_path, dedup={**DEFAULTS["dedup"], "shingles": 4}))
    assert isinstance(err.value.__cause__, ProcessingError) and err.value.__cause__.kind == "config"


def test_stage_without_documents_says_what_to_run(tmp_path):
    from runner.stages import process as stage

    with pytest.raises(StageError, match="convert"):
        stage.run(make_ctx(tmp_path))


def test_auto_engine_prefers_rust_when_cargo_exists(monkeypatch):
    from components.processing import resolve_engine

    monkeypatch.setattr(rust, "cargo", lambda: "/usr/bin/cargo")
    assert resolve_engine("auto") == "rust"
    monkeypatch.setattr(rust, "cargo", lambda: None)
    monkeypatch.setattr(rust, "is_up_to_date", lambda crate_dir=rust.CRATE_DIR: False)
    assert resolve_engine("auto") == "python"
    assert resolve_engine("python") == "python"


@pytest.mark.parametrize("engine", ["python", "rust"])
def test_both_engines_report_their_phases_as_they_go(tmp_path, engine, request):
    from tests.fixtures.synthetic import generate

    binary = request.getfixturevalue("binary") if engine == "rust" else None
    generate(tmp_path / "documents", 3_000_000)
    cfg = cfg_for(tmp_path, engine=engine)
    seen: list[tuple[str, int, int]] = []
    if engine == "rust":
        result = rust.run_binary(binary, write_config(cfg, tmp_path / "process.yaml"), 120,
                                 on_progress=lambda *p: seen.append(p), every_s=0.005)
    else:
        result = twin.run(cfg, lambda *p: seen.append(p))
    phases = list(dict.fromkeys(p for p, _, _ in seen))
    assert phases == ["documents", "dedup", "write"]
    docs = [(d, t) for p, d, t in seen if p == "documents"]
    assert {t for _, t in docs} == {result["documents"]}
    assert [d for d, _ in docs] == sorted(d for d, _ in docs) and docs[-1][0] == result["documents"]
    assert {t for p, _, t in seen if p == "write"} == {result["chunks_written"]}


def test_the_stage_shows_each_phase_in_plain_lines(tmp_path, binary, caplog):
    from runner.stages import process as stage

    write_docs(tmp_path, {"38999_r17.md": SPEC_DOC})
    with caplog.at_level("INFO"):
        stage.run(make_ctx(tmp_path, engine="rust"))
    text = caplog.text
    assert "process: documents (1 documents)" in text and "process: dedup" in text
    assert text.index("process: documents") < text.index("process: dedup") < text.index("process: write (")
