"""What evaluation stands on: the TeleQnA format, strict and lenient parsing of generated answers,
paired statistics and the verdict, and the facts, wordings and probes of the dataset. (Scoring
by log-likelihood and the evaluate stage on a real tuned model are in test_finetune.py.)"""
from __future__ import annotations

import json

import pytest

from components import dataset as D
from components import knowledge as K
from components import stats
from components.mcq import MCQ, MCQError, load_teleqna, parse_lenient, parse_strict, score_generated
from components.training.evaluation import token_f1
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
    s = score_generated(qs, ["1", "I'd say option 2", "x"])
    assert s["strict_accuracy"] == pytest.approx(1 / 3, abs=1e-3)
    assert s["accuracy"] == pytest.approx(2 / 3, abs=1e-3)
    assert s["strict_parse_failure_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert s["per_category"] == {"A": {"n": 2, "accuracy": 1.0, "strict_accuracy": 0.5},
                                 "B": {"n": 1, "accuracy": 0.0, "strict_accuracy": 0.0}}


# --- paired statistics ------------------------------------------------------------------------------

def test_mcnemar_exact_matches_the_binomial_test():
    from scipy.stats import binomtest  # scipy comes with mlflow

    for gained, lost in [(12, 1), (5, 5), (9, 2), (0, 3), (30, 10)]:
        assert stats.mcnemar_exact(gained, lost) == pytest.approx(
            binomtest(gained, gained + lost, 0.5).pvalue, rel=1e-9)
    assert stats.mcnemar_exact(0, 0) == 1.0


def test_paired_comparison_reports_n_difference_interval_and_p():
    base = [False] * 30 + [True] * 10
    tuned = [True] * 20 + [False] * 10 + [True] * 10  # 20 gained, none lost
    c = stats.paired(base, tuned)
    assert c["n"] == 40 and c["base"] == 0.25 and c["tuned"] == 0.75 and c["diff"] == 0.5
    assert c["gained"] == 20 and c["lost"] == 0 and c["p"] < 1e-5
    assert 0.3 < c["ci_low"] < 0.5 < c["ci_high"] < 0.7
    same = stats.paired(base, base)
    assert same["diff"] == 0 and same["p"] == 1.0 and same["ci_low"] == same["ci_high"] == 0
    with pytest.raises(ValueError, match="same items"):
        stats.paired([True], [True, False])


def test_verdict_is_worded_from_the_numbers():
    up = stats.paired([False] * 30 + [True] * 10, [True] * 20 + [False] * 10 + [True] * 10)
    flat = stats.paired([True, False] * 10, [False, True] * 10)
    down = stats.paired([True] * 30, [False] * 20 + [True] * 10)
    v = stats.verdict({"your_documents": up, "unseen_facts": flat})
    assert v.startswith("knows your documents better: +50 points (95 % CI +")
    assert "p < 0.001, n = 40" in v and "unseen facts +0 points (n.s., n = 20)" in v
    assert stats.verdict({"your_documents": flat}).startswith("no evidence the fine-tune helped")
    assert "forgot general knowledge: −67 points" in stats.verdict({"your_documents": up, "general": down})
    assert stats.knowledge_score({"your_documents": up, "unseen_facts": down}) == pytest.approx(0.5 - 0.6667, abs=1e-3)
    assert stats.knowledge_score({"your_documents": up, "unseen_facts": flat}) == 0.5


def test_wilson_interval_brackets_the_accuracy():
    lo, hi = stats.wilson(30, 40)
    assert lo < 0.75 < hi and 0.58 < lo and hi < 0.87
    assert stats.wilson(0, 0) == (0.0, 0.0)


# --- facts, wordings and probes ---------------------------------------------------------------------

def _record(doc, chunk, clause, title, acronyms=(), definitions=()):
    return {"doc_id": doc, "chunk_id": chunk, "clause": clause, "spec": "TS 38.999",
            "section_path": [f"{clause} {title}"], "skip": None, "status": "ok",
            "result": {"acronyms": [{"acronym": a, "expansion": e, "origin": "rule"} for a, e in acronyms],
                       "definitions": [{"term": t, "definition": d, "origin": "rule"} for t, d in definitions],
                       "qa": [], "spec_refs": [], "entities": []}}


