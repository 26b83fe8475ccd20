"""finetune: ``dataset/`` -> ``adapters/`` (mlx-lm LoRA on the configured base model)."""
from __future__ import annotations

from runner.config import build
from runner.stage import StageContext

INPUTS = ["dataset"]
OUTPUTS = ["adapters"]
CONFIG = ["model", "lora", "cache_dir"]


def run(ctx: StageContext) -> dict[str, float]:
    from components.training import lora

    model_dir = build(ctx.cfg.model, "model").local_dir(ctx.cfg.cache_dir)
    return lora.train(model_dir, ctx.path("dataset"), ctx.path("adapters"), build(ctx.cfg.lora, "lora"),
                      lambda m, step: ctx.tracker.log_metrics(m, step=step))
