"""The facts a run teaches, the words it teaches them in, and the probes that test them.

A fact is one thing a document states: an acronym and its expansion, a term and its definition,
a clause of a specification and its title, a grounded question and its answer. Rewording a fact
several ways teaches it far better than repeating one wording, so each trained fact appears in
``phrasings`` training phrasings (both directions where that makes sense: what X stands for,
which abbreviation is used for Y) plus a multiple-choice phrasing answered with an option
number, so the tuned model keeps answering multiple choice with a number.

Two wordings per kind are never trained: the *validation probe* (checkpoint selection) and the
*test probe* (the evaluation). A probe is a multiple-choice question scored by the
log-likelihood of each option, its distractors drawn from facts of the same kind in the same
set, so a model cannot win by preferring answers it has merely seen, and the most plausible
first (an acronym's distractors are the expansions whose initials come closest to spelling it),
so matching letters alone does not find the answer. A seeded, per-kind share
of the facts (``unseen_fraction``) is kept out of training altogether: the control for
forgetting. Rows of other kinds that state an unseen fact are dropped, so nothing leaks it.
"""
from __future__ import annotations

import difflib
import hashlib
import random
import re
from dataclasses import asdict, dataclass

from components.llm import rules
from components.mcq import MCQ, normalize

KINDS = ("acronym", "definition", "spec_clause", "qa")
SETS = ("trained", "unseen")
# Clause titles that are not subject matter: no "what does clause 2 cover? References".
NOT_TOPICS = {"scope", "references", "foreword", "introduction", "definitions", "abbreviations",
              "symbols", "terms", "general", "definitions, symbols and abbreviations",
              "definitions and abbreviations", "terms and definitions", "change history",
              "history", "modal verbs terminology", "intellectual property rights"}


@dataclass(frozen=True)
class Fact:
    kind: str  # acronym | definition | spec_clause | qa
    key: str  # the acronym, the term, the clause number, the question
    value: str  # the expansion, the definition, the clause title, the answer
    where: str  # "TS 38.899", or a document's title
    doc_id: str
    chunk_id: str
    clause: str
    source: str  # "rule" or the model that proposed it

    @property
    def id(self) -> str:
        return hashlib.sha256(f"{self.kind}|{self.where if self.kind == 'spec_clause' else ''}|"
                              f"{self.key.lower()}|{normalize(self.value)}".encode()).hexdigest()[:12]


# (question, answer) templates; fields: k (key), v (value), V (value capitalised), w (where).
# "fwd" asks for the value, "rev" for the key.
PHRASINGS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "acronym": {
        "fwd": [("What does {k} stand for in telecom specifications?", "{k} stands for {v}."),
                ("Expand the abbreviation {k}.", "{V}."),
                ("What is {k} short for in {w}?", "In {w}, {k} is short for {v}."),
                ("Spell out {k}.", "{k}: {v}.")],
        "rev": [("What is the abbreviation for {v}?", "{V} is abbreviated as {k}."),
                ("Which acronym do the specifications use for {v}?", "{k}."),
                ("How is {v} abbreviated in {w}?", "As {k}.")],
    },
    "definition": {
        "fwd": [("Define the term \"{k}\" as used in telecom specifications.", "{V}"),
                ("What is meant by {k} in {w}?", "In {w}, {k} means {v}"),
                ("Explain the term {k}.", "{k}: {v}")],
        "rev": [("Which term do the specifications define as \"{v}\"?", "{k}."),
                ("Name the term with this definition: {v}", "That is the definition of {k}.")],
    },
    "spec_clause": {
        "fwd": [("What does clause {k} of {w} cover?", "Clause {k} of {w} covers {v}."),
                ("What is the title of clause {k} in {w}?", "{V}."),
                ("Name the subject of {w} clause {k}.", "{w} clause {k} is about {v}.")],
        "rev": [("Which specification and clause cover {v}?", "{w}, clause {k} ({v})."),
                ("Where in {w} is {v} specified?", "In clause {k}.")],
    },
    "qa": {
        "fwd": [("{k}", "{v}"),
                ("According to {w}: {k}", "{v}"),
                ("{k} Answer from {w}.", "{v}")],
        "rev": [],
    },
}
# Multiple choice in training (answered with the option number), one question per kind.
MCQ_QUESTIONS = {"acronym": "Which option is the expansion of {k}?",
                 "definition": "Which option is the definition of {k}?",
                 "spec_clause": "Which option is the title of clause {k} of {w}?",
                 "qa": "{k}"}
