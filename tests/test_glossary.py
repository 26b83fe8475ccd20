"""Glossary rows by rule, measured against the fixtures' ground truth after real Docling."""
from __future__ import annotations

from pathlib import Path

import pytest

from components.documents.glossary import glossary_rows, initials_form, is_acronym, is_furniture
from tests.fixtures.etsi_layout import score_glossary

DATA = Path(__file__).parent / "data"


def _by_format(etsi_converted, fmt):
    docs = [(d, r) for d, r in etsi_converted if d.truth["source_format"] == fmt]
    assert docs and all(r.status == "success" for _, r in docs)
    return docs


@pytest.mark.parametrize("fmt", ["pdf", "docx", "md", "html"])
def test_precision_and_recall_against_truth(etsi_converted, fmt):
    for doc, res in _by_format(etsi_converted, fmt):
        rows = glossary_rows(res.markdown, doc.path.stem)
        score = score_glossary(rows, doc.truth)
        assert score["precision"] >= 0.9 and score["recall"] >= 0.9, (doc.path.name, score)
        sources = {r["source"] for r in rows}
        assert {"abbreviations", "definitions"} <= sources, doc.path.name


def test_pdf_rows_name_their_clause_and_carry_no_furniture(etsi_converted):
    doc, res = next((d, r) for d, r in _by_format(etsi_converted, "pdf")
                    if d.path.name.startswith("ts_138322"))
    rows = glossary_rows(res.markdown, "rlc")
    abbr = {r["acronym"]: r for r in rows if r["source"] == "abbreviations"}
    assert abbr["3GPP"]["expansion"] == "3rd Generation Partnership Project"  # before the page break
    assert abbr["5GC"]["expansion"] == "5G Core Network"  # after it
    assert abbr["ng-eNB"]["expansion"] == "next generation eNB"
    assert {r["clause"] for r in abbr.values()} == {"3.2"}
    defs = {r["term"]: r for r in rows if r["source"] == "definitions"}
    assert defs["AMD PDU"]["clause"] == "3.1"
    assert defs["AMD PDU"]["definition"].endswith("the receiver uses to place it in order.")  # wrapped
    assert "NOTE" not in defs
    # First uses that the Abbreviations clause already lists are not repeated.
    assert not {r["acronym"] for r in rows if r["source"] == "inline"} & set(abbr)
    for r in rows:
        text = " ".join(str(v) for v in r.values())
        assert "ETSI TS" not in text and "Release 19" not in text
    assert set(rows[0]) == {"doc_id", "source", "clause", "acronym", "expansion"} or \
        set(rows[0]) == {"doc_id", "source", "clause", "term", "definition"}


def test_inline_first_uses_outside_the_list(etsi_converted):
    doc, res = next((d, r) for d, r in _by_format(etsi_converted, "pdf")
                    if d.path.name.startswith("ts_123501"))
    inline = {r["acronym"]: r for r in glossary_rows(res.markdown, "core") if r["source"] == "inline"}
    # 23.501 lists neither: they are spelled out in its references, a hard-wrapped clause.
    assert inline["RRC"]["expansion"] == "Radio Resource Control" and inline["RRC"]["clause"] == "2"
    assert inline["MAC"]["expansion"] == "Medium Access Control"


def test_an_inline_use_never_overrides_or_pluralises_a_listed_acronym():
    md = ("## 3.2 Abbreviations\n\nSN\tSequence Number\n\n## 5 Procedures\n\nThe receiver checks the "
          "sequence numbers (SN) of all packet data units (PDU) it holds.\n")
    rows = {r["acronym"]: r for r in glossary_rows(md, "d")}
    assert rows["SN"] == {"doc_id": "d", "source": "abbreviations", "clause": "3.2", "acronym": "SN",
                          "expansion": "Sequence Number"}
    assert rows["PDU"]["expansion"] == "packet data unit" and rows["PDU"]["source"] == "inline"
    assert sum(r["acronym"] == "SN" for r in glossary_rows(md, "d")) == 1


def test_saved_docling_output_of_the_pdf_gives_the_same_rows(etsi_converted):
    """tests/data/etsi_pdf_docling.md is what Docling made of ts_138322v190200p.pdf."""
    doc, res = next((d, r) for d, r in _by_format(etsi_converted, "pdf")
                    if d.path.name.startswith("ts_138322"))
    assert (DATA / "etsi_pdf_docling.md").read_text(encoding="utf-8") == res.markdown


