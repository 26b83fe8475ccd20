"""The recipe: resolve the hardware, check the model, start tracking, run the stages, report.

Returns the metric a sweep optimizes (``optimized_metric``), as Hydra's sweepers expect.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd, instantiate
from omegaconf import DictConfig, OmegaConf

from components.training.models import ModelUnavailable
from components.llm.services import ServiceUnavailable
from components.tracking import git_commit, redact, scrub_file, secret_values
from runner import pipeline
from components.files import write_jsonl, write_text
from runner.report import write_report
from runner.stage import StageContext, StageError

log = logging.getLogger("runner")

REPO = Path(__file__).resolve().parent.parent
EXPENSIVE = {"extract", "dataset", "finetune", "evaluate"}


def _quiet_libraries() -> None:
    # Per-document and per-request INFO lines from libraries drown the pipeline's own log.
    for name in ("docling", "httpx", "mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run(cfg: DictConfig) -> float | None:
    _quiet_libraries()
    run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    # Hydra wrote the overrides as typed: a key passed on the command line must not stay there.
    secrets = secret_values(resolved)
    for f in (run_dir / ".hydra").glob("*.yaml"):
        scrub_file(f, secrets)
    public_cfg = redact(resolved)
    write_text(run_dir / "config.resolved.yaml", OmegaConf.to_yaml(OmegaConf.create(public_cfg)))

    stages = list(cfg.stages)
    hardware = instantiate(cfg.hardware).resolve()
    try:
        if EXPENSIVE & set(stages) and {"finetune", "evaluate"} & set(stages):
            # Before any expensive stage: a model that cannot be had fails the run now.
            instantiate(cfg.model).check()
    except ModelUnavailable as exc:
        log.error("%s", exc)
        sys.exit(2)

    tracker = instantiate(cfg.tracking, root=get_original_cwd())
    ctx = StageContext(run_dir=run_dir, cfg=cfg, tracker=tracker, hardware=hardware)
    tags = {"hardware.profile": hardware.name, "hardware.accelerator": hardware.accelerator,
            "hardware.memory_gb": str(hardware.memory_gb),
            "hardware.scaled_down": str(hardware.scaled).lower(),
            "service.configured": str(cfg.service.name), "model": str(cfg.model.name),
            "stages": ",".join(stages), "run_dir": str(run_dir),
            "git_commit": git_commit(REPO) or "unknown"}
    metrics: dict = {}
    failure: str | None = None
    with tracker.start(params=public_cfg, tags=tags):
        tracker.log_metrics({"hardware/" + k: v for k, v in hardware.as_dict().items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)})
        try:
            metrics = pipeline.run(ctx, stages)
        except (StageError, ServiceUnavailable, ModelUnavailable) as exc:
            failure = str(exc)
            log.error("%s", exc)
        finally:
            ctx.close()
            info = {"run directory": run_dir, "MLflow run": tracker.run_id,
                    "hardware": f"{hardware.name} ({hardware.accelerator}, "
                                f"{hardware.memory_gb} GB{', scaled down' if hardware.scaled else ''})",
                    "service": cfg.service.name, "model": cfg.model.name}
            if failure:
                info["FAILED"] = failure
            report = write_report(run_dir, metrics, info)
            for path in (run_dir / "config.resolved.yaml", report, run_dir / "metrics.json"):
                tracker.log_artifact(path)
            train = run_dir / "dataset" / "train.jsonl"
            if train.is_file():
                sample = run_dir / "dataset_sample.jsonl"
                with open(train, encoding="utf-8") as fh:
                    write_jsonl(sample, (json.loads(l) for _, l in zip(range(20), fh)))
                tracker.log_artifact(sample)
    print(f"\nRun directory: {run_dir}")
    print(f"MLflow run:    {tracker.run_id} (experiment '{tracker.experiment}' at {tracker.uri})")
    print(f"Open the UI:   {tracker.ui_hint()}")
    if failure:
        sys.exit(1)
    value = metrics.get(cfg.optimized_metric)
    return float(value) if value is not None else None

