"""Fine-tuning examples from extractions: which examples a chunk supports, and a split by document
so a document's facts never sit on both sides of the train/held-out line."""
from __future__ import annotations

import hashlib

from pydantic import Field

from components.llm.extraction import rule_acronyms
from components.settings import Settings


class DatasetConfig(Settings):
    """``dataset`` group."""

    system_prompt: str = "You are a telecom standards assistant. Answer precisely and concisely."
    valid_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    require_grounded: bool = True  # drop Q&A whose answer is not supported by the source chunk
    min_answer_chars: int = Field(2, ge=0)


def examples_from(record: dict, chunk: dict | None, require_grounded: bool,
                  min_answer_chars: int) -> list[dict]:
    """(question, answer, kind) triples one chunk and its extraction support."""
    out = []
    acronyms = rule_acronyms(chunk) if chunk else []
    if record.get("status") == "ok":
        g = record["grounding"]
        acronyms += g["acronyms"] if require_grounded else record["extraction"]["acronyms"]
        qa = record["extraction"]["qa"]
        if (g["qa_grounded"] or not require_grounded) and len(qa["answer"].strip()) >= min_answer_chars:
            out.append({"question": qa["question"].strip(), "answer": qa["answer"].strip(), "kind": "qa"})
    seen = set()
    for a in acronyms:
        key = (a["acronym"], a["expansion"].lower())
        if key in seen:
            continue
        seen.add(key)
        out.append({"question": f"In 3GPP terminology, what does {a['acronym']} stand for?",
                    "answer": f"{a['acronym']} stands for {a['expansion']}.", "kind": "acronym"})
    return out


def split_docs(counts: dict[str, int], valid_fraction: float, test_fraction: float, seed: int,
               min_per_split: int) -> dict[str, str]:
    """Assign whole documents to splits, each to the split furthest below its share of examples
    (largest documents first), then make sure held-out splits reach ``min_per_split``."""
    total = sum(counts.values())
    target = {"train": total * (1 - valid_fraction - test_fraction),
              "valid": total * valid_fraction, "test": total * test_fraction}
    tiebreak = {d: hashlib.sha256(f"{seed}:{d}".encode()).hexdigest() for d in counts}
    have = dict.fromkeys(target, 0)
    assign: dict[str, str] = {}
    for d in sorted(counts, key=lambda d: (-counts[d], tiebreak[d])):
        split = max(target, key=lambda s: target[s] - have[s])
        assign[d] = split
        have[split] += counts[d]
    for split in ("valid", "test"):
        while have[split] < min_per_split:
            donors = sorted((d for d, s in assign.items() if s == "train"),
                            key=lambda d: (counts[d], tiebreak[d]))
            if len(donors) <= 1:
                break
            assign[donors[0]] = split
            have[split] += counts[donors[0]]
            have["train"] -= counts[donors[0]]
    return assign
