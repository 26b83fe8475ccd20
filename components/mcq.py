"""Multiple-choice questions: the TeleQnA file format, the chat prompt a model answers in, and
reading an option number out of generated text (the secondary, generative score).

TeleQnA format: a JSON object ``{"question N": {"question", "option 1" .. "option 5", "answer":
"option k: text", "explanation", "category"}}``; questions may have 2 to 5 options.
"""
from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from pathlib import Path

SYSTEM = "You are a telecom standards assistant. Answer multiple-choice questions with the number of the correct option."
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


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

    @classmethod
    def from_probe(cls, p: dict) -> "MCQ":
        """A knowledge probe (a row of ``dataset/probes.jsonl``); its kind is its category."""
        return cls(p["id"], p["question"], tuple(p["options"]), int(p["answer"]), p["kind"])

    def user_text(self) -> str:
        opts = "\n".join(f"option {i}: {o}" for i, o in enumerate(self.options, 1))
        return f"{self.question}\n\n{opts}\n\nAnswer with the option number (1-{len(self.options)}) only."

    def messages(self) -> list[dict]:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": self.user_text()}]


def normalize(s: str) -> str:
    return " ".join(_PUNCT.sub(" ", s.lower()).split())


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


def score_generated(questions: list[MCQ], replies: list[str]) -> dict:
    """Generated replies read as option numbers: accuracy (strict and lenient), strict parse
    failures, per category, and the rows."""
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