ACRONYMS = [("AMF", "Access and Mobility Management Function"), ("SMF", "Session Management Function"),
            ("UPF", "User Plane Function"), ("NRF", "Network Repository Function"),
            ("PCF", "Policy Control Function"), ("UDM", "Unified Data Management"),
            ("AUSF", "Authentication Server Function"), ("NEF", "Network Exposure Function")]


def _facts():
    recs = [_record("d", "d#1", "3.2", "Abbreviations", ACRONYMS),
            _record("d", "d#2", "5.1", "Registration"), _record("d", "d#3", "5.2", "Session setup"),
            _record("d", "d#4", "5.3", "Handover"), _record("d", "d#5", "5.4", "Paging"),
            _record("e", "e#1", "3.2", "Abbreviations", [("AMF", "access and mobility management function")])]
    return K.facts_from_records(recs)


def test_facts_are_distinct_and_clause_titles_are_facts():
    facts = _facts()
    kinds = [f.kind for f in facts]
    assert kinds.count("acronym") == 8  # the lower-case repeat of AMF is the same fact
    assert {(f.key, f.value) for f in facts if f.kind == "spec_clause"} == {
        ("5.1", "Registration"), ("5.2", "Session setup"), ("5.3", "Handover"), ("5.4", "Paging")}


def test_unseen_share_is_per_kind_seeded_and_never_a_whole_kind():
    facts = _facts()
    sets = K.assign(facts, 0.25, seed=0)
    assert sum(sets[f.id] == "unseen" for f in facts if f.kind == "acronym") == 2
    assert sum(sets[f.id] == "unseen" for f in facts if f.kind == "spec_clause") == 1
    assert K.assign(facts, 0.25, seed=0) == sets and K.assign(facts, 0.25, seed=1) != sets
    assert all(v == "trained" for v in K.assign(facts, 0.0, 0).values())
    assert any(v == "trained" for v in K.assign(facts, 0.99, 0).values())


def test_phrasings_cover_both_directions_and_an_option_number_answer():
    facts = _facts()
    amf = next(f for f in facts if f.key == "AMF")
    pool = [f for f in facts if f.kind == "acronym"]
    rows = K.training_rows(amf, pool, phrasings=4, n_options=4, seed=0)
    assert len(rows) == 5 and rows[-1]["phrasing"] == "mcq"
    texts = [r["question"] for r in rows[:4]]
    assert len(set(texts)) == 4
    assert any("AMF" in q for q in texts) and any("Access and Mobility Management Function" in q for q in texts)
    mcq = rows[-1]
    assert mcq["answer"].isdigit() and "option 4:" in mcq["question"]
    assert f"option {mcq['answer']}: Access and Mobility Management Function" in mcq["question"]


def test_probe_wordings_are_never_trained_and_distractors_stay_in_their_set():
    facts = _facts()
    sets = K.assign(facts, 0.25, seed=0)
    cfg = D.DatasetConfig()
    split = D.fact_examples(facts, sets, cfg)
    probes, _ = D.probes(facts, sets, cfg)
    trained_text = " ".join(e["instruction"] for e in split["train"])
    for p in probes:
        if p["split"] == "test":
            assert p["question"] not in trained_text
        mine = {f.value for f in facts if sets[f.id] == p["set"] and f.kind == p["kind"]}
        assert set(p["options"]) <= mine and p["options"][p["answer"] - 1] == p["fact"]["value"]
    assert {e["fact_id"] for e in split["train"]} == {f.id for f in facts if sets[f.id] == "trained"}
    assert not {e["fact_id"] for e in split["train"]} & {e["fact_id"] for e in split["test"]}
    valid_q = {e["instruction"] for e in split["valid"]}
    assert valid_q <= {p["question"] for p in probes if p["split"] == "valid"}


def test_a_training_example_that_states_an_unseen_fact_is_dropped():
    facts = _facts()
    smf = next(f for f in facts if f.key == "SMF")
    rows = [{"instruction": "Summarise.", "input": "", "output": "The Session Management Function (SMF) sets up sessions.",
             "kind": "summary"},
            {"instruction": "Summarise.", "input": "", "output": "The SMF sets up sessions.", "kind": "summary"}]
    kept, dropped = D.drop_leaks(rows, [smf])
    assert dropped == 1 and kept == rows[1:]


def test_token_f1():
    assert token_f1("Access and Mobility", "access and mobility") == 1.0
    assert token_f1("", "x") == 0.0 and 0 < token_f1("the AMF", "AMF function") < 1
