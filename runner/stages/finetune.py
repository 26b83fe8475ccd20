"""finetune: ``dataset/`` -> ``adapters/`` (mlx-lm LoRA on the configured base model) and
``export/`` (nothing, a fused model, or a fused model with an Ollama Modelfile).

``adapters/adapter_config.json`` records the config and dataset that made the adapters
(provenance) and the values the preflight chose; adapters that already match are not trained
again when only the export changed. An interrupted training keeps its last checkpoint in
``adapters.checkpoint/`` and a rerun resumes from it.
"""
from __future__ import annotations

import logging

from omegaconf import OmegaConf

from runner.stage import Interrupted, StageContext, StageError

log = logging.getLogger(__name__)

INPUTS = ["dataset"]
OUTPUTS = ["adapters", "export"]
# dataset.system_prompt: the prompt the validation probes are asked in, and the one the Ollama
# Modelfile sets (the prompt the adapters were trained with).
CONFIG = ["model", "lora", "finetune", "cache_dir", "dataset.system_prompt", "hw.cpu_threads"]
# The threads the training processes share: how fast, never what they write.
NOT_FINGERPRINTED = ["hw.cpu_threads"]


def run(ctx: StageContext) -> dict[str, float]:
    from components.training import export, lora, parallel
    from components.training.preflight import PreflightError

    lcfg = ctx.component("lora")
    base = ctx.component("model")
    ecfg = ctx.component("finetune")
    adapters = ctx.path("adapters")
    prov = lora.provenance(OmegaConf.to_container(ctx.cfg.lora), OmegaConf.to_container(ctx.cfg.model),
                           ctx.path("dataset"))
    model_dir = base.local_dir(ctx.cfg.cache_dir)
    if lora.provenance_mismatch(adapters, prov) is None:
        log.info("finetune: %s already holds adapters for this lora/model/dataset config; "
                 "not training again (delete it to force)", adapters)
        metrics = lora.training_metrics(lora.adapter_record(adapters)["training"])
    else:
        try:
            metrics = parallel.train(model_dir, ctx.path("dataset"), adapters, lcfg, prov=prov,
                                     system=ctx.cfg.dataset.system_prompt,
                                     log_metrics=lambda m, step: ctx.tracker.log_metrics(m, step=step),
                                     cancel=ctx.cancel, threads=ctx.cfg.hw.cpu_threads)
        except lora.TrainingStopped as exc:
            raise Interrupted(f"finetune: {exc}") from None
        except PreflightError as exc:
            raise StageError(str(exc)) from None
    for f in sorted(adapters.iterdir()):
        ctx.tracker.log_artifact(f, "adapters")
    metrics.update(export.export(model_dir, adapters, ctx.path("export"), ecfg, base.name,
                                 ctx.cfg.dataset.system_prompt))
    modelfile = ctx.path("export") / "fused" / "Modelfile"
    if modelfile.is_file():
        ctx.tracker.log_artifact(modelfile, "export")
    return metrics
