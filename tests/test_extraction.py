from __future__ import annotations

import json

import jsonschema

from components.llm.extraction import (Extraction, expands, grounding, json_schema, parse,
                                   rule_acronyms)

TEXT = ("The RRC protocol (Radio Resource Control) runs between the UE and the gNB, see "
        "TS 38.331 and 3GPP TR 21.905. Timer T300 supervises RRC connection establishment.")
GOOD = {"acronyms": [{"acronym": "RRC", "expansion": "Radio Resource Control"}],
        "spec_refs": ["TS 38.331"],
        "qa": {"question": "What does timer T300 supervise?",
               "answer": "RRC connection establishment"}}


def test_schema_is_valid_and_matches_the_model():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(GOOD, schema)
    Extraction.model_validate(GOOD)


def test_parse_valid_json():
    data, err, repaired = parse(json.dumps(GOOD))
    assert err is None and not repaired and data["qa"]["answer"] == "RRC connection establishment"


def test_parse_repairs_truncated_json():
    cut = json.dumps(GOOD)[:-3]  # a server that hit max_tokens
    data, err, repaired = parse(cut)
    assert repaired
    assert data is None or data["acronyms"][0]["acronym"] == "RRC"


def test_parse_reports_schema_errors_without_raising():
    bad = dict(GOOD, qa={"question": "?", "answer": "x"})
    data, err, _ = parse(json.dumps(bad))
    assert data is None and err.startswith("schema: qa.question")


def test_parse_reports_non_json():
    data, err, _ = parse("I cannot help with that.")
    assert data is None and err


def test_grounding_accepts_supported_and_rejects_made_up_parts():
    made_up = {"acronyms": [{"acronym": "RRC", "expansion": "Radio Resource Control"},
                            {"acronym": "3GPP", "expansion": "TS 38.331"},
                            {"acronym": "AMF", "expansion": "Access and Mobility Function"}],
               "spec_refs": ["TS 38.331", "TS 99.999"],
               "qa": {"question": "What is X?", "answer": "Something entirely unrelated here"}}
    g = grounding(made_up, TEXT)
    assert [a["acronym"] for a in g["acronyms"]] == ["RRC"]
    assert g["spec_refs"] == ["TS 38.331"]
    assert not g["qa_grounded"]
    assert grounding(GOOD, TEXT)["qa_grounded"]


def test_expands():
    assert expands("gNB", "next generation Node B")
    assert expands("S-NSSAI", "Single Network Slice Selection Assistance Information")
    assert not expands("3GPP", "2026-06")
    assert not expands("RRC", "RRC")


def test_rule_acronyms_from_an_abbreviations_section():
    chunk = {"heading": "3.2 Abbreviations", "section_path": ["3 Definitions", "3.2 Abbreviations"],
             "text": "For the purposes of the present document, the following abbreviations apply.\n\n"
                     "AMF\tAccess and Mobility Management Function\n\ngNB next generation Node B\n"
                     "For the purposes of the present document\nQoS Quality of Service\n"
                     "| PCI | Physical Cell Identity |\n| Abbreviation | Expansion |\n|---|---|"}
    got = rule_acronyms(chunk)
    assert got == [{"acronym": "AMF", "expansion": "Access and Mobility Management Function"},
                   {"acronym": "gNB", "expansion": "next generation Node B"},
                   {"acronym": "QoS", "expansion": "Quality of Service"},
                   {"acronym": "PCI", "expansion": "Physical Cell Identity"}]
    assert rule_acronyms(dict(chunk, heading="5.1 Procedures", section_path=["5.1 Procedures"])) == []