# Never trained: the validation probe (checkpoint selection) and the test probe (evaluation).
# The option text is the continuation scored after the question.
PROBES = {
    "acronym": {"valid": "What is the full form of the abbreviation {k}?",
                "test": "In the specifications, the abbreviation {k} refers to which term?"},
    "definition": {"valid": "What does the term {k} denote?",
                   "test": "How is {k} defined in the specifications?"},
    "spec_clause": {"valid": "Which topic is treated in clause {k} of {w}?",
                    "test": "In {w}, what is clause {k} about?"},
    "qa": {"valid": "Based on {w}: {k}", "test": "A question on {w}. {k}"},
}


def _fill(template: str, f: Fact) -> str:
    v = f.value.rstrip(".") if f.kind in ("acronym", "spec_clause") else f.value
    return template.format(k=f.key, v=v, V=v[:1].upper() + v[1:], w=f.where)


def clause_title(rec: dict) -> str:
    return rules.clause_title({"section_path": rec.get("section_path") or []})


def where(rec: dict) -> str:
    return rec.get("spec") or (rec.get("rules") or {}).get("doc_title") or rec["doc_id"]


def facts_from_records(records: list[dict], min_answer_chars: int = 2) -> list[Fact]:
    """Every distinct fact the extraction records state, in record order."""
    out: dict[tuple, Fact] = {}

    def add(dedup: tuple, fact: Fact) -> None:
        out.setdefault(dedup, fact)

    for rec in records:
        res = rec.get("result")
        if not res:
            continue
        w, doc, chunk, clause = where(rec), rec["doc_id"], rec["chunk_id"], rec.get("clause") or ""
        for a in res.get("acronyms", []):
            exp = " ".join(a["expansion"].split())
            add(("acronym", a["acronym"], normalize(exp)),
                Fact("acronym", a["acronym"], exp, w, doc, chunk, clause, a.get("origin", "rule")))
        for d in res.get("definitions", []):
            text = " ".join(d["definition"].split())
            add(("definition", d["term"].lower()),
                Fact("definition", d["term"], text, w, doc, chunk, clause, d.get("origin", "rule")))
        for q in res.get("qa", []):
            if len(q["answer"].strip()) < min_answer_chars:
                continue
            add(("qa", normalize(q["question"])),
                Fact("qa", q["question"].strip(), q["answer"].strip(), w, doc, chunk, clause,
                     q.get("origin", "model")))
        title = clause_title(rec)
        if (title and clause and title != clause and title.lower() not in NOT_TOPICS
                and not rec.get("skip") and re.fullmatch(r"[0-9A-Z][0-9.]*", clause)):
            add(("spec_clause", w, clause), Fact("spec_clause", clause, title, w, doc, chunk, clause, "rule"))
    return list(out.values())


def _u(seed: int, key: str) -> float:
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / float(16 ** 12)


def assign(facts: list[Fact], unseen_fraction: float, seed: int) -> dict[str, str]:
    """fact id -> "trained" | "unseen": per kind, the ``unseen_fraction`` share with the lowest
    seeded hash is kept out of training (rounded, and never every fact of a kind)."""
    out = {}
    for kind in KINDS:
        ids = sorted({f.id for f in facts if f.kind == kind}, key=lambda i: _u(seed, i))
        k = min(round(unseen_fraction * len(ids)), max(0, len(ids) - 1))
        for n, i in enumerate(ids):
            out[i] = "unseen" if n < k else "trained"
    return out


_STOP = {"of", "and", "for", "the", "to", "in", "on", "a", "an", "with", "by", "or", "plus"}


def _initials(text: str) -> str:
    return "".join(w[0] for w in re.findall(r"[A-Za-z0-9]+", text) if w.lower() not in _STOP).lower()


def _likeness(f: Fact, value: str) -> float:
    """How much a wrong value looks right: for an acronym, how well its initials spell the
    acronym (so letter matching alone cannot find the answer); clause titles of the same
    document come first."""
    if f.kind == "acronym":
        return difflib.SequenceMatcher(None, re.sub(r"[^a-z0-9]", "", f.key.lower()), _initials(value)).ratio()
    return 0.0


