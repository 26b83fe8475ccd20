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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from components import secrets
from components.files import read_jsonl, write_json, write_text
from components.llm.services import ServiceUnavailable
from components.tracking import git_commit
from components.training.models import ModelUnavailable
from runner import pipeline, sweeps
from runner.config import ConfigError, resolve_hardware
from runner.interrupts import stop_on_signals
from runner.report import LOSS_SERIES, summary
from runner.report_html import write_report
from runner.stage import Interrupted, Resources, StageError

log = logging.getLogger("runner")

REPO = Path(__file__).resolve().parent.parent
# Every group that configures a component; each is built once up front so a wrong value fails
# before any work.
GROUPS = ["corpus", "acquire", "docling", "executor", "process", "service", "extraction", "dataset",
          "model", "lora", "finetune", "evaluate"]
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
    """The recipe: every component built once from its group, tracking started, the stages run
    (inside ``task_wrapper``), the report written; the metric a sweep optimises returned."""
    _quiet_libraries()
    run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    stages, sweep = list(cfg.stages), sweeps.current()
    resources = Resources()
    hardware, components = _build(cfg, resources)
    public_cfg = _public_config(cfg, run_dir)
    _check_early(components, stages)

    tracker = resources.component("tracking", cfg.tracking)  # after the secrets are known
    _close_dead_run(run_dir, tracker)
    # A sweep's jobs are children of one parent run, made by whichever comes first.
    parent = sweep and tracker.sweep_parent(sweep.dir, sweep.parent_name, sweeps.parent_tags(
        sweep.id, list(sweep.keys), stages, pipeline.ORDER))
    info = {"run directory": run_dir, "MLflow run": None,
            "hardware": f"{hardware.name} ({hardware.accelerator}, "
                        f"{hardware.memory_gb} GB{', scaled down' if hardware.scaled else ''})",
            "service": cfg.service.name, "model": cfg.model.name}
    with tracker.start(params=public_cfg, tags=_tags(cfg, hardware, stages, run_dir, sweep),
                       run_name=sweeps.run_name(cfg, stages, pipeline.ORDER, sweep),
                       parent_run_id=parent):
        info["MLflow run"] = tracker.run_id
        write_json(run_dir / pipeline.STATE_DIR / "run.json", {"pid": os.getpid(), "run_id": tracker.run_id})
        # A report from an earlier run must never stand for this one, even if this one is killed.
        write_report(run_dir, {}, {**info, "status": "RUNNING"}, pictures=False)
        with task_wrapper(cfg, run_dir, tracker, resources, info, sweep) as task:
            task.metrics = pipeline.run(run_dir, cfg, tracker, stages, resources, task.cancel)
    return _exit(cfg, run_dir, tracker, task, sweep)


def _build(cfg: DictConfig, resources: Resources):
    """The hardware profile and every group's component, each built once (the stages get the
    same objects through ``resources``); a wrong key or value exits 2 before any work."""
    try:
        # Jobs of a parallel sweep each take their share of the machine.
        hardware = resolve_hardware(cfg, jobs=sweeps.parallel_jobs())
        return hardware, {g: resources.component(g, cfg[g]) for g in GROUPS}
    except ConfigError as exc:
        log.error("config: %s", exc)
        sys.exit(2)


def _check_early(components: dict, stages: list[str]) -> None:
    """Before any expensive stage: a model or a server that cannot be had fails the run now."""
    try:
        if {"finetune", "evaluate"} & set(stages):
            components["model"].check()
        if "extract" in stages and components["service"].chain_config.on_unavailable == "fail":
            components["service"].start()  # service.on_unavailable=fail: fail now, not after convert
            components["service"].close()
    except (ModelUnavailable, ServiceUnavailable) as exc:
        log.error("%s", exc)
        sys.exit(2)


@dataclass
class Task:
    cancel: threading.Event = field(default_factory=threading.Event)
    metrics: dict = field(default_factory=dict)
    outcome: str = "FINISHED"  # FINISHED | FAILED | KILLED
    stage: str | None = None
    reason: str = ""


