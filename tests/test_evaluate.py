"""Multiple-choice scoring: the TeleQnA format, strict and lenient parsing, per-category accuracy,
and MCQ generated from the held-out split with glossary distractors. (The evaluate stage on a real
tuned model is in test_finetune.py.)"""
from __future__ import annotations

import json

import pytest

from components.training.evaluation import (MCQ, MCQError, generated_mcq, load_teleqna, parse_lenient,
                                            parse_strict, score_mcq, token_f1)
from conftest import REPO

FIXTURE = REPO / "tests" / "data" / "teleqna_sample.json"


def test_fixture_loads_in_teleqna_format():
    qs = load_teleqna(FIXTURE)
    assert len(qs) == 6 and qs[0].id == "question 0" and qs[0].answer == 2
    assert {len(q.options) for q in qs} == {3, 4, 5}
    assert {q.category for q in qs} == {"Standards specifications", "Lexicon", "Standards overview"}
    text = qs[2].messages()[-1]["content"]
    assert "option 5: PHY" in text and "(1-5)" in text


@pytest.mark.parametrize("bad,match", [
    ({"question 1": {"question": "q", "option 1": "a", "answer": "option 1: a"}}, "'question 1'.*option 2"),
    ({"question 1": {"question": "q", "option 1": "a", "option 2": "b", "answer": "b"}}, "'question 1'.*answer"),
    ({"question 1": {"question": "q", "option 1": "a", "option 2": "b", "answer": "option 3: c"}}, "k in 1..2"),
    ([1, 2], "JSON object"),
])
def test_malformed_file_names_the_file_and_question(tmp_path, bad, match):
    p = tmp_path / "mcq.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(MCQError, match=match) as exc:
        load_teleqna(p)
    assert str(p) in str(exc.value)
    with pytest.raises(MCQError, match="not found"):
        load_teleqna(tmp_path / "missing.json")


@pytest.mark.parametrize("reply,strict,lenient", [
    ("2", 2, 2), ("option 3", 3, 3), ("3: SDAP", 3, 3), ("The answer is option 4.", 4, 4), ("(1)", 1, 1),
    ("I think option 2 is right", None, 2), ("It is the SDAP layer", None, 3),
    ("5G uses 3GPP Release 15", None, None), ("7", None, None), ("", None, None), ("1.5 ms", None, None),
])
def test_strict_and_lenient_parsing(reply, strict, lenient):
    opts = ("RLC", "MAC", "SDAP", "PDCP")
    assert parse_strict(reply, 4) == strict
    assert parse_lenient(reply, opts) == lenient


def test_scores_overall_per_category_and_parse_failures():
    qs = [MCQ("a", "q", ("x", "y"), 1, "A"), MCQ("b", "q", ("x", "y"), 2, "A"), MCQ("c", "q", ("x", "y"), 2, "B")]
    s = score_mcq(qs, ["1", "I'd say option 2", "x"])
    assert s["strict_accuracy"] == pytest.approx(1 / 3, abs=1e-3)
    assert s["accuracy"] == pytest.approx(2 / 3, abs=1e-3)
    assert s["strict_parse_failure_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert s["per_category"] == {"A": {"n": 2, "accuracy": 1.0, "strict_accuracy": 0.5},
                                 "B": {"n": 1, "accuracy": 0.0, "strict_accuracy": 0.0}}


def _row(q, a, kind, doc):
    return {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": q},
                         {"role": "assistant", "content": a}], "meta": {"kind": kind, "doc_id": doc}}


def test_generated_mcq_takes_distractors_from_the_same_documents_glossary():
    test = [_row("What does AMF stand for?", "AMF stands for Access and Mobility Management Function.", "acronym", "d1"),
            _row("Who reviews it?", "The site lead.", "qa", "d2")]
    pool = test + [_row("x", "SMF stands for Session Management Function.", "acronym", "d3"),
                   _row("y", "The operator.", "qa", "d3"), _row("z", "Nobody.", "qa", "d3"),
                   _row("w", "The vendor.", "qa", "d4")]
    glossary = [{"doc_id": "d1", "acronym": a, "expansion": e} for a, e in
                [("UPF", "User Plane Function"), ("NRF", "Network Repository Function"),
                 ("PCF", "Policy Control Function"), ("AMF", "Access and Mobility Management Function")]]
    qs = generated_mcq(test, pool, glossary, n_options=4, seed=1)
    assert len(qs) == 2
    acr = qs[0]
    assert acr.options[acr.answer - 1] == "Access and Mobility Management Function"
    assert set(acr.options) - {"Access and Mobility Management Function"} == {
        "User Plane Function", "Network Repository Function", "Policy Control Function"}
    qa = qs[1]
    assert qa.options[qa.answer - 1] == "The site lead." and len(set(qa.options)) == 4
    # Without a glossary: other acronym answers of the dataset; too few distractors: skipped.
    assert set(generated_mcq(test[:1], pool, [], n_options=2)[0].options) == {
        "Access and Mobility Management Function", "Session Management Function"}
    assert generated_mcq(test[:1], pool, [], n_options=3) == []
    assert generated_mcq(test, pool, glossary, seed=1) == qs  # deterministic


def test_token_f1():
    assert token_f1("Access and Mobility", "access and mobility") == 1.0
    assert token_f1("", "x") == 0.0 and 0 < token_f1("the AMF", "AMF function") < 1
