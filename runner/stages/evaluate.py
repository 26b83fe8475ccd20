"""evaluate: the base and the tuned model on the same prompts.

Validation and test loss (with perplexity), held-out Q&A exact match and token F1, multiple
choice from ``evaluate.mcq_path`` (TeleQnA format) and generated from the held-out split, each for
base and tuned with the delta; ``eval.json`` holds the metrics and the tables the report shows.
Adapters made under another lora/model config or another dataset are refused.
"""
from __future__ import annotations

import logging

from omegaconf import OmegaConf

from components.files import read_jsonl, write_json
from components.progress import Progress
from runner.config import build
from runner.stage import Interrupted, StageContext, StageError

log = logging.getLogger(__name__)

INPUTS = ["dataset", "adapters"]
OPTIONAL_INPUTS = ["glossary.jsonl"]
OUTPUTS = ["eval.json"]
CONFIG = ["model", "lora", "evaluate", "cache_dir"]


def _answers(lora, model, tok, prompts, max_tokens, cancel):
    out = []
    with Progress("evaluate", len(prompts), unit="answers") as progress:
        for p in prompts:
            if cancel.is_set():
                raise Interrupted("evaluate: stopped on request; a rerun evaluates again")
            out.extend(lora.generate_answers(model, tok, [p], max_tokens))
            progress.advance()
    return out


def _score(ev, lora, model, tok, data, qa_rows, mcq_sets, cfg, lcfg, cancel) -> dict:
    """Everything measured on one model (base, then the same model with adapters)."""
    batch = lcfg.batch_size
    res = {}
    for split in ("valid", "test"):
        ds = lora.dataset(data / f"{split}.jsonl", tok, lcfg.mask_prompt)
        res[f"{split}_loss"] = lora.loss(model, ds, batch, lcfg.max_seq_length)
        res[f"{split}_ppl"] = lora.perplexity(res[f"{split}_loss"])
    preds = _answers(lora, model, tok, [r["messages"][:-1] for r in qa_rows], cfg.max_tokens, cancel)
    res["qa"] = [{"prediction": p, "exact_match": ev.normalize(p) == ev.normalize(r["messages"][-1]["content"]),
                  "f1": round(ev.token_f1(p, r["messages"][-1]["content"]), 4)} for r, p in zip(qa_rows, preds)]
    for name, qs in mcq_sets.items():
        replies = _answers(lora, model, tok, [q.messages() for q in qs],
                           cfg.mcq_max_tokens, cancel)
        res[name] = ev.score_mcq(qs, replies)
    return res