ALTERNATING = """3.2 Abbreviations

For the purposes of the present document, the following abbreviations apply.

AM

Acknowledged Mode

ETSI TS 138 322 V19.2.0 (2026-04)

7

3GPP TS 38.322 version 19.2.0 Release 19

ETSI

ARQ

Automatic Repeat Request

4 General

The Radio Link Control (RLC) layer is configured by upper layers (RRC) (see clause 5.2).
"""


def test_alternating_lines_across_page_furniture():
    rows = glossary_rows(ALTERNATING, "x")
    assert [(r["source"], r.get("acronym"), r.get("expansion")) for r in rows] == [
        ("abbreviations", "AM", "Acknowledged Mode"), ("abbreviations", "ARQ", "Automatic Repeat Request"),
        ("inline", "RLC", "Radio Link Control")]
    assert rows[-1]["clause"] == "4"


def test_tab_space_and_table_layouts_under_headings():
    md = ("## 3.1\tDefinitions\n\n**downlink:** the direction from the network to the UE.\n\n"
          "## 3.3\tAbbreviations\n\nUE\tUser Equipment\n\nQoS  Quality of Service\n\n"
          "S-NSSAI Single Network Slice Selection Assistance Information\n\n"
          "| Abbreviation | Expansion |\n|---|---|\n| gNB | NR Node B |\n\n## 4\tGeneral\n\nText.\n")
    rows = glossary_rows(md, "d")
    assert {(r.get("acronym"), r.get("expansion")) for r in rows if r["source"] == "abbreviations"} == {
        ("UE", "User Equipment"), ("QoS", "Quality of Service"), ("gNB", "NR Node B"),
        ("S-NSSAI", "Single Network Slice Selection Assistance Information")}
    [d] = [r for r in rows if r["source"] == "definitions"]
    assert d == {"doc_id": "d", "source": "definitions", "clause": "3.1", "term": "downlink",
                 "definition": "the direction from the network to the UE."}


def test_toc_entries_start_no_glossary():
    toc = ("Contents\n\n3.2 Abbreviations\n\n5\n\n.............................\n\n4\n\n"
           "General\n\n4.1\n\nRLC entities\n\n6\n\n.........\n")
    assert glossary_rows(toc, "t") == []


def test_building_blocks():
    assert is_furniture("ETSI TS 138 322 V19.2.0 (2026-04)") and is_furniture("12")
    assert is_furniture("3GPP TS 38.322 version 19.2.0 Release 19") and is_furniture("ETSI")
    assert not is_furniture("3GPP 3rd Generation Partnership Project")
    assert all(map(is_acronym, ["UE", "gNB", "QoS", "ng-eNB", "5GC", "S-NSSAI", "Tx"]))
    assert not any(map(is_acronym, ["The", "General", "NOTE", "12", "5.2.1"]))
    assert initials_form("RRC", "the Radio Resource Control".split()) == "Radio Resource Control"
    assert initials_form("N3IWF", "Non-3GPP InterWorking Function".split()) == "Non-3GPP InterWorking Function"
    assert initials_form("QoS", "the Quality of Service".split()) == "Quality of Service"
    assert initials_form("RRC", "configured by upper layers".split()) is None


def test_generated_specs_are_fictional_unique_and_stable():
    """The fictional specifications that grow the knowledge benchmark's corpus: every invented
    abbreviation is new (to the corpus and to the real tables), spelled by its expansion's
    initials, and spec i is the same whatever the corpus size."""
    from tests.fixtures import etsi_layout as E

    few, many = E.generated_specs(3), E.generated_specs(40)
    assert [(s.spec, s.abbreviations, s.terms, s.titles) for s in few] == \
        [(s.spec, s.abbreviations, s.terms, s.titles) for s in many[:3]]
    invented = [(a, e) for s in many for a, e in s.abbreviations if a not in E._KNOWN]
    assert len(invented) == 40 * 13 and len({a for a, _ in invented}) == len(invented)
    assert all("".join(w[0] for w in e.split()) == a for a, e in invented)
    assert len({t.lower() for s in many for t, _ in s.terms}) == 40 * 4
    assert len({s.titles["5.2.1"] for s in many}) > 10  # clause titles differ from spec to spec
    assert all(s.spec.startswith("39.") for s in many)  # a series 3GPP does not use
