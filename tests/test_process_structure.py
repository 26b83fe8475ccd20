"""Printed-layout structure (rust/SPEC.md, "Structure"): plain clause headings, reflow, page
furniture, TOC blocks and chunk kinds, on tests/data/printed_spec.md (invented text in the shape
of Docling's native PDF output), in both engines."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from components.processing import rust, twin, write_config
from components.processing.chunking import chunk
from components.processing.config import ChunkConfig, NormalizeConfig
from components.processing.normalize import FURNITURE, normalize
from components.processing.structure import BARE_NUMBER, heading_form, is_heading, joins, toc_key
from tests.test_process import binary, cfg_for  # noqa: F401 (fixture)

DATA = Path(__file__).resolve().parent / "data"
PRINTED = (DATA / "printed_spec.md").read_text(encoding="utf-8")
NORM = NormalizeConfig(nfc=True, strip_page_furniture=True, strip_toc=True, strip_toc_block=True, reflow=True)
CHUNK = ChunkConfig(max_chars=600, overlap_chars=60, min_chars=100, clause_headings=True, mark_boilerplate=True)
HEADER = re.compile(r"(?:ETSI|3GPP) T[SR] [0-9]")


def mid_sentence_rate(text: str) -> float:
    """Share of line breaks between a line ending in a lower-case letter and one starting with one."""
    lines = [line for line in text.split("\n") if line]
    pairs = list(zip(lines, lines[1:]))
    mid = sum(1 for a, b in pairs if "a" <= a[-1] <= "z" and "a" <= b[0] <= "z")
    return mid / max(1, len(pairs))


def chunks_of(text: str, cfg: ChunkConfig = CHUNK) -> list[dict]:
    doc = normalize(text, NORM)
    sections, spans = chunk(doc, cfg)
    return [{"text": doc[s.start:s.end], "path": sections[s.section].path, "kind": sections[s.section].kind}
            for s in spans]


@pytest.mark.parametrize("line, level", [
    ("4.2.1 SDAP structure", 3), ("6.2.2.1 Data PDU without SDAP header", 4), ("3.2 Abbreviations", 2),
    ("Annex A (informative): Change history", 1), ("Annex B (normative):", 1), ("A.1 General", 2),
    ("B.2.3 Title", 3), ("Foreword", 1), ("Modal verbs terminology", 1), ("4 5GS overview", 1),
    ("3 times the value", 0), ("1) The UE shall stop", 0), ("2 The UE shall send the message.", 0),
    ("8 DRBs are configured for the", 0), ("123 Main", 0), ("0 Introduction", 0), ("Annex A gives an example", 0),
    ("4.2.1.1.1.1.1 Too deep", 0), ("5 " + "Word " * 30, 0), ("1> if the UE", 0), ("- 1 Item", 0),
])
def test_heading_forms(line, level):
    assert heading_form(line.strip()) == level


def test_heading_needs_a_next_line_that_does_not_continue_it():
    assert is_heading("1 Scope", "The present document") == 1
    assert is_heading("2 DRBs for each session", "and the network") == 0


def test_toc_keys_drop_page_numbers_only():
    assert toc_key("4.2.1 SDAP structure ........ 7") == "4.2.1 SDAP structure"
    assert toc_key("Foreword 5") == "Foreword"
    assert toc_key("4.3 Timer T310") == "4.3 Timer T310"


@pytest.mark.parametrize("a, b, joined", [
    ("the UE shall deliver the packets to", "the lower layers.", True),
    ("transmitted to the", "UE in the cell.", True),
    ("configured by the network,", "UE specific values apply.", True),
    ("The UE shall stop.", "then it starts.", False),
    ("SDAP", "Service Data Adaptation Protocol", False),
    ("the list is", "a) the first item", False),
    ("the following for the", "NOTE: A note.", False),
    ("as shown in the", "Figure 6.2.2.1-1: Data PDU", False),
    ("x = y + z and the", "value", False),
    ("then the", "5.1 General", False),
    ("| a | b |", "continued", False),
])
def test_join_rule(a, b, joined):
    assert joins(a, b, "") is joined


def test_printed_document_structure():
    raw_rate = mid_sentence_rate(normalize(PRINTED, NORM.model_copy(update={"reflow": False})))
    doc = normalize(PRINTED, NORM)
    rows = chunks_of(PRINTED)
    body = [r for r in rows if r["kind"] == "body"]
    # Section paths: every body chunk has one.
    assert body and all(r["path"] for r in body)
    assert any(r["path"][:1] == ("4 General",) and r["path"][-1:] == ("4.2.1 FAP structure",) for r in rows)
    assert any(r["path"] == ("Annex A (informative): Change history", "A.1 Changes in the present release")
               for r in rows)
    # No page furniture, no TOC debris, no TOC-only chunks.
    lines = doc.split("\n")
    assert not [x for x in lines if FURNITURE.fullmatch(x) or HEADER.match(x)]
    assert "Contents" not in lines and "6.2.3.1" not in lines and "....." not in doc
    assert not [r for r in rows if all(BARE_NUMBER.fullmatch(x) or toc_key(x) != x for x in r["text"].split("\n") if x)]
    # Reflow: hard wraps joined, also across a page break; blocks kept apart.
    assert raw_rate > 0.15 and mid_sentence_rate(doc) < 0.03
    assert "When the terminal is configured with 2 DRBs for each session and the network changes" in doc
    assert "\n1) The UE shall stop the timer;\n" in doc.replace("\n\n", "\n")
    assert "- the first entity that is listed here continues on the next printed line;" in doc
    # Headings are not invented from list items or wrapped lines.
    titles = {t for r in rows for t in r["path"]}
    assert not [t for t in titles if t.startswith(("1)", "2)", "2 DRBs"))]
    # Front matter and boilerplate are marked; the legal sections never mix with the body.
    kind_of = {r["text"].split("\n")[0]: r["kind"] for r in rows}
    for title in ("Important notice", "Intellectual Property Rights", "Legal Notice", "Modal verbs terminology",
                  "Foreword", "History"):
        assert kind_of.get(title) == "boilerplate", title
    assert rows[0]["kind"] == "front_matter" and "Sophia Antipolis" in "".join(
        r["text"] for r in rows if r["kind"] != "body")
    assert not [r for r in body if "Sophia Antipolis" in r["text"] or "Essential patents" in r["text"]]
    assert kind_of.get("1 Scope") == "body"


def test_switches_turn_structure_off():
    off = NORM.model_copy(update={"strip_toc_block": False, "reflow": False})
    doc = normalize(PRINTED, off)
    assert "Contents" in doc.split("\n") and mid_sentence_rate(doc) > 0.15
    sections, spans = chunk(doc, CHUNK.model_copy(update={"clause_headings": False, "mark_boilerplate": False}))
    assert all(not sections[s.section].path and sections[s.section].kind == "body" for s in spans)


def test_markdown_headings_unchanged():
    text = "## Foreword\n\nProduced by a group.\n\n# 1 Scope\n\nThe scope of it.\n\n## 4.2.1 FAP structure\n\nThe entity."
    rows = chunks_of(text, CHUNK.model_copy(update={"min_chars": 0}))
    assert [r["path"] for r in rows] == [("Foreword",), ("1 Scope",), ("1 Scope", "4.2.1 FAP structure")]
    assert [r["kind"] for r in rows] == ["boilerplate", "body", "body"]


CHANGE_HISTORY = ("# 1 Scope\n\nThe scope of it, written at some length for the chunker.\n\n"
                  "# Annex B (informative): Change history\n\n| Date | CR | Subject |\n|---|---|---|\n"
                  "| 2026-03 | 0042 | Correction of the timer table |\n\n"
                  "# Annex C (normative): Timers\n\nThe timers of the example protocol, described in words.")


def test_a_change_history_annex_is_boilerplate_not_body():
    rows = chunks_of(CHANGE_HISTORY, CHUNK.model_copy(update={"min_chars": 0}))
    kinds = {r["path"][-1]: r["kind"] for r in rows}
    assert kinds == {"1 Scope": "body", "Annex B (informative): Change history": "boilerplate",
                     "Annex C (normative): Timers": "body"}


def test_engines_agree_on_printed_document(tmp_path, binary):
    docs = tmp_path / "documents"
    docs.mkdir()
    shutil.copy(DATA / "printed_spec.md", docs / "printed.md")
    (docs / "wrapped.md").write_text(PRINTED.replace("FAP", "FBP").replace("\n\n", "\n"), encoding="utf-8")
    (docs / "history.md").write_text(CHANGE_HISTORY, encoding="utf-8")
    outs = []
    for engine in ("rust", "python"):
        cfg = cfg_for(tmp_path, engine=engine).model_copy(update={"output_path": str(tmp_path / f"{engine}.jsonl")})
        if engine == "rust":
            rust.run(write_config(cfg, tmp_path / "p.yaml"), 60)
        else:
            twin.run(cfg)
        outs.append((tmp_path / f"{engine}.jsonl").read_bytes())
    assert outs[0] == outs[1]
    rows = [json.loads(line) for line in outs[0].decode().splitlines()]
    assert {r["kind"] for r in rows} == {"body", "front_matter", "boilerplate"}
    assert list(rows[0])[:7] == ["id", "doc_id", "index", "section_path", "heading", "kind", "start"]
