"""Fine-tuning examples from extraction records, a split no fact leaks across, the knowledge
probes, and the files mlx-lm (and other trainers) read.

Facts (``components.knowledge``: acronyms, definitions, clause titles, grounded Q&A) become
``acronym``, ``definition``, ``spec_clause`` and ``qa`` examples in ``phrasings`` wordings each,
plus an ``mcq`` example answered with an option number. A seeded share of the facts
(``evaluate.unseen_fraction``) is never trained: the control for forgetting. Every fact gets two
never-trained probes (``probes.jsonl``): the validation probe picks the checkpoint, the test
probe is the evaluation.

Document examples, ``summary`` (of a clause) and ``extraction`` (chunk -> the JSON, so the tuned
model learns to extract), are split by document when there are enough documents, otherwise by
clause within documents (whole clauses, never a chunk on both sides); held-out ones that repeat
or near-copy a training one are dropped, and training ones that state an unseen fact too.

Splits: train holds the trained facts' phrasings and the training documents' examples; valid
the trained facts in their validation-probe wording and the validation documents' examples;
test the unseen facts and the test documents' examples. Mixture weights scale each kind in
train. No row is cut by the trainer: a row longer than ``lora.max_seq_length`` tokens is split
(``text`` format) or dropped, and counted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from typing import Callable, Iterable, Literal

import numpy as np
from pydantic import Field, field_validator

from components import knowledge as K
from components import mcq
from components.settings import Settings

log = logging.getLogger(__name__)

DOCUMENT_KINDS = ("summary", "extraction")
KINDS = (*K.KINDS, "mcq", *DOCUMENT_KINDS)
SPLITS = ("train", "valid", "test")


class DatasetConfig(Settings):
    """``dataset`` group."""

    system_prompt: str = "Telecom standards assistant."
    format: Literal["chat", "completions", "text"] = "chat"
    exports: list[Literal["sharegpt", "alpaca"]] = Field(default_factory=lambda: ["sharegpt", "alpaca"])
    phrasings: int = Field(4, ge=1, le=7)  # training wordings per fact (both directions)
    mcq_rows: bool = True  # one multiple-choice example per trained fact, answered by number
    probe_options: int = Field(4, ge=2, le=5)  # options of a probe and of an mcq example
    mixture: dict[str, float] = Field(default_factory=lambda: {
        "qa": 1.0, "acronym": 1.0, "definition": 1.0, "spec_clause": 1.0, "mcq": 1.0,
        "summary": 1.0, "extraction": 0.5})
    valid_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    min_answer_chars: int = Field(2, ge=0)
    extraction_max_chars: int = Field(1500, ge=0)  # longer chunks make no extraction example
    near_duplicate_threshold: float = Field(0.8, gt=0, le=1)
    shingle_size: int = Field(3, ge=1)
    sample_size: int = Field(20, ge=0)

    @field_validator("mixture")
    @classmethod
    def _kinds(cls, v: dict[str, float]) -> dict[str, float]:
        bad = sorted(set(v) - set(KINDS))
        if bad:
            raise ValueError(f"unknown kind(s) {bad}; kinds are {list(KINDS)}")
        if any(w < 0 for w in v.values()):
            raise ValueError("weights must be >= 0")
        return v


# ---------------------------------------------------------------- examples


def _ex(rec: dict, kind: str, instruction: str, output: str, source: str, inp: str = "") -> dict:
    return {"instruction": instruction, "input": inp, "output": output, "kind": kind,
            "source": source, "doc_id": rec["doc_id"], "chunk_id": rec["chunk_id"],
            "spec": rec.get("spec"), "clause": rec.get("clause") or ""}


EXTRACTION_INSTRUCTION = ("Extract the acronyms, specification references, telecom entities, a "
                          "one-sentence summary and question/answer pairs (with a verbatim "
                          "evidence quote) from this specification text, as JSON.")


def document_examples(records: list[dict], chunks: dict[str, dict], cfg: DatasetConfig) -> list[dict]:
    """Clause summaries and extraction-as-a-task examples (facts are ``fact_examples``')."""
    out: list[dict] = []
    for rec in records:
        res = rec.get("result")
        if not res:
            continue
        title = K.clause_title(rec)
        if res.get("summary"):
            what = (f"clause {rec['clause']} ({title})" if rec.get("clause") and title and title != rec["clause"]
                    else f"\"{title or rec.get('clause') or rec['doc_id']}\"")
            out.append(_ex(rec, "summary", f"Summarise {what} of {K.where(rec)}.",
                           res["summary"]["text"], res["summary"]["origin"]))
        chunk = chunks.get(rec["chunk_id"])
        if chunk and not rec.get("skip") and rec.get("status") == "ok" \
                and len(chunk["text"]) <= cfg.extraction_max_chars:
            target = {"acronyms": [{"acronym": a["acronym"], "expansion": a["expansion"]} for a in res["acronyms"]],
                      "spec_refs": [x["ref"] for x in res["spec_refs"]],
                      "entities": [{"name": e["name"], "type": e["type"]} for e in res["entities"]],
                      "summary": (res.get("summary") or {}).get("text", ""),
                      "qa": [{k: q[k] for k in ("question", "answer", "evidence")} for q in res["qa"]]}
            if any(target.values()):
                origins = {x["origin"] for x in res["acronyms"] + res["spec_refs"] + res["entities"] + res["qa"]}
                source = next((o for o in sorted(origins) if o != "rule"), "rule")
                out.append(_ex(rec, "extraction", EXTRACTION_INSTRUCTION,
                               json.dumps(target, ensure_ascii=False), source, chunk["text"]))
    return out


def _fact_ex(f: K.Fact, kind: str, question: str, answer: str, **extra) -> dict:
    return {"instruction": question, "input": "", "output": answer, "kind": kind, "source": f.source,
            "doc_id": f.doc_id, "chunk_id": f.chunk_id, "spec": f.where, "clause": f.clause,
            "fact_id": f.id, **extra}


def fact_examples(facts: list[K.Fact], sets: dict[str, str], cfg: DatasetConfig) -> dict[str, list[dict]]:
    """Per split: the trained facts in ``phrasings`` wordings and one multiple-choice example
    (train) and in their validation-probe wording (valid); the unseen facts in their first
    wording (test)."""
    trained = [f for f in facts if sets[f.id] == "trained"]
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for f in facts:
        rows = K.training_rows(f, trained, cfg.phrasings, cfg.probe_options, cfg.seed, mcq=cfg.mcq_rows)
        if sets[f.id] == "unseen":
            out["test"].append(_fact_ex(f, f.kind, rows[0]["question"], rows[0]["answer"]))
            continue
        for r in rows:
            kind = "mcq" if r.get("system") == "mcq" else f.kind
            out["train"].append(_fact_ex(f, kind, r["question"], r["answer"],
                                         **({"system": "mcq"} if kind == "mcq" else {})))
        out["valid"].append(_fact_ex(f, f.kind, K.probe_question(f, "valid"), K.probe_answer(f)))
    return out


def probes(facts: list[K.Fact], sets: dict[str, str], cfg: DatasetConfig) -> tuple[list[dict], Counter]:
    """The validation and test probe of every fact, distractors from its own set; facts whose
    set has no other fact of their kind get none (counted)."""
    out, missing = [], Counter()
    for split in ("valid", "test"):
        for s in K.SETS:
            pool = [f for f in facts if sets[f.id] == s]
            for f in pool:
                p = K.probe(f, split, pool, cfg.probe_options, cfg.seed)
                if p is None:
                    missing[f"{s}_{f.kind}"] += split == "test"
                    continue
                out.append({**p, "set": s})
    return out, missing


def drop_leaks(train: list[dict], unseen: list[K.Fact]) -> tuple[list[dict], int]:
    """Training document examples that state an unseen fact are dropped: the control facts
    must stay unseen."""
    check = K.LeakCheck(unseen)
    kept = [e for e in train if e.get("fact_id") or not check(_text(e))]
    return kept, len(train) - len(kept)


# ---------------------------------------------------------------- splits


def _tiebreak(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def split_groups(counts: dict[str, int], valid_fraction: float, test_fraction: float, seed: int,
                 min_per_split: int) -> dict[str, str]:
    """Assign whole groups (documents or clauses) to splits, each to the split furthest below
    its share of examples (largest first), then make sure held-out splits reach
    ``min_per_split`` while train keeps at least one group."""
    total = sum(counts.values())
    target = {"train": total * (1 - valid_fraction - test_fraction),
              "valid": total * valid_fraction, "test": total * test_fraction}
    tb = {g: _tiebreak(seed, g) for g in counts}
    have = dict.fromkeys(target, 0)
    assign: dict[str, str] = {}
    for g in sorted(counts, key=lambda g: (-counts[g], tb[g])):
        split = max(target, key=lambda s: (target[s] - have[s], s == "train"))
        assign[g] = split
        have[split] += counts[g]
    for split in ("valid", "test"):
        while have[split] < min_per_split:
            donors = sorted((g for g, s in assign.items() if s == "train"), key=lambda g: (counts[g], tb[g]))
            if len(donors) <= 1:
                break
            assign[donors[0]] = split
            have[split] += counts[donors[0]]
            have["train"] -= counts[donors[0]]
    return assign


def split(examples_: list[dict], cfg: DatasetConfig, min_per_split: int) -> tuple[dict[str, list[dict]], str]:
    """Examples per split, and how they were split (``document``, ``clause`` or ``example``)."""
    docs = {e["doc_id"] for e in examples_}
    if len(docs) >= len(SPLITS):
        how, key = "document", lambda e: e["doc_id"]
    else:
        how, key = "clause", lambda e: f"{e['doc_id']}#{e['clause'] or e['chunk_id']}"
        if len({key(e) for e in examples_}) < len(SPLITS):
            # One chunk, one clause: nothing to hold out whole. Hold out single examples.
            how, key = "example", lambda e: f"{e['chunk_id']}#{e['kind']}#{e['instruction']}"
    counts = Counter(key(e) for e in examples_)
    assign = split_groups(dict(counts), cfg.valid_fraction, cfg.test_fraction, cfg.seed, min_per_split)
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for e in examples_:
        out[assign[key(e)]].append(e)
    return out, how


def _text(e: dict) -> str:
    return " ".join((e["instruction"], e["input"], e["output"]))


def drop_duplicates(splits: dict[str, list[dict]], cfg: DatasetConfig) -> Counter:
    """Exact duplicates within each split; held-out examples equal to, or near-copies of
    (MinHash over word shingles, confirmed by exact Jaccard), a training example."""
    from components.processing import dedup

    dropped: Counter = Counter()
    train_exact: set[str] = set()
    for s in SPLITS:
        seen: set[str] = set()
        kept = []
        for e in splits[s]:
            k = " ".join(_text(e).lower().split())
            if k in seen or (s != "train" and k in train_exact):
                dropped["exact_duplicates" if k in seen else "train_copies"] += 1
                continue
            seen.add(k)
            kept.append(e)
        splits[s] = kept
        if s == "train":
            train_exact = seen
    a, b = dedup.permutations(128, cfg.seed)
    bands = 32
    train_sets = [dedup.shingles(_text(e), cfg.shingle_size) for e in splits["train"]]
    index: dict[tuple[int, int], list[int]] = {}
    if train_sets:
        keys = dedup.band_keys(np.stack([dedup.signature(x, a, b) for x in train_sets]), bands)
        for i, row in enumerate(keys.tolist()):
            for band, k in enumerate(row):
                index.setdefault((band, k), []).append(i)
    for s in ("valid", "test"):
        kept = []
        for e in splits[s]:
            sh = dedup.shingles(_text(e), cfg.shingle_size)
            row = dedup.band_keys(dedup.signature(sh, a, b)[None, :], bands)[0].tolist()
            cands = {i for band, k in enumerate(row) for i in index.get((band, k), [])}
            if any(dedup.jaccard(sh, train_sets[i]) >= cfg.near_duplicate_threshold for i in cands):
                dropped["near_duplicates"] += 1
                continue
            kept.append(e)
        splits[s] = kept
    return dropped


def mix(train: list[dict], mixture: dict[str, float], seed: int) -> list[dict]:
    """Each training example ``floor(w)`` times, plus once more with probability ``frac(w)``
    (a seeded hash decides), for its kind's weight ``w``."""
    out = []
    for e in train:
        w = mixture.get(e["kind"], 0.0)
        n = int(w)
        u = int(_tiebreak(seed, _text(e))[:8], 16) / 0xFFFFFFFF
        n += u < (w - int(w))
        out += [e] * n
    return out


# ---------------------------------------------------------------- length


def token_counter(tokenizer) -> Callable[[dict], int]:
    """Tokens of a rendered row as mlx-lm's datasets tokenise it (chat template for chat and
    completions rows, plain text plus end of sequence for text rows)."""
    def count(row: dict) -> int:
        if "messages" in row:
            msgs = row["messages"]
        elif "prompt" in row:
            msgs = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
        else:
            return len(tokenizer.encode(row["text"])) + 1
        return len(tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=False))

    return count


_SENTENCE = re.compile(r"(?<=[.;:!?])\s+|\n\n+")


def _pieces(text: str, fits: Callable[[str], bool]) -> list[str] | None:
    """``text`` cut at paragraph and sentence ends into the fewest pieces that fit; None when a
    single sentence does not."""
    out, cur = [], ""
    for sentence in (x for x in _SENTENCE.split(text) if x.strip()):
        cand = f"{cur} {sentence}".strip() if cur else sentence
        if fits(cand):
            cur = cand
            continue
        if not cur or not fits(sentence):
            return None
        out.append(cur)
        cur = sentence
    return out + ([cur] if cur else [])


def fit_length(splits: dict[str, list[dict]], fmt: str, system: str, count: Callable[[dict], int],
               max_tokens: int) -> Counter:
    """Rows mlx-lm would cut at ``max_tokens``: split at sentence ends in the ``text`` format
    (where a row is plain text), dropped otherwise (a cut answer teaches broken JSON)."""
    dropped: Counter = Counter()
    for s in SPLITS:
        kept = []
        for e in splits[s]:
            if count(render(e, fmt, system)) <= max_tokens:
                kept.append(e)
                continue
            if fmt == "text":
                whole = render(e, fmt, system)["text"]
                parts = _pieces(whole, lambda t: count({"text": t}) <= max_tokens)
                if parts:
                    kept += [{**e, "text": t} for t in parts]
                    dropped["split_longer_than_max_seq_length"] += 1
                    continue
            dropped["longer_than_max_seq_length"] += 1
        splits[s] = kept
    return dropped


# ---------------------------------------------------------------- formats


def meta(e: dict) -> dict:
    return {k: e.get(k) for k in ("doc_id", "chunk_id", "spec", "clause", "kind", "source", "fact_id")}


def user_text(e: dict) -> str:
    return e["instruction"] + (f"\n\n{e['input']}" if e["input"] else "")


def render(e: dict, fmt: str, system: str) -> dict:
    """One example in mlx-lm's ``chat``, ``completions`` or ``text`` format, or the ``sharegpt``
    and ``alpaca`` exports; ``meta`` rides along (mlx-lm ignores it)."""
    user, answer = user_text(e), e["output"]
    if e.get("system") == "mcq":  # multiple choice is asked, and answered, in its own prompt
        system = mcq.SYSTEM
    if fmt == "chat":
        row = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user},
                            {"role": "assistant", "content": answer}]}
    elif fmt == "completions":
        row = {"prompt": user, "completion": answer}
    elif fmt == "text":
        row = {"text": e.get("text") or f"{user}\n\n{answer}"}
    elif fmt == "sharegpt":
        row = {"conversations": [{"from": "system", "value": system}, {"from": "human", "value": user},
                                 {"from": "gpt", "value": answer}]}
    elif fmt == "alpaca":
        row = {"instruction": e["instruction"], "input": e["input"], "output": answer, "system": system}
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return {**row, "meta": meta(e)}