def _distractors(f: Fact, pool: list[Fact], n: int, rng: random.Random) -> list[str]:
    """Up to ``n`` values of other facts of the same kind that are not also right for ``f``'s
    key, the most plausible first (see ``_likeness``)."""
    wrong_for_key = {normalize(g.value) for g in pool if g.key.lower() == f.key.lower() and g.where == f.where
                     or (g.key.lower() == f.key.lower() and f.kind == "acronym")}
    wrong_for_key.add(normalize(f.value))
    cands = sorted({g.value for g in pool if g.kind == f.kind and normalize(g.value) not in wrong_for_key
                    and normalize(g.value)})
    rng.shuffle(cands)
    same = {g.value for g in pool if g.where == f.where} if f.kind == "spec_clause" else set()
    cands.sort(key=lambda v: (v not in same, -_likeness(f, v)))
    chosen, seen = [], set()
    for c in cands:
        if len(chosen) == n:
            break
        if normalize(c) not in seen:
            seen.add(normalize(c))
            chosen.append(c)
    return chosen


def _options(f: Fact, pool: list[Fact], n_options: int, rng: random.Random) -> tuple[list[str], int] | None:
    wrong = _distractors(f, pool, n_options - 1, rng)
    if not wrong:
        return None
    right = f.value.rstrip(".") if f.kind in ("acronym", "spec_clause") else f.value
    opts = wrong + [right]
    rng.shuffle(opts)
    return opts, opts.index(right) + 1


def training_rows(f: Fact, pool: list[Fact], phrasings: int, n_options: int, seed: int,
                  mcq: bool = True) -> list[dict]:
    """``phrasings`` (question, answer) rows for one fact, alternating directions where the kind
    has both, plus one multiple-choice row answered with the option number."""
    rng = random.Random(f"{seed}:{f.id}")
    fwd, rev = list(PHRASINGS[f.kind]["fwd"]), list(PHRASINGS[f.kind]["rev"])
    rng.shuffle(fwd)
    rng.shuffle(rev)
    order = [t for pair in zip(fwd, rev) for t in pair] + fwd[len(rev):] + rev[len(fwd):]
    order = [fwd[0]] + [t for t in order if t is not fwd[0]]  # the plain question always
    rows = [{"question": _fill(q, f), "answer": _fill(a, f), "phrasing": i}
            for i, (q, a) in enumerate(order[:phrasings])]
    if mcq:
        opts = _options(f, pool, n_options, rng)
        if opts:
            m = MCQ(f.id, _fill(MCQ_QUESTIONS[f.kind], f), tuple(opts[0]), opts[1], f.kind)
            rows.append({"question": m.user_text(), "answer": str(m.answer), "phrasing": "mcq",
                         "system": "mcq"})
    return rows


def probe_question(f: Fact, split: str) -> str:
    return _fill(PROBES[f.kind][split], f)


def probe_answer(f: Fact) -> str:
    return _fill("{V}", f)


def probe(f: Fact, split: str, pool: list[Fact], n_options: int, seed: int) -> dict | None:
    """The never-trained multiple-choice probe of one fact (``split``: valid or test), or None
    when its set has no other fact of its kind to draw a distractor from."""
    rng = random.Random(f"{seed}:{split}:{f.id}")
    opts = _options(f, pool, n_options, rng)
    if not opts:
        return None
    return {"id": f"{split}:{f.id}", "fact_id": f.id, "kind": f.kind, "split": split,
            "question": probe_question(f, split), "options": opts[0], "answer": opts[1],
            "fact": asdict(f)}


def _needles(f: Fact) -> list[re.Pattern]:
    """What a text must all contain to state the fact."""
    def phrase(s: str) -> re.Pattern:
        return re.compile(r"(?<![0-9A-Za-z])" + r"\W+".join(map(re.escape, s.split())) + r"(?![0-9A-Za-z])", re.I)

    if f.kind == "acronym":
        return [re.compile(r"(?<![0-9A-Za-z])" + re.escape(f.key) + r"(?![0-9A-Za-z])"), phrase(f.value)]
    if f.kind == "definition":
        return [phrase(f.key), phrase(" ".join(f.value.split()[:8]))]
    if f.kind == "spec_clause":
        return [phrase(f.value), re.compile(r"(?<![0-9.])" + re.escape(f.key) + r"(?![0-9])")]
    return [phrase(f.value)]


class LeakCheck:
    """Does a text state any of the given facts?"""

    def __init__(self, facts: list[Fact]) -> None:
        self._needles = [(f, _needles(f)) for f in facts]

    def __call__(self, text: str) -> Fact | None:
        for f, needles in self._needles:
            if all(n.search(text) for n in needles):
                return f
        return None