@contextmanager
def task_wrapper(cfg: DictConfig, run_dir: Path, tracker, resources: Resources, info: dict,
                 sweep) -> Iterator[Task]:
    """Around the stages: Ctrl-C and SIGTERM stop them (finished work kept), a stage's error or
    a bug ends the run FAILED with its reason, and whatever happened the shared resources close,
    the report and MLflow record say how the run ended."""
    task = Task()
    try:
        with stop_on_signals(task.cancel):
            yield task
    except (Interrupted, KeyboardInterrupt) as exc:
        task.outcome, task.stage = "KILLED", getattr(exc, "stage", None)
        task.reason = "interrupted (Ctrl-C or SIGTERM)"
    except HANDLED as exc:
        task.outcome, task.stage, task.reason = "FAILED", getattr(exc, "stage", None), str(exc)
        log.error("%s", exc)
    except Exception as exc:  # a bug: the run still ends with a true report and status
        task.outcome, task.reason = "FAILED", f"{type(exc).__name__}: {exc}"
        log.exception("unexpected error")
    finally:
        with stop_on_signals(task.cancel, shielded=True):
            resources.close()
            task.metrics = task.metrics or _saved_metrics(run_dir)
            if task.outcome != "FINISHED":
                info["status"] = f"{task.outcome} in stage {task.stage}" if task.stage else task.outcome
                info["reason"] = task.reason
            _record(run_dir, tracker, task.metrics, info)
            failure_tags = {"failure.stage": task.stage or "", "failure.reason": task.reason[:500]}
            tracker.finish(task.outcome, failure_tags if task.outcome != "FINISHED" else None)
            if sweep is not None and task.outcome != "FINISHED":
                # Hydra stops the sweep at a failed job: its parent run ends with it.
                tracker.end_sweep_parent(sweep.dir, cfg.optimized_metric, task.outcome)


def _exit(cfg: DictConfig, run_dir: Path, tracker, task: Task, sweep) -> float | None:
    """Where to look, then the exit: 130 when stopped, 1 when failed, else the optimised metric."""
    print(f"\nRun directory: {run_dir}")
    print(f"MLflow run:    {tracker.run_id} (experiment '{tracker.experiment}' at {tracker.uri})")
    print(f"Open the UI:   {tracker.ui_hint()}")
    if task.outcome == "KILLED":
        print(f"Interrupted{f' in stage {task.stage}' if task.stage else ''}; finished work is kept. "
              f"Resume with: {_resume_hint(run_dir)}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        # Worker threads still waiting on a hung server must not hold the exit.
        os._exit(130)
    if task.outcome == "FAILED":
        sys.exit(1)
    value = task.metrics.get(cfg.optimized_metric)
    if value is None and sweep is not None:
        log.warning("optimized_metric %s is not among this run's metrics; a sweeper has nothing "
                    "to compare", cfg.optimized_metric)
    return float(value) if value is not None else None


def _tags(cfg: DictConfig, hardware, stages: list[str], run_dir: Path, sweep) -> dict[str, str]:
    # Hardware values are tags (and params, under hw.*), not metrics that crowd the charts.
    hw = {f"hardware.{'scaled_down' if k == 'scaled' else k}": str(v).lower() if isinstance(v, bool) else str(v)
          for k, v in hardware.as_dict().items() if k not in ("name", "warnings")}
    tags = {**hw, "hardware.profile": hardware.name, "service.configured": str(cfg.service.name),
            "model": str(cfg.model.name), "stages": ",".join(stages),
            "scope": sweeps.scope(stages, pipeline.ORDER), "run_dir": str(run_dir),
            "git_commit": git_commit(REPO) or "unknown"}
    if sweep is not None:
        tags.update({"sweep.id": sweep.id, "sweep.job": str(sweep.job)})
    return tags


def _record(run_dir: Path, tracker, metrics: dict, info: dict) -> None:
    """The report (loss curves from the run's metric history), its artifacts, the headline as
    the run's description, and the dataset splits."""
    history = tracker.metric_history(LOSS_SERIES.values())
    report = write_report(run_dir, metrics, info,
                          {label: history.get(key) for label, key in LOSS_SERIES.items()})
    for path in (run_dir / "config.resolved.yaml", report, run_dir / "report.html",
                 run_dir / "metrics.json", run_dir / "plots"):
        tracker.log_artifact(path)
    tracker.set_description(summary(run_dir, metrics, info))
    _log_dataset(run_dir, tracker)


def _saved_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


SPLIT_CONTEXT = {"train": "training", "valid": "validation", "test": "test"}


def _log_dataset(run_dir: Path, tracker) -> None:
    """The splits as the run's dataset inputs, and a sample of train as a table (the system
    prompt, the same on every row, is left out of the table)."""
    for split, context in SPLIT_CONTEXT.items():
        path = run_dir / "dataset" / f"{split}.jsonl"
        if not path.is_file():
            continue
        rows = [_flat_example(r) for r in read_jsonl(path)]
        try:
            tracker.log_dataset(rows, path, split, context)
        except Exception as exc:  # a dataset MLflow cannot profile must not cost the run's record
            log.warning("MLflow: split %s not logged as a dataset input: %s", split, exc)
        if split == "train":
            tracker.log_table(rows[:50], "dataset_sample.json")


def _flat_example(r: dict) -> dict:
    msgs = {m.get("role"): m.get("content", "") for m in r.get("messages", [])}
    meta = r.get("meta") or {}
    return {"question": msgs.get("user", ""), "answer": msgs.get("assistant", ""),
            "kind": str(meta.get("kind", "")), "doc_id": str(meta.get("doc_id", ""))}
