"""Differential tests: the Rust binary and the Python twin write byte-identical chunks.jsonl
and report the same duplicate clusters, on hand-written fixtures, generated documents
(hypothesis) and a generated multi-release corpus."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.processing import rust, twin, write_config
from tests.fixtures.synthetic import generate
from tests.test_process import SPEC_DOC, binary, cfg_for, write_docs  # noqa: F401 (fixture)

DETERMINISTIC = ("documents", "documents_failed", "bytes_in", "chunks_total", "chunks_filtered",
                 "exact_duplicates", "near_duplicates", "chunks_written", "duplicate_clusters", "clusters")


def with_clusters(result: dict, cfg) -> dict:
    """The result with its clusters file's lines under ``clusters``."""
    return {**result, "clusters": Path(cfg.clusters_path).read_text(encoding="utf-8").splitlines()}


def both(root: Path, **overrides) -> tuple[dict, dict, bytes, bytes]:
    results, outputs = {}, {}
    for engine in ("rust", "python"):
        cfg = cfg_for(root, engine=engine, **overrides).model_copy(
            update={"output_path": str(root / f"chunks_{engine}.jsonl")})
        path = write_config(cfg, root / f"process_{engine}.yaml")
        results[engine] = with_clusters(rust.run(path, 120) if engine == "rust" else twin.run(cfg), cfg)
        outputs[engine] = Path(cfg.output_path).read_bytes()
    return results["rust"], results["python"], outputs["rust"], outputs["python"]


def assert_same(root: Path, **overrides) -> tuple[dict, bytes]:
    r, p, rout, pout = both(root, **overrides)
    assert rout == pout
    assert {k: r[k] for k in DETERMINISTIC} == {k: p[k] for k in DETERMINISTIC}
    strip = [{k: f[k] for k in ("doc_id", "path", "kind")} for f in r["failures"]]
    assert strip == [{k: f[k] for k in ("doc_id", "path", "kind")} for f in p["failures"]]
    return r, rout


WIDE_DOC = ("# 1 Généralités\r\n\r\nLe terminal (UE) doit appliquer la configuration\u00a0décrite ici.\t"
            "Ce paragraphe contient des caractères combinés: e\u0301 et u\u0308, et du texte 中文 pour l'essai.\n"
            "\n## 1.1 Überblick\n\n" + "Die Funktion prüft jede Nachricht des gNB sorgfältig. " * 40)


@pytest.fixture
def fixture_corpus(tmp_path):
    release18 = SPEC_DOC.replace("V17.1.0", "V18.0.0").replace("delivers PDUs", "passes PDUs")
    write_docs(tmp_path, {
        "38999_r17.md": SPEC_DOC, "38999_r18.md": release18, "38999_r18_copy.md": release18,
        "wide.md": WIDE_DOC, "empty.md": "", "bad.md": b"\xc3\x28 invalid", "skip.meta.json": "{}",
    })
    (tmp_path / "documents" / "tables").mkdir()
    return tmp_path


def test_fixtures_identical(fixture_corpus, binary):
    result, out = assert_same(fixture_corpus)
    assert result["exact_duplicates"] > 0 and result["near_duplicates"] > 0
    assert result["documents_failed"] == 1
    assert "中文" in out.decode()


@pytest.mark.parametrize("overrides", [
    {"chunk": {"max_chars": 120, "overlap_chars": 30, "min_chars": 0, "clause_headings": True, "mark_boilerplate": True}},
    {"chunk": {"max_chars": 300, "overlap_chars": 30, "min_chars": 100, "clause_headings": False,
               "mark_boilerplate": False}},
    {"normalize": {"nfc": False, "strip_page_furniture": False, "strip_toc": False, "strip_toc_block": False,
                   "reflow": False}},
    {"normalize": {"nfc": True, "strip_page_furniture": True, "strip_toc": True, "strip_toc_block": True,
                   "reflow": False}},
    {"dedup": {"exact": False, "near": True, "shingle_size": 1, "num_perm": 16, "bands": 16, "threshold": 0.3, "seed": 99}},
    {"filters": {"min_chars": 0, "min_words": 0, "min_alpha_ratio": 0.0, "max_table_density": 0.2}},
])
def test_fixtures_identical_across_configs(fixture_corpus, binary, overrides):
    assert_same(fixture_corpus, **overrides)


def test_thread_count_does_not_change_output(fixture_corpus, binary):
    outs = []
    for threads in (1, 2, 4):
        cfg = cfg_for(fixture_corpus, threads=threads)
        rust.run(write_config(cfg, fixture_corpus / "p.yaml"), 60)
        outs.append((Path(cfg.output_path).read_bytes(), Path(cfg.clusters_path).read_bytes()))
    assert outs[0][0] and outs[0][1] and outs[0] == outs[1] == outs[2]


words = st.sampled_from(["UE", "gNB", "shall", "the", "timer", "T310", "NG-RAN", "(SDAP).", "été", "中文",
                         "e\u0301", "Release", "17", "3GPP", "|", "#", "....", "x" * 25])
