"""finetune: ``dataset/`` -> ``adapters/`` (mlx-lm LoRA on the configured base model)."""
from __future__ import annotations

import logging

from hydra.utils import instantiate

from runner.stage import StageContext

log = logging.getLogger(__name__)

INPUTS = ["dataset"]
OUTPUTS = ["adapters"]
CONFIG_KEYS = ["model", "lora"]


def model_dir(ctx: StageContext):
    hw = getattr(ctx, "hardware", None)
    dtype = hw.dtype if hw else "float32"
    return instantiate(ctx.cfg.model).local_dir(ctx.cfg.cache_dir, dtype=dtype)


def run(ctx: StageContext) -> dict[str, float]:
    from components.training import lora

    hw = getattr(ctx, "hardware", None)
    batch = int(ctx.cfg.lora.batch_size)
    if hw is not None and hw.train_batch_size < batch:
        log.warning("finetune: lora.batch_size=%d capped to %d by hardware profile '%s'",
                    batch, hw.train_batch_size, hw.name)
        batch = hw.train_batch_size
    return lora.train(model_dir(ctx), ctx.path("dataset"), ctx.path("adapters"), ctx.cfg.lora,
                      batch, lambda m, step: ctx.tracker.log_metrics(m, step=step))
