"""The recipe: resolve the hardware, build every component from its group (failing early on a
wrong key), start tracking, run the stages, report.

Returns the metric a sweep optimizes (``optimized_metric``), as Hydra's sweepers expect.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from components import secrets
from components.files import write_json, write_jsonl, write_text
from components.llm.services import ServiceUnavailable
from components.tracking import git_commit
from components.training.models import ModelUnavailable
from runner import pipeline
from runner.config import ConfigError, build, resolve_hardware
from runner.interrupts import stop_on_signals
from runner.report import write_report
from runner.stage import Interrupted, Resources, StageError

log = logging.getLogger("runner")

REPO = Path(__file__).resolve().parent.parent
# Every group that configures a component; each is built once up front so a wrong value fails
# before any work.
GROUPS = ["corpus", "acquire", "docling", "executor", "process", "service", "extraction", "dataset",
          "model", "lora", "evaluate"]
HANDLED = (StageError, ServiceUnavailable, ModelUnavailable)


def _quiet_libraries() -> None:
    # Per-document and per-request INFO lines from libraries drown the pipeline's own log.
    for name in ("docling", "httpx", "mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _public_config(cfg: DictConfig, run_dir: Path) -> dict:
    """The resolved config with secrets redacted, written (private) to the run directory. The
    secrets it holds, by key or inside URLs, are scrubbed from every later log line, report and
    tag, and from the copies Hydra wrote (a key on the command line must not stay there)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    secrets.register(secrets.secret_values(resolved))
    secrets.install_log_filter()
    hydra = HydraConfig.get()
    copies = list((run_dir / ".hydra").glob("*.yaml"))
    if hydra.mode and hydra.mode.name == "MULTIRUN":
        copies.append(Path(hydra.sweep.dir) / "multirun.yaml")
    for f in copies:
        secrets.scrub_file(f)
    public = secrets.redact(resolved)
    path = run_dir / "config.resolved.yaml"
    write_text(path, OmegaConf.to_yaml(OmegaConf.create(public)))
    os.chmod(path, 0o600)
    return public


def _close_dead_run(run_dir: Path, tracker) -> None:
    """A run that died (kill -9, power) left its MLflow run RUNNING: close it as FAILED."""
    state = run_dir / pipeline.STATE_DIR / "run.json"
    if not state.is_file():
        return
    prev = json.loads(state.read_text(encoding="utf-8"))
    pid = prev.get("pid")
    alive = False
    if pid and pid != os.getpid():
        try:
            os.kill(pid, 0)
            alive = True
        except (ProcessLookupError, PermissionError):
            pass
    if prev.get("run_id") and not alive and tracker.close_stale(
            prev["run_id"], f"process {pid} died without ending the run"):
        log.warning("MLflow run %s of an earlier process (%s) was left RUNNING; closed as FAILED",
                    prev["run_id"], pid)


def _resume_hint(run_dir: Path) -> str:
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra.run.dir=")]
    return secrets.scrub(" ".join(["python -m runner", f"hydra.run.dir={run_dir}", *overrides]))


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
    except ModelUnavailable as exc:
        log.error("%s", exc)
        sys.exit(2)

    tracker = build(cfg.tracking, "tracking")
    _close_dead_run(run_dir, tracker)
    tags = {"hardware.profile": hardware.name, "hardware.accelerator": hardware.accelerator,
            "hardware.memory_gb": str(hardware.memory_gb),
            "hardware.scaled_down": str(hardware.scaled).lower(),
            "service.configured": str(cfg.service.name), "model": str(cfg.model.name),
            "stages": ",".join(stages), "run_dir": str(run_dir),
            "git_commit": git_commit(REPO) or "unknown"}
    info = {"run directory": run_dir, "MLflow run": None,
            "hardware": f"{hardware.name} ({hardware.accelerator}, "
                        f"{hardware.memory_gb} GB{', scaled down' if hardware.scaled else ''})",
            "service": cfg.service.name, "model": cfg.model.name}
    metrics: dict = {}
    outcome, reason, stage = "FINISHED", "", None
    resources, cancel = Resources(), threading.Event()
    with tracker.start(params=public_cfg, tags=tags):
        info["MLflow run"] = tracker.run_id
        write_json(run_dir / pipeline.STATE_DIR / "run.json", {"pid": os.getpid(), "run_id": tracker.run_id})
        # A report from an earlier run must never stand for this one, even if this one is killed.
        write_report(run_dir, {}, {**info, "status": "RUNNING"})
        tracker.log_metrics({"hardware/" + k: v for k, v in hardware.as_dict().items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)})
        try:
            with stop_on_signals(cancel):
                metrics = pipeline.run(run_dir, cfg, tracker, stages, resources, cancel)
        except (Interrupted, KeyboardInterrupt) as exc:
            outcome, stage = "KILLED", getattr(exc, "stage", None)
            reason = "interrupted (Ctrl-C or SIGTERM)"
        except HANDLED as exc:
            outcome, stage, reason = "FAILED", getattr(exc, "stage", None), str(exc)
            log.error("%s", exc)
        except Exception as exc:  # a bug: the run still ends with a true report and status
            outcome, reason = "FAILED", f"{type(exc).__name__}: {exc}"
            log.exception("unexpected error")
        finally:
            with stop_on_signals(cancel, shielded=True):
                resources.close()
                metrics = metrics or _saved_metrics(run_dir)
                if outcome != "FINISHED":
                    info["status"] = f"{outcome} in stage {stage}" if stage else outcome
                    info["reason"] = reason
                report = write_report(run_dir, metrics, info)
                for path in (run_dir / "config.resolved.yaml", report, run_dir / "metrics.json"):
                    tracker.log_artifact(path)
                _log_dataset_sample(run_dir, tracker)
                failure_tags = {"failure.stage": stage or "", "failure.reason": reason[:500]}
                tracker.finish(outcome, failure_tags if outcome != "FINISHED" else None)
    print(f"\nRun directory: {run_dir}")
    print(f"MLflow run:    {tracker.run_id} (experiment '{tracker.experiment}' at {tracker.uri})")
    print(f"Open the UI:   {tracker.ui_hint()}")
    if outcome == "KILLED":
        print(f"Interrupted{f' in stage {stage}' if stage else ''}; finished work is kept. "
              f"Resume with: {_resume_hint(run_dir)}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        # Worker threads still waiting on a hung server must not hold the exit.
        os._exit(130)
    if outcome == "FAILED":
        sys.exit(1)
    value = metrics.get(cfg.optimized_metric)
    return float(value) if value is not None else None


def _saved_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _log_dataset_sample(run_dir: Path, tracker) -> None:
    train = run_dir / "dataset" / "train.jsonl"
    if train.is_file():
        sample = run_dir / "dataset_sample.jsonl"
        with open(train, encoding="utf-8") as fh:
            write_jsonl(sample, (json.loads(line) for _, line in zip(range(20), fh)))
        tracker.log_artifact(sample)