# ---------------------------------------------------------------- the card

LICENSE_NOTE = ("Source text from 3GPP and ETSI specifications belongs to its owners (3GPP "
                "Organizational Partners, ETSI). This dataset is derived from it for your own use: "
                "it stays with you; do not publish or redistribute it.")


def _table(title: str, rows: dict[str, Counter], cols: Iterable[str]) -> list[str]:
    cols = list(cols)
    lines = [f"### {title}", "", "| | " + " | ".join(cols) + " | total |", "|---" * (len(cols) + 2) + "|"]
    for name in sorted(rows):
        c = rows[name]
        lines.append(f"| {name} | " + " | ".join(str(c.get(s, 0)) for s in cols) + f" | {sum(c.values())} |")
    return lines + [""]


def knowledge_lines(facts: list[K.Fact], sets: dict[str, str], probes_: list[dict], cfg: DatasetConfig,
                     unseen_fraction: float) -> list[str]:
    count = {s: Counter(f.kind for f in facts if sets[f.id] == s) for s in K.SETS}
    lines = ["## Facts and probes", "",
             f"{len(facts)} facts; {sum(count['unseen'].values())} kept out of training "
             f"(evaluate.unseen_fraction={unseen_fraction:g}, seeded per kind): the control for forgetting. "
             f"Each trained fact is taught in {cfg.phrasings} wording(s)"
             + (" plus one multiple-choice question answered with the option number." if cfg.mcq_rows else ".")
             + " Two wordings per kind are never trained: the validation probe (checkpoint selection) "
               "and the test probe (the evaluation), multiple choice with "
             f"{cfg.probe_options} options scored by log-likelihood, distractors from the same set.", "",
             "| kind | trained | unseen | test probes (trained / unseen) |", "|---|---|---|---|"]
    for kind in K.KINDS:
        n = [sum(p["kind"] == kind and p["set"] == s and p["split"] == "test" for p in probes_) for s in K.SETS]
        if count["trained"][kind] or count["unseen"][kind]:
            lines.append(f"| {kind} | {count['trained'][kind]} | {count['unseen'][kind]} | {n[0]} / {n[1]} |")
    return lines + [""]


