"""Rule extraction against the hand-labelled fixture chunks (tests/data/labelled: Word, PDF, HTML
and vendor layouts, written for these tests), and the checks that keep chunks away from the LLM."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.documents.glossary import glossary_rows
from components.llm import rules

DATA = Path(__file__).parent / "data" / "labelled"


def labelled():
    chunks = [json.loads(l) for l in open(DATA / "chunks.jsonl")]
    labels = {r["chunk_id"]: r for r in map(json.loads, open(DATA / "labels.jsonl"))}
    glossaries, metas = {}, {}
    for d in {c["doc_id"] for c in chunks}:
        glossaries[d] = rules.Glossary(glossary_rows((DATA / "documents" / f"{d}.md").read_text(), d))
        metas[d] = json.loads((DATA / "documents" / "meta" / f"{d}.json").read_text())
    return chunks, labels, glossaries, metas


def prf(got: set, want: set) -> tuple[int, int, int]:
    return len(got & want), len(got), len(want)


def test_rules_reach_the_goals_on_the_labelled_chunks():
    chunks, labels, glossaries, metas = labelled()
    acr = [0, 0, 0]
    refs = [0, 0, 0]
    clauses = [0, 0, 0]
    for c in chunks:
        found = rules.extract(c, glossaries[c["doc_id"]], metas[c["doc_id"]])
        lab = labels[c["id"]]
        for tally, got, want in (
                (acr, {(a["acronym"], a["expansion"]) for a in found["acronyms"]}, set(lab["acronyms"].items())),
                (refs, set(found["spec_refs"]), set(lab["spec_refs"])),
                (clauses, set(found["clause_refs"]), set(lab["clause_refs"]))):
            for i, v in enumerate(prf(got, want)):
                tally[i] += v
        assert found["releases"] == lab["releases"], c["id"]
    precision, recall = acr[0] / acr[1], acr[0] / acr[2]
    assert acr[2] >= 30  # the fixture is not trivially small
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    assert refs[0] / refs[2] >= 0.95 and refs[0] / refs[1] >= 0.95, refs
    assert clauses[0] / clauses[2] >= 0.9 and clauses[0] / clauses[1] >= 0.9, clauses


def test_the_glossary_resolves_acronyms_in_every_chunk_of_its_document():
    chunks, _, glossaries, metas = labelled()
    body = next(c for c in chunks if c["id"] == "ts-99102#2")  # far from the Abbreviations clause
    found = rules.extract(body, glossaries["ts-99102"], metas["ts-99102"])
    assert {a["acronym"]: a["expansion"] for a in found["acronyms"]}["RLF"] == "Radio Link Failure"
    assert found["spec"] == "TS 99.102" and found["clause"] == "5.1" and found["release"] == 19


@pytest.mark.parametrize("text, want", [
    ("see 3GPP TS 38.331 [2] and TS23.501", ["TS 38.331", "TS 23.501"]),
    ("ETSI TS 138 322 and TR 21.905 and TR 23.700-40", ["TS 38.322", "TR 21.905", "TR 23.700-40"]),
    ("IETF RFC 8446", ["RFC 8446"]),
    ("version 17.3.0 of 2026-04-01, PLMN 001.01", []),
])
def test_spec_references_are_normalised(text, want):
    assert rules.spec_refs(text) == want


@pytest.mark.parametrize("ref, want", [
    ("TS 38.331", "TS 38.331"), ("3GPP TS 23.501 [2]", "TS 23.501"), ("ETSI TS 138 331", "TS 38.331"),
    ("DNN", None), ("S-NSSAI", None), ("2026-06-01T10:00:00", None), ("TS 38.331 clause 5", None),
    ("Release 17", None),
])
def test_a_model_reference_must_be_a_reference(ref, want):
    assert rules.normalise_ref(ref) == want


def test_clause_references_and_releases():
    text = ("as in clause 5.3.3, clauses 6.1 and 6.2, subclause A.2, Annex C and section 4; "
            "from Release 17 (Rel-18, Rel. 19); see also TR 23.700-40.")
    assert rules.clause_refs(text) == ["clause 5.3.3", "clause 6.1", "clause 6.2", "clause A.2",
                                       "clause 4", "Annex C"]
    assert rules.releases(text) == [17, 18, 19]


def test_skip_reasons():
    body = {"text": "The UE starts timer T310 when the physical layer reports N310 consecutive "
                    "out-of-sync indications for the serving cell.", "section_path": ["5.1 RLM"]}
    assert rules.skip_reason(body, 12, 0.45) is None
    assert rules.skip_reason({**body, "kind": "front_matter"}, 12, 0.45) == "front_matter"
    # The glossary rules read Abbreviations and Definitions clauses whole: no model request.
    for title in ("3.2 Abbreviations", "3.1 Terms", "3 Definitions, symbols and abbreviations"):
        assert rules.skip_reason({**body, "section_path": ["3 Definitions", title]}, 12, 0.45) == "glossary"
    assert rules.skip_reason({**body, "kind": "body"}, 12, 0.45) is None
    toc = {"text": "Contents\n\n6.2.3.1\n\n6.2.3.2 Data PDU .......... 12\n\n7 Procedures 14\n\n7.1"}
    assert rules.skip_reason(toc, 12, 0.45) in ("toc", "too_short")
    toc_long = {"text": "\n".join(f"{i}.{j} Clause title number {j} .......... {i * 10 + j}"
                                  for i in range(4, 8) for j in range(1, 5))}
    assert rules.skip_reason(toc_long, 12, 0.45) == "toc"
    etsi = {"text": "Important notice\n\nThe present document can be downloaded from the ETSI "
                    "site. Copyright Notification: no part may be reproduced. Intellectual "
                    "Property Rights: essential patents may have been declared."}
    assert rules.skip_reason(etsi, 12, 0.45) == "boilerplate"
    table = {"text": "| 1 | 2 | 3 |\n| 10 | 20 | 30 |\n| 100 | 200 | 300 | 400 | 500 | 600 | 700 |",
             "n_words": 40, "alpha_ratio": 0.05}
    assert rules.skip_reason(table, 12, 0.45) == "low_quality"