lines = st.one_of(
    st.lists(words, min_size=1, max_size=60).map(" ".join),
    st.tuples(st.integers(1, 7), st.lists(words, min_size=1, max_size=5)).map(lambda t: "#" * t[0] + " " + " ".join(t[1])),
    st.lists(words, min_size=1, max_size=4).map(lambda ws: "| " + " | ".join(ws) + " |"),
    st.sampled_from(["", "", "3GPP TS 38.300 V17.2.0 (2024-01)", "Release 18", "12", "4.2.1SDAP structure7",
                     "Foreword5", "  \t indented\u00a0line  ", "\u200b", "5.1 General ........ 12",
                     # TOC-shaped prose, alone or next to TOC lines, and a join with a TOC's shape
                     "20MHz carriers in band n78", "5GC to gNB over N3", "8K video is carried over", "the N3"]),
)
# The printed (Docling native PDF) shape: plain clause headings, hard-wrapped lines separated by
# blank lines, page furniture mid-paragraph, a table of contents, legal boilerplate.
printed_words = st.sampled_from(["the", "UE", "shall", "deliver", "packets", "to", "of", "and", "entity", "lower",
                                 "layer", "gNB", "timer", "expires.", "value;", "configured,", "NOTE:", "x = 1",
                                 "{", "é", "中文", "3", "(SDAP)", "Scope", "General"])
printed_lines = st.one_of(
    st.lists(printed_words, min_size=1, max_size=14).map(" ".join),
    st.tuples(st.sampled_from(["1", "2", "3", "4", "4.1", "4.2.1", "6.2.3.1", "9", "12", "A.1", "B.2.3", "0",
                               "4.2.1.1.1.1.1"]),
              st.lists(printed_words, min_size=1, max_size=5)).map(lambda t: t[0] + " " + " ".join(t[1]).capitalize()),
    st.sampled_from(["Contents", "Foreword", "Intellectual Property Rights", "Legal Notice", "History", "1 Scope",
                     "2 References", "3 Definitions", "4 General", "4.2.1 FAP structure", "4.2.1 FAP structure 7",
                     "Foreword ........ 5", "6.2.3.1", "A.2", "Annex A (informative): Change history",
                     "Annex B (normative):", "3GPP TS 37.999 version 19.0.0 Release 19",
                     "ETSI TS 137 999 V19.0.0 (2025-10)", "7", "- the first item", "a) the UE", "1> if the UE",
                     "NOTE 1: A note", "Figure 4.2.1-1: FAP view", "Table 5.1-1: Timers", "## 4.3 Timers",
                     "| a | b |", "<!-- image -->", "lower layers.", "the packets to the", "FOREWORD"]),
)
printed_docs = st.lists(printed_lines, max_size=60).map("\n\n".join)
docs = st.lists(st.one_of(st.lists(lines, max_size=40).map("\n".join), printed_docs), min_size=1, max_size=4)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs, st.sampled_from([(200, 40, 50), (90, 0, 0), (1500, 150, 200)]), st.booleans())
def test_generated_documents_identical(tmp_path_factory, binary, texts, budget, crlf):
    root = tmp_path_factory.mktemp("diff")
    write_docs(root, {f"d{i}.md": t.replace("\n", "\r\n") if crlf else t for i, t in enumerate(texts)})
    # Repeat a document with a one-word change to exercise near-duplicate detection.
    write_docs(root, {"z.md": texts[0].replace("UE", "gNB", 1)})
    chunk = {"max_chars": budget[0], "overlap_chars": budget[1], "min_chars": budget[2], "clause_headings": True,
             "mark_boilerplate": True}
    assert_same(root, chunk=chunk,
                filters={"min_chars": 0, "min_words": 1, "min_alpha_ratio": 0.0, "max_table_density": 1.0},
                dedup={"exact": True, "near": True, "shingle_size": 2, "num_perm": 32, "bands": 16,
                       "threshold": 0.5, "seed": 3})


@pytest.mark.slow
def test_generated_release_corpus_identical(tmp_path, binary):
    generate(tmp_path / "documents", 2_500_000, releases=3, clauses_per_spec=250, seed=11)
    result, out = assert_same(tmp_path)
    assert result["documents"] >= 6
    assert result["exact_duplicates"] > 100 and result["near_duplicates"] > 10
    rows = [json.loads(line) for line in out.decode().splitlines()]
    assert all(r["text"] and 0 <= r["complexity"] <= 1 for r in rows)


@settings(max_examples=3, deadline=None)
@given(st.lists(st.lists(words, max_size=40).map(" ".join), min_size=1, max_size=30))
def test_hash_functions_match_rust(binary, texts):
    """Shingle hashes, MinHash signatures and LSH band keys, value for value."""
    import subprocess

    from components.processing import dedup

    if rust.cargo() is None:
        pytest.skip("cargo is not installed; the hash vectors come from `cargo run --example hashes`")
    texts = texts + ["The UE shall start timer T310.", "", "Été 中文 e\u0301 NG-RAN (SDAP)."]
    k, num_perm, bands, seed = 3, 64, 16, 12345
    done = subprocess.run([rust.cargo(), "run", "--quiet", "--release", "-j", "2", "--example", "hashes",
                           "--manifest-path", str(rust.CRATE_DIR / "Cargo.toml"), "--",
                           str(k), str(num_perm), str(bands), str(seed)],
                          input=json.dumps(texts), capture_output=True, text=True, timeout=600, check=True)
    expected = json.loads(done.stdout)
    a, b = dedup.permutations(num_perm, seed)
    for text, want in zip(texts, expected, strict=True):
        sh = dedup.shingles(text, k)
        sig = dedup.signature(sh, a, b)
        assert sh.tolist() == want["shingles"]
        assert sig.tolist() == want["signature"]
        assert dedup.band_keys(sig[None, :], bands)[0].tolist() == want["band_keys"]
