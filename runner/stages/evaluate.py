"""evaluate: validation loss before and after the adapters, and exact match on held-out Q&A."""
from __future__ import annotations

import json
import logging

from components.files import read_jsonl, write_json
from runner.stage import StageContext
from runner.config import build

log = logging.getLogger(__name__)

INPUTS = ["dataset", "adapters"]
OUTPUTS = ["eval.json"]
CONFIG = ["model", "lora", "evaluate", "cache_dir"]

def run(ctx: StageContext) -> dict[str, float]:
    from components.training import lora
    from components.training.evaluation import normalize, token_f1

    cfg, lcfg = build(ctx.cfg.evaluate, "evaluate"), build(ctx.cfg.lora, "lora")
    mdir = build(ctx.cfg.model, "model").local_dir(ctx.cfg.cache_dir)
    adapters = ctx.path("adapters")
    data = ctx.path("dataset")
    batch = json.loads((adapters / "adapter_config.json").read_text())["batch_size"]

    model, tok = lora.load(mdir)
    valid = lora.dataset(data / "valid.jsonl", tok, lcfg.mask_prompt)
    before = lora.loss(model, valid, batch, lcfg.max_seq_length)
    del model
    model, tok = lora.load(mdir, adapters)
    valid = lora.dataset(data / "valid.jsonl", tok, lcfg.mask_prompt)
    after = lora.loss(model, valid, batch, lcfg.max_seq_length)

    test = read_jsonl(data / "test.jsonl")[: cfg.max_examples]
    answers = lora.generate_answers(model, tok, [r["messages"] for r in test], cfg.max_tokens)
    rows = []
    for r, pred in zip(test, answers):
        gold = r["messages"][-1]["content"]
        rows.append({"question": r["messages"][-2]["content"], "gold": gold, "prediction": pred,
                     "exact_match": normalize(pred) == normalize(gold),
                     "f1": round(token_f1(pred, gold), 4), "kind": r.get("meta", {}).get("kind")})
    n = len(rows)
    metrics = {"eval/val_loss_before": round(before, 5), "eval/val_loss_after": round(after, 5),
               "eval/val_loss_delta": round(after - before, 5),
               "eval/val_ppl_after": round(lora.perplexity(after), 4),
               "eval/exact_match": round(sum(r["exact_match"] for r in rows) / n, 4) if n else 0.0,
               "eval/token_f1": round(sum(r["f1"] for r in rows) / n, 4) if n else 0.0,
               "eval/examples": n}
    write_json(ctx.path("eval.json"), {"metrics": metrics, "predictions": rows})
    return metrics