def card(splits: dict[str, list[dict]], how: str, cfg: DatasetConfig, models: list[str],
         extraction_drops: Counter, dataset_drops: Counter, skipped: Counter,
         knowledge: list[str] | None = None) -> str:
    by = {"kind": {}, "source": {}, "document": {}}
    for s, rows in splits.items():
        for e in rows:
            for field, v in (("kind", e["kind"]), ("source", e["source"]), ("document", e["doc_id"])):
                by[field].setdefault(v, Counter())[s] += 1
    split_line = {"document": "by document (no document on both sides)",
                  "clause": ("by clause within the documents: fewer documents than splits, so whole "
                             "clauses are held out (never a chunk on both sides)"),
                  "example": ("by example: the corpus has fewer clauses than splits, so held-out "
                              "examples share chunks with training ones"),
                  "none": "(no document examples: facts only)"}[how]
    lines = ["# Dataset card", "",
             f"Examples: train {len(splits['train'])}, valid {len(splits['valid'])}, "
             f"test {len(splits['test'])}. Format `{cfg.format}`; exports: "
             f"{', '.join(cfg.exports) or 'none'}.", "",
             f"Document examples (summaries, extraction) split {split_line}; seed {cfg.seed}.", "",
             "Models used: " + (", ".join(models) if models else "none (rules only)") + ".", "",
             "Mixture weights (training split): " + ", ".join(f"{k} {v:g}" for k, v in cfg.mixture.items()) + ".", "",
             *(knowledge or []), "## Counts", ""]
    for field in ("kind", "source", "document"):
        lines += _table(f"By {field}", by[field], SPLITS)
    lines += ["## Filters", "", "Dropped during extraction (items the chunk does not support or that "
              "were degenerate), by reason:", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(extraction_drops.items())] or ["- none"]
    lines += ["", "Chunks that got rules only (no model request), by reason:", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(skipped.items())] or ["- none"]
    lines += ["", "Dropped by this stage:", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(dataset_drops.items())] or ["- none"]
    lines += ["", "## License", "", LICENSE_NOTE, ""]
    return "\n".join(lines)
