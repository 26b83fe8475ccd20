"""dataset: ``extractions.jsonl`` + ``chunks.jsonl`` -> ``dataset/{train,valid,test}.jsonl``.

Examples are the model's grounded Q&A and acronyms plus acronyms parsed by rule from
Abbreviations sections, in mlx-lm's chat format.

Split by document, so a document's facts never sit on both sides of the train/held-out line, and
any example that also appears in train is dropped from the held-out splits.
"""
from __future__ import annotations

import hashlib
import logging

from components.files import build_dir, read_jsonl, write_jsonl
from runner.stage import StageContext, StageError

log = logging.getLogger(__name__)

INPUTS = ["extractions.jsonl", "chunks.jsonl"]
OUTPUTS = ["dataset"]
CONFIG_KEYS = ["dataset"]


def examples_from(record: dict, chunk: dict | None, require_grounded: bool,
                  min_answer_chars: int) -> list[dict]:
    """(question, answer, kind) triples one chunk and its extraction support."""
    from components.llm.extraction import rule_acronyms

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


def run(ctx: StageContext) -> dict[str, float]:
    cfg = ctx.cfg.dataset
    records = read_jsonl(ctx.path("extractions.jsonl"))
    chunks = {c["id"]: c for c in read_jsonl(ctx.path("chunks.jsonl"))}
    per_doc: dict[str, list[dict]] = {}
    for r in records:
        per_doc.setdefault(r["doc_id"], []).extend(
            examples_from(r, chunks.get(r["chunk_id"]), cfg.require_grounded, cfg.min_answer_chars))
    per_doc = {d: ex for d, ex in per_doc.items() if ex}
    if len(per_doc) < 3:
        raise StageError(f"dataset: examples came from {len(per_doc)} document(s); a split by "
                         "document needs at least 3 (add documents or set "
                         "dataset.require_grounded=false)")
    min_split = int(ctx.cfg.lora.batch_size) if "lora" in ctx.cfg else 1
    assign = split_docs({d: len(v) for d, v in per_doc.items()}, cfg.valid_fraction,
                        cfg.test_fraction, cfg.seed, min_split)
    splits: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    for d in sorted(per_doc):
        for e in per_doc[d]:
            splits[assign[d]].append({**e, "doc_id": d})

    def dedup(rows, exclude=frozenset()):
        seen, out = set(exclude), []
        for e in rows:
            key = (e["question"].lower(), e["answer"].lower())
            if key not in seen:
                seen.add(key)
                out.append(e)
        return out

    splits["train"] = dedup(splits["train"])
    train_keys = frozenset((e["question"].lower(), e["answer"].lower()) for e in splits["train"])
    for s in ("valid", "test"):
        splits[s] = dedup(splits[s], train_keys)
    for s, rows in splits.items():
        if len(rows) < min_split:
            raise StageError(f"dataset: the {s} split has {len(rows)} examples, fewer than the "
                             f"batch size {min_split}; add documents or lower lora.batch_size")

    sys_msg = cfg.system_prompt
    with build_dir(ctx.path("dataset")) as tmp:
        for s, rows in splits.items():
            write_jsonl(tmp / f"{s}.jsonl", (
                {"messages": [{"role": "system", "content": sys_msg},
                              {"role": "user", "content": e["question"]},
                              {"role": "assistant", "content": e["answer"]}],
                 "meta": {"doc_id": e["doc_id"], "kind": e["kind"]}} for e in rows))
    n = {s: len(r) for s, r in splits.items()}
    return {"dataset/train": n["train"], "dataset/valid": n["valid"], "dataset/test": n["test"],
            "dataset/qa": sum(e["kind"] == "qa" for r in splits.values() for e in r),
            "dataset/acronym": sum(e["kind"] == "acronym" for r in splits.values() for e in r),
            "dataset/documents": len(per_doc)}
