"""dataset: ``extractions.jsonl`` + ``chunks.jsonl`` -> ``dataset/``.

``dataset/{train,valid,test}.jsonl`` in ``dataset.format`` (mlx-lm's chat, completions or text),
``dataset/probes.jsonl`` (the never-trained knowledge probes of every fact, trained and unseen),
``dataset/exports/<format>/`` for each of ``dataset.exports``, ``dataset/README.md`` (the card)
and ``dataset/sample.jsonl``; the card and the sample also go to MLflow. Any corpus with a usable
example makes a dataset (see ``components.dataset`` for the facts, the probes and the split).
"""
from __future__ import annotations

import logging
from collections import Counter

from components import dataset as D
from components import knowledge as K
from components.files import build_dir, read_jsonl, write_jsonl, write_text
from components.llm import record
from runner.stage import StageContext, StageError

log = logging.getLogger(__name__)

INPUTS = ["extractions.jsonl", "chunks.jsonl"]
OUTPUTS = ["dataset"]
# The held-out splits should fill one training batch; rows must fit the trainer's sequence
# length, counted with the base model's tokenizer; the unseen share is the evaluation's control.
CONFIG = ["dataset", "lora.batch_size", "lora.max_seq_length", "model", "cache_dir",
          "evaluate.unseen_fraction"]


def _tokenizer(ctx: StageContext):
    from transformers import AutoTokenizer

    model_dir = ctx.component("model").local_dir(ctx.cfg.cache_dir)
    return AutoTokenizer.from_pretrained(str(model_dir))


def run(ctx: StageContext) -> dict[str, float]:
    cfg = ctx.component("dataset")
    unseen_fraction = float(ctx.cfg.evaluate.unseen_fraction)
    try:
        records = record.read(ctx.path("extractions.jsonl"))
    except record.RecordError as exc:
        raise StageError(f"dataset: {exc}") from None
    chunks = {c["id"]: c for c in read_jsonl(ctx.path("chunks.jsonl"))}
    facts = K.facts_from_records(records, cfg.min_answer_chars)
    documents = D.document_examples(records, chunks, cfg)
    dropped: Counter = Counter()
    for e in documents + [{"kind": f.kind} for f in facts]:
        if cfg.mixture.get(e["kind"], 0.0) <= 0:
            dropped[f"kind_{e['kind']}_weight_0"] += 1
    facts = [f for f in facts if cfg.mixture.get(f.kind, 0.0) > 0]
    documents = [e for e in documents if cfg.mixture.get(e["kind"], 0.0) > 0]
    if not facts and not documents:
        raise StageError(
            f"dataset: the {len(records)} extraction record(s) support no example (no glossary "
            "entry, no verified Q&A, no clause with a title). Add documents with an Abbreviations "
            "or Definitions clause, or run the extract stage with extraction.extractor=hybrid")
    sets = K.assign(facts, unseen_fraction, cfg.seed)
    min_split = int(ctx.cfg.lora.batch_size)
    splits, how = D.split(documents, cfg, min_split) if documents else ({s: [] for s in D.SPLITS}, "none")
    if how not in ("document", "none"):
        log.warning("dataset: %d document(s), fewer than %d splits: split by %s within the "
                    "documents (see dataset/README.md)", len({e["doc_id"] for e in documents}),
                    len(D.SPLITS), how)
    dropped += D.drop_duplicates(splits, cfg)
    splits["train"], leaks = D.drop_leaks(splits["train"], [f for f in facts if sets[f.id] == "unseen"])
    if leaks:
        dropped["train_states_an_unseen_fact"] += leaks
    for s, rows in D.fact_examples(facts, sets, cfg).items():
        splits[s] = rows + splits[s]
    splits["train"] = D.mix(splits["train"], cfg.mixture, cfg.seed)
    dropped += D.fit_length(splits, cfg.format, cfg.system_prompt, D.token_counter(_tokenizer(ctx)),
                            int(ctx.cfg.lora.max_seq_length))
    probes, no_probe = D.probes(facts, sets, cfg)
    for k, v in no_probe.items():
        dropped[f"no_probe_{k}"] += v
    for s, rows in splits.items():
        if len(rows) < min_split:
            log.warning("dataset: the %s split has %d example(s), fewer than lora.batch_size=%d; "
                        "add documents or lower lora.batch_size", s, len(rows), min_split)

    models = sorted({(r.get("llm") or {}).get("model") for r in records} - {None})
    extraction_drops: Counter = Counter()
    skipped: Counter = Counter()
    for r in records:
        extraction_drops.update((r.get("llm") or {}).get("dropped") or {})
        if r.get("skip"):
            skipped[r["skip"]] += 1
    with build_dir(ctx.path("dataset")) as tmp:
        for s, rows in splits.items():
            write_jsonl(tmp / f"{s}.jsonl", (D.render(e, cfg.format, cfg.system_prompt) for e in rows))
            for fmt in cfg.exports:
                (tmp / "exports" / fmt).mkdir(parents=True, exist_ok=True)
                write_jsonl(tmp / "exports" / fmt / f"{s}.jsonl",
                            (D.render(e, fmt, cfg.system_prompt) for e in rows))
        write_jsonl(tmp / "probes.jsonl", probes)
        write_text(tmp / "README.md", D.card(splits, how, cfg, models, extraction_drops, dropped, skipped,
                                             D.knowledge_lines(facts, sets, probes, cfg, unseen_fraction)))
        by_kind: dict[str, dict] = {}
        for e in splits["train"]:
            by_kind.setdefault(e["kind"], e)
        sample = list(by_kind.values()) + [e for e in splits["train"] if e not in by_kind.values()]
        write_jsonl(tmp / "sample.jsonl", (D.render(e, cfg.format, cfg.system_prompt)
                                           for e in sample[: cfg.sample_size]))
    ctx.tracker.log_artifact(ctx.path("dataset") / "README.md", "dataset")
    ctx.tracker.log_artifact(ctx.path("dataset") / "sample.jsonl", "dataset")

    every = [e for rows in splits.values() for e in rows]
    kinds = Counter(e["kind"] for e in every)
    sources = Counter("rule" if e["source"] == "rule" else "llm" for e in every)
    metrics = {f"dataset/{s}": float(len(rows)) for s, rows in splits.items()}
    metrics.update({f"dataset/{k}": float(kinds.get(k, 0)) for k in D.KINDS})
    metrics.update({f"dataset/source_{k}": float(v) for k, v in sources.items()})
    metrics.update({f"dataset/dropped_{k}": float(v) for k, v in dropped.items()})
    metrics.update({"dataset/documents": float(len({e["doc_id"] for e in every})),
                    "dataset/split_by_document": float(how == "document"),
                    "dataset/near_duplicates": float(dropped.get("near_duplicates", 0)),
                    "dataset/facts": float(len(facts)),
                    "dataset/facts_unseen": float(sum(v == "unseen" for v in sets.values())),
                    "dataset/probes_test": float(sum(p["split"] == "test" for p in probes))})
    return metrics