def run(ctx: StageContext) -> dict[str, float]:
    from components.training import evaluation as ev
    from components.training import lora

    cfg, lcfg = build(ctx.cfg.evaluate, "evaluate"), build(ctx.cfg.lora, "lora")
    adapters, data = ctx.path("adapters"), ctx.path("dataset")
    # The adapters say what made them; finetune records the same provenance.
    prov = lora.provenance(OmegaConf.to_container(ctx.cfg.lora), OmegaConf.to_container(ctx.cfg.model), data)
    why = lora.provenance_mismatch(adapters, prov)
    if why:
        raise StageError(f"evaluate: {adapters} was not made by this config ({why}); re-run "
                         "fine-tuning with it: stages=[finetune,evaluate]")
    mdir = build(ctx.cfg.model, "model").local_dir(ctx.cfg.cache_dir)

    qa_rows = read_jsonl(data / "test.jsonl")[: cfg.max_examples]
    mcq_sets: dict[str, list] = {}
    if cfg.mcq_path:
        try:
            mcq_sets["mcq"] = ev.load_teleqna(cfg.mcq_path)[: cfg.mcq_max_questions]
        except ev.MCQError as exc:
            raise StageError(f"evaluate.mcq_path: {exc}") from None
    if cfg.generated_mcq:
        glossary = read_jsonl(ctx.path("glossary.jsonl")) if ctx.path("glossary.jsonl").is_file() else []
        pool = [r for s in ("train", "valid", "test") for r in read_jsonl(data / f"{s}.jsonl")]
        mcq_sets["gen_mcq"] = ev.generated_mcq(read_jsonl(data / "test.jsonl"), pool, glossary,
                                               cfg.generated_options, cfg.seed, cfg.mcq_max_questions)

    import mlx.core as mx
    from mlx_lm.tuner.utils import load_adapters

    model, tok = lora.load(mdir)
    if lcfg.dtype != "float32":
        model.set_dtype(getattr(mx, lcfg.dtype))
    mx.random.seed(cfg.seed)
    base = _score(ev, lora, model, tok, data, qa_rows, mcq_sets, cfg, lcfg, ctx.cancel)
    load_adapters(model, str(adapters))
    model.eval()
    tuned = _score(ev, lora, model, tok, data, qa_rows, mcq_sets, cfg, lcfg, ctx.cancel)

    def r4(x):
        return round(float(x), 4)

    m: dict[str, float] = {}

    def pair(name, b, t):
        m[f"eval/{name}_base"], m[f"eval/{name}_tuned"] = r4(b), r4(t)
        m[f"eval/{name}_delta"] = r4(t - b)

    for split in ("valid", "test"):
        pair(f"{split}_loss", base[f"{split}_loss"], tuned[f"{split}_loss"])
        pair(f"{split}_ppl", base[f"{split}_ppl"], tuned[f"{split}_ppl"])
    n = len(qa_rows)
    for key, metric in (("exact_match", "qa_exact_match"), ("f1", "qa_token_f1")):
        pair(metric, sum(r[key] for r in base["qa"]) / n if n else 0.0,
             sum(r[key] for r in tuned["qa"]) / n if n else 0.0)
    m["eval/qa_examples"] = n
    tables: dict = {}
    for name in mcq_sets:
        b, t = base[name], tuned[name]
        pair(f"{name}_accuracy", b["accuracy"], t["accuracy"])
        pair(f"{name}_strict_accuracy", b["strict_accuracy"], t["strict_accuracy"])
        pair(f"{name}_strict_parse_failure_rate", b["strict_parse_failure_rate"], t["strict_parse_failure_rate"])
        m[f"eval/{name}_questions"] = b["n"]
        cats = {}
        for cat in b["per_category"]:
            slug = "".join(ch if ch.isalnum() else "_" for ch in cat.lower()).strip("_")
            pair(f"{name}_category/{slug}_accuracy", b["per_category"][cat]["accuracy"],
                 t["per_category"][cat]["accuracy"])
            cats[cat] = {"n": b["per_category"][cat]["n"], "base": b["per_category"][cat],
                         "tuned": t["per_category"][cat]}
        qs = {q.id: q for q in mcq_sets[name]}
        tables[name] = {
            "source": cfg.mcq_path if name == "mcq" else "held-out split, glossary distractors",
            "questions": b["n"], "per_category": cats,
            "samples": [{"id": rb["id"], "category": rb["category"], "question": qs[rb["id"]].question,
                         "answer": rb["answer"], "base_reply": rb["reply"], "base_choice": rb["lenient"],
                         "tuned_reply": rt["reply"], "tuned_choice": rt["lenient"]}
                        for rb, rt in list(zip(b["rows"], t["rows"]))[: cfg.samples]],
            "rows": {"base": b["rows"], "tuned": t["rows"]}}
    deltas = {k[len("eval/"):-len("_delta")]: v for k, v in m.items() if k.endswith("_delta")}
    # The names earlier runs and sweeps use (optimized_metric: eval/val_loss_after).
    m.update({"eval/val_loss_before": m["eval/valid_loss_base"], "eval/val_loss_after": m["eval/valid_loss_tuned"],
              "eval/val_loss_delta": m["eval/valid_loss_delta"], "eval/val_ppl_after": m["eval/valid_ppl_tuned"],
              "eval/exact_match": m["eval/qa_exact_match_tuned"], "eval/token_f1": m["eval/qa_token_f1_tuned"],
              "eval/examples": n})
    samples = [{"question": r["messages"][-2]["content"], "gold": r["messages"][-1]["content"],
                "kind": (r.get("meta") or {}).get("kind"), "base": pb["prediction"], "tuned": pt["prediction"],
                "f1_base": pb["f1"], "f1_tuned": pt["f1"], "exact_match_base": pb["exact_match"],
                "exact_match_tuned": pt["exact_match"]} for r, pb, pt in zip(qa_rows, base["qa"], tuned["qa"])]
    write_json(ctx.path("eval.json"), {
        "metrics": m,
        "comparison": {k: {"base": m[f"eval/{k}_base"], "tuned": m[f"eval/{k}_tuned"], "delta": d}
                       for k, d in deltas.items()},
        "qa_samples": samples[: cfg.samples] if cfg.samples else [],
        "predictions": samples,
        "mcq": tables,
        "adapters": lora.adapter_record(adapters).get("training", {}),
    })
    ctx.tracker.log_artifact(ctx.path("eval.json"))
    return m
