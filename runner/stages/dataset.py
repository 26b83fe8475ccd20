"""dataset: ``extractions.jsonl`` + ``chunks.jsonl`` -> ``dataset/{train,valid,test}.jsonl``.

Examples are the model's grounded Q&A and acronyms plus acronyms parsed by rule from
Abbreviations sections, in mlx-lm's chat format.

Split by document, so a document's facts never sit on both sides of the train/held-out line, and
any example that also appears in train is dropped from the held-out splits.
"""
from __future__ import annotations

import logging

from components.dataset import examples_from, split_docs
from components.files import build_dir, read_jsonl, write_jsonl
from runner.config import build
from runner.stage import StageContext, StageError

log = logging.getLogger(__name__)

INPUTS = ["extractions.jsonl", "chunks.jsonl"]
OUTPUTS = ["dataset"]
# The held-out splits must fill one training batch.
CONFIG = ["dataset", "lora.batch_size"]


def run(ctx: StageContext) -> dict[str, float]:
    cfg = build(ctx.cfg.dataset, "dataset")
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
    min_split = int(ctx.cfg.lora.batch_size)
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
