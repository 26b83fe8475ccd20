"""How the base and the tuned model are scored on the same prompts: token F1 and exact match on
held-out answers, and multiple choice, from a TeleQnA-format file or generated from the held-out
split with glossary distractors.

TeleQnA format: a JSON object ``{"question N": {"question", "option 1" .. "option 5", "answer":
"option k: text", "explanation", "category"}}``; questions may have 2 to 5 options.
"""
from __future__ import annotations

import json
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from components.settings import Settings

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
MCQ_SYSTEM = "You are a telecom standards assistant. Answer multiple-choice questions with the number of the correct option."


class EvaluateConfig(Settings):
    """``evaluate`` group."""

    max_examples: int = Field(24, ge=0)  # held-out Q&A answered by base and tuned
    max_tokens: int = Field(48, ge=1)
    samples: int = Field(8, ge=0)  # rows of the base-vs-tuned samples table in eval.json
    mcq_path: str | None = None  # a TeleQnA-format JSON file; null: generated MCQ only
    mcq_max_questions: int | None = Field(100, ge=1)
    mcq_max_tokens: int = Field(24, ge=1)
    generated_mcq: bool = True  # MCQ from the held-out split, glossary distractors
    generated_options: int = Field(4, ge=2, le=5)
    seed: int = 0


class MCQError(ValueError):
    """A multiple-choice file is malformed; the message names the file and the question."""


@dataclass(frozen=True)
class MCQ:
    id: str
    question: str
    options: tuple[str, ...]
    answer: int  # 1-based
    category: str = "uncategorised"
    explanation: str = ""

    def messages(self) -> list[dict]:
        opts = "\n".join(f"option {i}: {o}" for i, o in enumerate(self.options, 1))
        return [{"role": "system", "content": MCQ_SYSTEM},
                {"role": "user", "content": f"{self.question}\n\n{opts}\n\n"
                                            f"Answer with the option number (1-{len(self.options)}) only."}]


def normalize(s: str) -> str:
    return " ".join(_PUNCT.sub(" ", s.lower()).split())


