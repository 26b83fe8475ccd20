"""The extraction contract: schema, parsing, grounding, degenerate output, verification, and how a
record says where each item came from and whether a failure is final or transient."""
from __future__ import annotations

import json
import threading

import jsonschema
import pytest

from components.llm import extraction as X
from components.llm import grounding as G
from components.llm.extraction import Extraction, ExtractionConfig, expands, json_schema, parse
from components.llm.extractor import ChunkExtractor, quality
from components.llm.rules import Glossary
from components.llm.reply import Reply
from components.llm.services import ServiceError

TEXT = ("The RRC protocol (Radio Resource Control) runs between the UE and the gNB, see "
        "TS 38.331 and 3GPP TR 21.905. Timer T300 supervises RRC connection establishment "
        "and its default value is 1000 ms.")
GOOD = {"entities": [{"name": "T300", "type": "timer"}, {"name": "RRC", "type": "protocol"}],
        "acronyms": [{"acronym": "RRC", "expansion": "Radio Resource Control"}],
        "spec_refs": ["TS 38.331"],
        "summary": "Timer T300 supervises RRC connection establishment.",
        "qa": [{"question": "What does timer T300 supervise?",
                "answer": "RRC connection establishment",
                "evidence": "Timer T300 supervises RRC connection establishment"}]}


