"""The recipe: resolve the hardware, build every component from its group (failing early on a
wrong key), start tracking, run the stages, report.

Returns the metric a sweep optimizes (``optimized_metric``), as Hydra's sweepers expect.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from components.files import write_jsonl, write_text
from components.llm.services import ServiceUnavailable
from components.tracking import git_commit, redact, scrub_file, secret_values
from components.training.models import ModelUnavailable
from runner import pipeline
from runner.config import ConfigError, build, resolve_hardware
from runner.report import write_report
from runner.stage import Resources, StageError

log = logging.getLogger("runner")

REPO = Path(__file__).resolve().parent.parent
# Every group that configures a component; each is built once up front so a wrong value fails
# before any work.
GROUPS = ["corpus", "acquire", "docling", "process", "service", "extraction", "dataset", "model",
          "lora", "evaluate"]


def _quiet_libraries() -> None:
    # Per-document and per-request INFO lines from libraries drown the pipeline's own log.
    for name in ("docling", "httpx", "mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _public_config(cfg: DictConfig, run_dir: Path) -> dict:
    """The resolved config with secrets redacted, written to the run directory; Hydra's own copy
    of the overrides is scrubbed too (a key passed on the command line must not stay there)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    secrets = secret_values(resolved)
    for f in (run_dir / ".hydra").glob("*.yaml"):
        scrub_file(f, secrets)
    public = redact(resolved)
    write_text(run_dir / "config.resolved.yaml", OmegaConf.to_yaml(OmegaConf.create(public)))
    return public


def run(cfg: DictConfig) -> float | None:
    _quiet_libraries()
    run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    stages = list(cfg.stages)
    try:
        hardware = resolve_hardware(cfg)
        components = {g: build(cfg[g], g) for g in GROUPS}
    except ConfigError as exc:
        log.error("config: %s", exc)
        sys.exit(2)
    public_cfg = _public_config(cfg, run_dir)
    try:
        if {"finetune", "evaluate"} & set(stages):
            # Before any expensive stage: a model that cannot be had fails the run now.
            components["model"].check()
        if "extract" in stages and components["service"].on_unavailable == "fail":
            components["service"].start()  # service.on_unavailable=fail: fail now, not after convert
            components["service"].close()
    except (ModelUnavailable, ServiceUnavailable) as exc:
        log.error("%s", exc)
        sys.exit(2)

    tracker = build(cfg.tracking, "tracking")
    tags = {"hardware.profile": hardware.name, "hardware.accelerator": hardware.accelerator,
            "hardware.memory_gb": str(hardware.memory_gb),
            "hardware.scaled_down": str(hardware.scaled).lower(),
            "service.configured": str(cfg.service.name), "model": str(cfg.model.name),
            "stages": ",".join(stages), "run_dir": str(run_dir),
            "git_commit": git_commit(REPO) or "unknown"}
    metrics: dict = {}
    failure: str | None = None
    resources = Resources()
    with tracker.start(params=public_cfg, tags=tags):
        tracker.log_metrics({"hardware/" + k: v for k, v in hardware.as_dict().items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)})
        try:
            metrics = pipeline.run(run_dir, cfg, tracker, stages, resources)
        except (StageError, ServiceUnavailable, ModelUnavailable, ConfigError) as exc:
            failure = str(exc)
            log.error("%s", exc)
        finally:
            resources.close()
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