def token_f1(pred: str, gold: str) -> float:
    p, g = normalize(pred).split(), normalize(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum(min(p.count(w), g.count(w)) for w in set(p))
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(g)
    return 2 * prec * rec / (prec + rec)


def load_teleqna(path: str | Path) -> list[MCQ]:
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MCQError(f"{path}: multiple-choice file not found (evaluate.mcq_path)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MCQError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise MCQError(f"{path}: expected a JSON object of \"question N\": {{...}} entries")
    out = []
    for key, q in data.items():
        where = f"{path}: {key!r}"
        if not isinstance(q, dict) or not isinstance(q.get("question"), str):
            raise MCQError(f"{where}: needs a \"question\" string")
        options = []
        for i in range(1, 6):
            opt = q.get(f"option {i}")
            if opt is None:
                break
            options.append(str(opt))
        if len(options) < 2:
            raise MCQError(f"{where}: needs \"option 1\" and \"option 2\" at least")
        m = re.match(r"\s*option\s*(\d)\s*:?", str(q.get("answer", "")), re.I)
        if not m or not 1 <= int(m.group(1)) <= len(options):
            raise MCQError(f"{where}: \"answer\" must read \"option k: text\" with k in 1..{len(options)} "
                           f"(got {q.get('answer')!r})")
        out.append(MCQ(id=str(key), question=q["question"], options=tuple(options), answer=int(m.group(1)),
                       category=str(q.get("category") or "uncategorised"),
                       explanation=str(q.get("explanation") or "")))
    return out


_STRICT = re.compile(r"(?:the\s+)?(?:correct\s+)?(?:answer\s*(?:is)?\s*:?\s*)?(?:option\s*)?\(?([1-9])\)?"
                     r"(?:\s*[:.)\-](?!\d)\s*.*)?", re.I | re.S)
_NUMBER = re.compile(r"(?:option\s*|\b)([1-9])\b(?![\w.,]*\d)", re.I)


def parse_strict(reply: str, n_options: int) -> int | None:
    """The option a reply names when it is nothing but an option number (optionally followed by
    that option's text): ``3``, ``option 3``, ``3: text``, ``The answer is option 3.``"""
    m = _STRICT.fullmatch(reply.strip())
    if m and 1 <= int(m.group(1)) <= n_options:
        return int(m.group(1))
    return None


def parse_lenient(reply: str, options: tuple[str, ...]) -> int | None:
    """The first option number in the reply, else the option whose text the reply matches."""
    for m in _NUMBER.finditer(reply):
        k = int(m.group(1))
        if 1 <= k <= len(options):
            return k
    said = normalize(reply)
    if not said:
        return None
    hits = [i for i, o in enumerate(options, 1) if normalize(o) and normalize(o) in said]
    if hits:  # the longest option the reply contains
        return max(hits, key=lambda i: len(normalize(options[i - 1])))
    hits = [i for i, o in enumerate(options, 1) if normalize(o) and said in normalize(o)]
    return hits[0] if len(hits) == 1 else None


def score_mcq(questions: list[MCQ], replies: list[str]) -> dict:
    """Accuracy (strict and lenient), strict parse failures, per category, and the rows."""
    rows, cats = [], {}
    for q, r in zip(questions, replies):
        s, l = parse_strict(r, len(q.options)), parse_lenient(r, q.options)
        rows.append({"id": q.id, "category": q.category, "answer": q.answer, "reply": r,
                     "strict": s, "lenient": l, "correct_strict": s == q.answer,
                     "correct_lenient": l == q.answer})
        c = cats.setdefault(q.category, {"n": 0, "strict": 0, "lenient": 0})
        c["n"] += 1
        c["strict"] += s == q.answer
        c["lenient"] += l == q.answer
    n = len(rows)

    def rate(key):
        return round(sum(r[key] for r in rows) / n, 4) if n else 0.0

    return {"n": n, "accuracy": rate("correct_lenient"), "strict_accuracy": rate("correct_strict"),
            "strict_parse_failure_rate": round(sum(r["strict"] is None for r in rows) / n, 4) if n else 0.0,
            "per_category": {k: {"n": v["n"], "accuracy": round(v["lenient"] / v["n"], 4),
                                 "strict_accuracy": round(v["strict"] / v["n"], 4)}
                             for k, v in sorted(cats.items())},
            "rows": rows}


_STANDS_FOR = re.compile(r"^(?P<acr>\S+) stands for (?P<exp>.+?)\.?$")


def generated_mcq(test_rows: list[dict], pool_rows: list[dict], glossary: list[dict],
                  n_options: int = 4, seed: int = 0, limit: int | None = None) -> list[MCQ]:
    """Multiple choice from held-out examples: the right answer among distractors of the same kind.

    An acronym's distractors are other expansions from the glossary of the same document, then of
    any document, then other acronym answers in the dataset; a Q&A's are other Q&A answers.
    ``pool_rows``: every split's rows (the chat format of dataset/*.jsonl).
    """
    rng = random.Random(seed)

    def qa(row):
        msgs = row["messages"]
        return msgs[-2]["content"], msgs[-1]["content"], (row.get("meta") or {})

    by_doc: dict[str, list[str]] = {}
    for g in glossary:
        if g.get("expansion"):
            by_doc.setdefault(str(g.get("doc_id")), []).append(g["expansion"].strip())
    acr_answers, qa_answers = [], []
    for row in pool_rows:
        _, ans, meta = qa(row)
        m = _STANDS_FOR.match(ans)
        if meta.get("kind") == "acronym" and m:
            acr_answers.append(m.group("exp"))
        elif meta.get("kind") != "acronym":
            qa_answers.append(ans)
    out = []
    for i, row in enumerate(test_rows):
        question, answer, meta = qa(row)
        m = _STANDS_FOR.match(answer)
        if meta.get("kind") == "acronym" and m:
            right = m.group("exp")
            doc = by_doc.get(str(meta.get("doc_id")), [])
            others = [e for e in by_doc.values() for e in e]
            candidates = [doc, others, acr_answers]
            category = "generated: acronym"
        else:
            right = answer
            candidates = [qa_answers]
            category = "generated: qa"
        chosen: list[str] = []
        seen = {normalize(right)}
        for group in candidates:
            group = sorted(set(group))
            rng.shuffle(group)
            for c in group:
                if len(chosen) == n_options - 1:
                    break
                if normalize(c) not in seen:
                    seen.add(normalize(c))
                    chosen.append(c)
        if len(chosen) < n_options - 1:
            continue  # not enough distinct distractors
        options = chosen + [right]
        rng.shuffle(options)
        out.append(MCQ(id=f"generated {i + 1}", question=question, options=tuple(options),
                       answer=options.index(right) + 1, category=category))
        if limit is not None and len(out) >= limit:
            break
    return out
