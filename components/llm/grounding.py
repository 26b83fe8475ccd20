"""Is what the model said supported by the chunk? And is it worth keeping at all?

A valid JSON object can still be made up, and a small model makes things up fluently: answers
that loop ("a feature set that is a feature set that is ..."), restate the question, copy the
prompt's worked example, or cite "DNN" as a specification. Each check here returns the reason
an item is dropped (or None), so every drop is counted by reason, never silent.
"""
from __future__ import annotations

import re

from components.documents.glossary import is_acronym
from components.llm import rules
from components.training.evaluation import token_f1

_TOKEN = re.compile(r"[A-Za-z0-9]+(?:[.\-/][A-Za-z0-9]+)*")
_NUMBER = re.compile(r"(?<![A-Za-z])\d+(?:[.,]\d+)*")
_UNITS = {"ms", "s", "us", "µs", "ns", "min", "h", "db", "dbm", "hz", "khz", "mhz", "ghz", "bit",
          "bits", "byte", "bytes", "kbps", "mbps", "gbps", "%", "prb", "prbs", "symbols", "slots",
          "subframes", "frames", "km", "m"}
_STOP = {"a", "an", "the", "of", "and", "or", "to", "in", "on", "for", "by", "with", "is", "are",
         "be", "it", "its", "that", "this", "as", "at", "from", "when", "which", "what", "who",
         "how", "does", "do", "was", "were", "can", "shall", "may", "if", "then", "than", "not"}


def tokens(text: str) -> list[str]:
    return [t.lower() for t in _TOKEN.findall(text)]


def content(text: str) -> list[str]:
    return [t for t in tokens(text) if t not in _STOP]


def contains_quote(quote: str, chunk: str, min_tokens: int = 3) -> bool:
    """The quote occurs in the chunk, word for word (case, whitespace and punctuation aside, so a
    table row quoted without its pipes still counts)."""
    q, c = tokens(quote), tokens(chunk)
    if len(q) < min(min_tokens, len(c)):
        return False
    qs, cs = " " + " ".join(q) + " ", " " + " ".join(c) + " "
    return qs in cs


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUMBER.findall(text)}


def _units(text: str) -> set[str]:
    toks = tokens(text.replace("%", " % "))
    return {t for t in toks if t in _UNITS} | ({"%"} if "%" in text else set())


def unsupported_in_answer(answer: str, quote: str, glossary: rules.Glossary | None = None) -> str | None:
    """Why the quote does not support the answer: a number, unit, spec reference or acronym of the
    answer missing from the quote, or answer words the quote does not have."""
    if not set(rules.spec_refs(answer)) <= set(rules.spec_refs(quote)):
        return "spec_ref_not_in_quote"
    if not _numbers(answer) <= _numbers(quote):
        return "number_not_in_quote"
    if not _units(answer) <= _units(quote):
        return "unit_not_in_quote"
    quote_tokens = set(tokens(quote))
    for word in _TOKEN.findall(answer):
        if is_acronym(word) and sum(c.isupper() for c in word) >= 2 and word.lower() not in quote_tokens:
            exp = glossary.expansion(word) if glossary else None
            if not exp or not contains_quote(exp, quote, 1):
                return "acronym_not_in_quote"
            quote_tokens.add(word.lower())  # the quote spells it out
    words = content(answer)
    if words and sum(w in quote_tokens for w in words) / len(words) < 0.6:
        return "answer_not_in_quote"
    return None


# ---------------------------------------------------------------- degenerate output


def repetition_loop(text: str) -> bool:
    """A phrase of two to five words said three times or more, or a long text of few words."""
    toks = tokens(text)
    for n in range(2, 6):
        grams: dict[tuple, int] = {}
        for i in range(len(toks) - n + 1):
            g = tuple(toks[i:i + n])
            grams[g] = grams.get(g, 0) + 1
            if grams[g] >= 3:
                return True
    return len(toks) >= 12 and len(set(toks)) / len(toks) < 0.5


def _stem(word: str) -> str:
    # Crude but enough to see "supervises" in "supervise": compare the first six letters.
    return word[:6]


def restates_question(question: str, answer: str) -> bool:
    """The answer adds nothing the question does not already say."""
    a, q = {_stem(w) for w in content(answer)}, {_stem(w) for w in content(question)}
    return not a or a <= q or token_f1(answer, question) >= 0.8


def copies_example(item: str, example: str, chunk: str) -> bool:
    """Text copied from the prompt's worked example onto a chunk that does not say it."""
    return token_f1(item, example) >= 0.8 and not contains_quote(example, chunk)


def qa_drop_reason(qa: dict, chunk: str, example_qa: dict, glossary: rules.Glossary | None = None) -> str | None:
    """Why a question/answer pair is dropped before verification (None: keep)."""
    q, a, ev = qa.get("question", ""), qa.get("answer", ""), qa.get("evidence", "")
    if any(repetition_loop(x) for x in (q, a, ev)):
        return "repetition_loop"
    if copies_example(q, example_qa["question"], chunk) or copies_example(a, example_qa["answer"], chunk):
        return "example_copy"
    if restates_question(q, a):
        return "restates_question"
    if not contains_quote(ev, chunk):
        return "quote_not_in_chunk"
    return unsupported_in_answer(a, ev, glossary)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text) if s.strip()]


def _names(text: str) -> set[str]:
    """Network functions, interfaces, timers, releases: AMF, QoS, N1, T310, 5G."""
    return {t.lower() for t in _TOKEN.findall(text)
            if sum(c.isupper() for c in t) >= 2 or (any(c.isdigit() for c in t) and any(c.isalpha() for c in t))}


def whole_sentences(text: str) -> str:
    """``text`` up to its last sentence end: a summary cut by the schema's length limit would
    otherwise teach the model to stop mid-sentence ("... for a fictional NR feature set. The UE is")."""
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", text)]
    return text[:ends[-1]] if ends else ""


def summary_supported(summary: str, chunk: str) -> bool:
    """Each sentence of the summary is backed by one sentence of the chunk: every name it uses and
    at least 60 % of its content words. Overlap with the whole chunk let a summary swap roles
    between names ("the NRF provides policy rules for QoS control" from "the PCF provides policy
    rules for QoS control ... through the NRF")."""
    backing = [(set(tokens(s)), _names(s)) for s in _sentences(chunk)]

    def backed(sentence: str) -> bool:
        words, names = content(sentence), _names(sentence)
        return bool(words) and any(names <= n and sum(w in have for w in words) / len(words) >= 0.6
                                   for have, n in backing)

    parts = _sentences(summary)
    return bool(parts) and all(backed(s) for s in parts)


def entity_in_chunk(name: str, chunk: str) -> bool:
    return bool(name.strip()) and contains_quote(name, chunk, 1)


def acronym_supported(acronym: str, expansion: str, chunk: str, glossary: rules.Glossary | None) -> bool:
    """The acronym occurs in the chunk, and its expansion is the document's or is in the chunk
    and can spell it."""
    from components.llm.extraction import expands

    if not re.search(rf"(?<![\w-]){re.escape(acronym)}(?![\w-])", chunk):
        return False
    known = glossary.expansion(acronym) if glossary else None
    if known is not None:
        return _key(known) == _key(expansion)
    return contains_quote(expansion, chunk, 1) and expands(acronym, expansion)


def _key(s: str) -> str:
    return " ".join(tokens(s))