def test_schema_is_valid_inline_and_matches_the_model():
    schema = json_schema(qa_per_chunk=3)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert "$ref" not in json.dumps(schema) and "$defs" not in schema
    assert schema["properties"]["qa"]["maxItems"] == 3
    assert schema["properties"]["entities"]["items"]["properties"]["type"]["enum"] == X.ENTITY_TYPES
    jsonschema.validate(GOOD, schema)
    jsonschema.validate(X.EXAMPLE_OUT, schema)
    Extraction.model_validate(GOOD)
    bad = {**GOOD, "entities": [{"name": "AMF", "type": "vegetable"}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_parse_valid_repaired_schema_error_and_not_json():
    p = parse(json.dumps(GOOD))
    assert p.error is None and not p.repaired and p.json_valid and p.data["qa"][0]["answer"]
    cut = parse(json.dumps(GOOD)[:-3])  # a server that hit max_tokens
    assert cut.repaired
    bad = parse(json.dumps({**GOOD, "qa": [{"question": "?", "answer": "x", "evidence": "y"}]}))
    assert bad.data is None and bad.json_valid and bad.error.startswith("schema: qa.0.question")
    junk = parse("I cannot help with that.")
    assert junk.data is None and not junk.json_valid and junk.error


def test_the_prompt_carries_spec_clause_and_glossary():
    chunk = {"text": TEXT, "section_path": ["5 Procedures", "5.3 RRC connection"]}
    msgs = X.messages_for(chunk, "TS 38.331", 18, [{"acronym": "RRC", "expansion": "Radio Resource Control"}])
    user = msgs[-1]["content"]
    assert "Specification: TS 38.331 (Release 18)" in user
    assert "Clause: 5 Procedures > 5.3 RRC connection" in user
    assert "RRC = Radio Resource Control" in user and user.endswith(TEXT)


def test_quotes_must_occur_in_the_chunk():
    assert G.contains_quote("timer  T300 supervises\nRRC connection", TEXT)
    assert G.contains_quote("| T310 | 1000 ms |".replace("|", ""), "| T310 | 1000 ms | RLF |")
    assert not G.contains_quote("Timer T300 supervises handover", TEXT)
    assert not G.contains_quote("RRC", TEXT)  # too short to be evidence


@pytest.mark.parametrize("answer, quote, why", [
    ("1000 ms", "its default value is 1000 ms", None),
    ("2000 ms", "its default value is 1000 ms", "number_not_in_quote"),
    ("1000 dB", "its default value is 1000 ms", "unit_not_in_quote"),
    ("As in TS 38.300", "see TS 38.331 for the value", "spec_ref_not_in_quote"),
    ("The AMF decides", "the network decides the value", "acronym_not_in_quote"),
    ("Handover preparation at the target", "Timer T300 supervises RRC connection establishment",
     "answer_not_in_quote"),
])
def test_answers_must_be_supported_by_their_quote(answer, quote, why):
    assert G.unsupported_in_answer(answer, quote) == why


def test_an_acronym_is_supported_by_its_expansion_in_the_quote():
    g = Glossary([{"doc_id": "d", "source": "abbreviations", "clause": "3.2", "acronym": "AMF",
                   "expansion": "Access and Mobility Management Function"}])
    assert G.unsupported_in_answer("The AMF", "the Access and Mobility Management Function decides", g) is None


ARCHITECTURE = ("## 4 Architecture\n\nThe AMF terminates the N1 and N2 interfaces and handles registration and "
                "mobility. The SMF establishes and releases PDU sessions and selects the UPF.\n\nThe PCF provides "
                "policy rules for QoS control to the SMF. Network functions discover each other through the NRF.")


@pytest.mark.parametrize("summary, kept", [
    ("The AMF terminates the N1 and N2 interfaces and handles registration and mobility.", True),
    ("The SMF selects the UPF. The PCF provides policy rules for QoS control.", True),
    # every word is in the chunk, the roles are swapped: what SmolLM2-135M wrote in a default run
    ("The NRF is responsible for policy rules for QoS control.", False),
    ("The SMF is responsible for registration and mobility.", False),
    ("The SMF selects the UPF. The UE implements the N1 and N2 interfaces.", False),  # one sentence unbacked
    ("", False),
])
def test_a_summary_is_kept_only_when_each_sentence_is_backed_by_one_of_the_chunk(summary, kept):
    assert G.summary_supported(summary, ARCHITECTURE) is kept


@pytest.mark.parametrize("text, whole", [
    ("The UE reports. The gNB is", "The UE reports."),   # cut by the schema's length limit
    ("Version 17.3 applies. It ends here.", "Version 17.3 applies. It ends here."),
    ("no sentence end", ""),
])
def test_a_summary_keeps_whole_sentences_only(text, whole):
    assert G.whole_sentences(text) == whole


def test_degenerate_output_is_recognised():
    loop = "Release 17 is a feature set that is a feature set that is a feature set that is"
    assert G.repetition_loop(loop)
    assert not G.repetition_loop("Timer T300 supervises RRC connection establishment.")
    assert G.restates_question("What does timer T300 supervise?", "Timer T300 supervises")
    assert not G.restates_question("What does timer T300 supervise?", "RRC connection establishment")
    ex = X.EXAMPLE_QA
    assert G.qa_drop_reason({**ex}, TEXT, ex) == "example_copy"
    assert G.qa_drop_reason({"question": "What is RRC?", "answer": loop, "evidence": TEXT[:60]},
                            TEXT, ex) == "repetition_loop"
    assert G.qa_drop_reason(GOOD["qa"][0], TEXT, ex) is None
    assert G.qa_drop_reason({**GOOD["qa"][0], "evidence": "Timer T300 supervises handover"}, TEXT,
                            ex) == "quote_not_in_chunk"


def test_expands():
    assert expands("gNB", "next generation Node B")
    assert expands("S-NSSAI", "Single Network Slice Selection Assistance Information")
    assert not expands("3GPP", "2026-06")
    assert not expands("RRC", "RRC")


class Scripted:
    """A service that answers from a script (the wire is tested in test_services and by the
    real embedded server below); records what it was asked."""

    name = "scripted"
    model = "scripted-model"

    def __init__(self, replies):
        self.replies = list(replies)
        self.asked = []

    def chat_json(self, messages, schema, max_tokens, temperature=0.0, **route):
        self.asked.append(messages)
        r = self.replies.pop(0)
        if isinstance(r, BaseException):
            raise r
        return Reply(content=r if isinstance(r, str) else json.dumps(r), completion_tokens=10)


CHUNK = {"id": "d#1", "doc_id": "d", "text": TEXT, "section_path": ["5.3 RRC connection"],
         "n_words": 40}
GLOSSARY = {"d": Glossary([{"doc_id": "d", "source": "abbreviations", "clause": "3.2",
                            "acronym": "RRC", "expansion": "Radio Resource Control"},
                           {"doc_id": "d", "source": "abbreviations", "clause": "3.2",
                            "acronym": "UE", "expansion": "User Equipment"}])}
META = {"d": {"spec": "38.331", "spec_type": "TS", "release": 18, "title": "RRC"}}


def extractor(replies, **cfg):
    return ChunkExtractor(ExtractionConfig(**cfg), GLOSSARY, META, Scripted(replies))


def test_a_chunk_keeps_only_what_it_supports_and_says_where_each_item_came_from():
    reply = {**GOOD,
             "entities": GOOD["entities"] + [{"name": "AMF", "type": "network function"}],
             "acronyms": GOOD["acronyms"] + [{"acronym": "3GPP", "expansion": "2026-06"}],
             "spec_refs": ["TS 38.331", "DNN", "TS 99.999"],
             "qa": GOOD["qa"] + [dict(X.EXAMPLE_QA),
                                 {"question": "What is the default value of T300?",
                                  "answer": "1000 ms", "evidence": "its default value is 1000 ms"}]}
    ex = extractor([reply, {"answer": "RRC connection establishment"}, {"answer": "unknown"},
                    {"answer": "2 seconds"}], ask=list(X.FIELDS))
    rec = ex(CHUNK, "key")
    llm = rec["llm"]
    assert rec["status"] == "ok" and rec["failure"] is None
    assert [e["name"] for e in llm["entities"]] == ["T300", "RRC"]
    assert llm["dropped"] == {"entity_not_in_chunk": 1, "acronym_unsupported": 1,
                              "spec_ref_not_a_reference": 1, "spec_ref_not_in_chunk": 1,
                              "example_copy": 1, "verify_disagrees": 1}
    assert [q["answer"] for q in llm["qa"]] == ["RRC connection establishment"]
    assert llm["qa_proposed"] == 3 and llm["qa_grounded"] == 2
    res = rec["result"]
    assert {(a["acronym"], a["origin"]) for a in res["acronyms"]} == {("RRC", "rule"), ("UE", "rule")}
    assert {(x["ref"], x["origin"]) for x in res["spec_refs"]} == {("TS 38.331", "rule"), ("TR 21.905", "rule")}
    assert res["qa"][0]["origin"] == "scripted-model" and res["summary"]["origin"] == "scripted-model"
    # The hybrid prompt told the model the glossary entries of the chunk.
    assert "RRC = Radio Resource Control" in ex.service.asked[0][-1]["content"]
    m = quality([rec], GLOSSARY, {"d#1": TEXT})
    assert m["extract/qa_keep_rate"] == round(1 / 3, 4) and m["extract/qa_grounded_rate"] == round(2 / 3, 4)
    assert m["extract/acronym_precision"] == 0.5 and m["extract/acronym_recall"] == 0.5
    assert m["extract/spec_ref_recall"] == 0.5 and m["extract/spec_ref_precision"] == round(1 / 3, 4)
    assert m["extract/entities_timer"] == 1 and m["extract/acronyms_rule"] == 2


def test_hybrid_asks_the_model_only_for_what_rules_cannot_find():
    ex = extractor([{**GOOD, "acronyms": [{"acronym": "UE", "expansion": "User Entity"}]},
                    {"answer": "RRC connection establishment"}, {"answer": "unknown"}])
    assert ex.cfg.fields == ("entities", "summary", "qa")
    assert list(ex.schema["properties"]) == ex.schema["required"] == ["entities", "summary", "qa"]
    rec = ex(CHUNK, "key")
    system, example = ex.service.asked[0][0]["content"], json.loads(ex.service.asked[0][2]["content"])
    assert "summary:" in system and "acronyms:" not in system and "spec_refs:" not in system
    assert list(example) == ["entities", "summary", "qa"]
    jsonschema.validate(example, ex.schema)
    # An unconstrained server's extra field is not taken: the glossary's expansion stands.
    assert list(rec["llm"]["proposed"]) == ["entities", "summary", "qa"] and rec["llm"]["acronyms"] == []
    assert {(a["acronym"], a["expansion"]) for a in rec["result"]["acronyms"]} == {
        ("RRC", "Radio Resource Control"), ("UE", "User Equipment")}
    m = quality([rec], GLOSSARY, {"d#1": TEXT})
    assert "extract/acronym_precision" not in m and "extract/spec_ref_recall" not in m
    # The model alone is asked for everything; an explicit list wins over either default.
    assert ExtractionConfig(extractor="llm").fields == X.FIELDS
    assert ExtractionConfig(ask=["qa", "acronyms"]).fields == ("acronyms", "qa")
    assert X.request_template(("qa",)) != X.request_template()


def test_a_question_answerable_without_the_chunk_is_dropped():
    ex = extractor([GOOD, {"answer": "RRC connection establishment"},
                    {"answer": "RRC connection establishment"}])
    rec = ex(CHUNK, "key")
    assert rec["llm"]["qa"] == [] and rec["llm"]["dropped"]["answerable_without_chunk"] == 1


def test_invalid_output_gets_one_repair_then_a_final_dead_letter():
    ex = extractor(["not json at all", '{"entities": "nope"}'])
    rec = ex(CHUNK, "key")
    assert rec["status"] == "invalid" and rec["failure"] == "final"
    assert rec["error"].startswith("schema: entities") and rec["llm"]["attempts"] == 2
    assert rec["llm"]["raw"] == '{"entities": "nope"}'
    assert "not valid" in ex.service.asked[1][-1]["content"]  # the repair request says why
    assert rec["result"]["acronyms"]  # rules still give what they give

    repaired = extractor(["oops", GOOD, {"answer": "RRC connection establishment"}, {"answer": "x"}])
    assert repaired(CHUNK, "key")["status"] == "ok"


def test_service_failures_are_transient_and_bugs_are_not_swallowed():
    rec = extractor([ServiceError("HTTP 500")])(CHUNK, "key")
    assert rec["status"] == "error" and rec["failure"] == "transient" and "HTTP 500" in rec["error"]

    class Final(ServiceError):
        transient = False
    rec = extractor([Final("bad request")])(CHUNK, "key")  # the service says retrying won't help
    assert rec["status"] == "error" and rec["failure"] == "final" and "bad request" in rec["error"]
    rec = extractor([ServiceError("HTTP 400", status=400)])(CHUNK, "key")
    assert rec["failure"] == "final"
    with pytest.raises(KeyError):
        extractor([KeyError("bug")])(CHUNK, "key")


def test_rules_mode_and_skipped_chunks_make_no_request():
    ex = ChunkExtractor(ExtractionConfig(extractor="rules"), GLOSSARY, META, service=None)
    rec = ex(CHUNK, "key")
    assert rec["llm"] is None and rec["status"] == "ok" and rec["result"]["acronyms"]
    short = extractor([])
    rec = short({**CHUNK, "text": "RRC see TS 38.331.", "n_words": 4}, "key")
    assert rec["skip"] == "too_short" and rec["llm"] is None and short.service.asked == []
    assert rec["result"]["spec_refs"] == [{"ref": "TS 38.331", "origin": "rule"}]


def test_llm_mode_uses_the_model_alone():
    ex = extractor([GOOD, {"answer": "RRC connection establishment"}, {"answer": "x"}], extractor="llm")
    rec = ex(CHUNK, "key")
    assert "Abbreviations:" not in ex.service.asked[0][-1]["content"]
    assert {a["origin"] for a in rec["result"]["acronyms"]} == {"scripted-model"}
    assert rec["result"]["definitions"] == [] and rec["result"]["releases"] == []


def test_a_stop_request_between_requests_abandons_the_chunk():
    from components.llm.extractor import Cancelled

    ex = extractor([GOOD])
    ex.cancel = threading.Event()
    ex.cancel.set()
    with pytest.raises(Cancelled):
        ex(CHUNK, "key")


def test_the_request_template_changes_with_any_prompt_wording(monkeypatch):
    # The extraction request key hashes it: an edited example or message reuses no stale record.
    before = json.dumps(X.request_template())
    for name, edit in (("_EXAMPLE_IN", X._EXAMPLE_IN + " edited"), ("SYSTEM_PROMPT", X.SYSTEM_PROMPT + " edited"),
                       ("_ASKS", {**X._ASKS, "qa": "qa: edited"}),
                       ("EXAMPLE_OUT", {**X.EXAMPLE_OUT, "summary": "edited"})):
        with monkeypatch.context() as m:
            m.setattr(X, name, edit)
            assert json.dumps(X.request_template()) != before, name
    with monkeypatch.context() as m:
        m.setattr(X, "verify_messages", lambda text, q: [{"role": "user", "content": f"{text} / {q}"}])
        assert json.dumps(X.request_template()) != before
    assert json.dumps(X.request_template()) == before


def test_every_record_the_extractor_writes_is_in_the_record_schema():
    from components.llm.record import check

    records = [
        ChunkExtractor(ExtractionConfig(extractor="rules"), GLOSSARY, META, service=None)(CHUNK, "key"),
        extractor([GOOD, {"answer": "RRC connection establishment"}, {"answer": "x"}])(CHUNK, "key"),
        extractor([ServiceError("HTTP 400", status=400)])(CHUNK, "key"),
        extractor([ServiceError("HTTP 503", status=503)] * 3)(CHUNK, "key"),
    ]
    assert [(r["status"], r["failure"]) for r in records] == [
        ("ok", None), ("ok", None), ("error", "final"), ("error", "transient")]
    for r in records:
        assert check(json.loads(json.dumps(r))) == json.loads(json.dumps(r))


def test_a_record_of_another_shape_is_named_and_a_resume_asks_its_chunk_again(tmp_path):
    from components.llm.record import RecordError, read
    from components.llm.record_log import reusable

    good = ChunkExtractor(ExtractionConfig(extractor="rules"), GLOSSARY, META, service=None)(CHUNK, "key")
    retired = {"chunk_id": "c9", "doc_id": "d", "status": "ok", "extraction": {}, "grounding": {}}
    path = tmp_path / "extractions.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(retired) + "\n")
    with pytest.raises(RecordError, match=r"extractions\.jsonl line 2: chunk_sha: Field required"):
        read(path)
    assert [r["chunk_id"] for r in read(path, strict=False)] == [good["chunk_id"]]
    # A resume keeps the good record and asks the retired one's chunk again.
    assert list(reusable([path], "key", {good["chunk_id"]: good["chunk_sha"], "c9": "x"})) == [good["chunk_id"]]


def test_a_repeated_entity_or_acronym_is_kept_once_and_counted():
    repeated = {**GOOD, "entities": GOOD["entities"] + [{"name": "T300", "type": "timer"}] * 3,
                "acronyms": GOOD["acronyms"] * 2}
    rec = extractor([repeated, {"answer": "RRC connection establishment"}, {"answer": "x"}], ask=list(X.FIELDS))(CHUNK, "key")
    assert [e["name"] for e in rec["llm"]["entities"]] == ["T300", "RRC"]
    assert [a["acronym"] for a in rec["llm"]["acronyms"]] == ["RRC"]
    assert rec["llm"]["dropped"]["duplicate_entity"] == 3 and rec["llm"]["dropped"]["duplicate_acronym"] == 1
    assert [e["name"] for e in rec["result"]["entities"]] == ["T300", "RRC"]
