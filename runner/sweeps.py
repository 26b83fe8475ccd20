"""Runs as MLflow shows them: a readable name, the scope, and for a sweep (``-m``) the sweep id
and a parent run that groups its jobs.

Hydra's basic launcher runs the jobs one after another in this process; the joblib launcher
(``hydra/launcher=local_parallel``) in worker processes. Either way the parent run is keyed by the
sweep directory (``MLflowTracker.sweep_parent``), and ``ParentRunCallback`` (registered in
``conf/config.yaml`` under ``hydra.callbacks``) opens it before the first job and closes it after
the last.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from components.files import write_json

log = logging.getLogger(__name__)

KEYS_FILE = "sweep_keys.json"
# Overrides that say where things go, not what the job is: never part of a name.
_NOT_NAMING = ("hydra.", "cache_dir", "tracking.")


@dataclass(frozen=True)
class Sweep:
    dir: Path
    id: str  # the sweep directory as given (outputs/multirun/<date>/<time>)
    job: int
    keys: tuple[str, ...]  # the swept keys
    overrides: tuple[str, ...]  # this job's values of the swept keys (key=value)

    @property
    def parent_name(self) -> str:
        return f"sweep {self.id.rstrip('/').split('multirun/')[-1]} " + " ".join(self.keys)


def swept_keys(hydra: DictConfig) -> list[str]:
    """Keys a multirun varies: command-line sweeps (``a=1,2``, ``range(...)``) and the
    sweeper's own search space (Optuna's ``hydra.sweeper.params``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = OmegaConf.to_container(hydra.overrides.task, resolve=False) or []
    keys = [o.get_key_element() for o in OverridesParser.create().parse_overrides(task)
            if o.is_sweep_override()]
    params = OmegaConf.select(hydra, "sweeper.params", default=None)
    if params:
        keys += [str(k) for k in params if k not in keys]
    return keys


def current() -> Sweep | None:
    """The sweep this job belongs to; None for a single run."""
    hc = HydraConfig.get()
    if not (hc.mode and hc.mode.name == "MULTIRUN"):
        return None
    sweep_dir = Path(hc.sweep.dir)
    # The launching command's sweeps: recorded by the callback, or in the basic sweeper's copy.
    record, multirun = sweep_dir / KEYS_FILE, sweep_dir / "multirun.yaml"
    if record.is_file():
        keys = json.loads(record.read_text(encoding="utf-8"))["keys"]
    else:
        keys = swept_keys(OmegaConf.load(multirun).hydra) if multirun.is_file() else []
    keys += [str(k) for k in (OmegaConf.select(hc, "sweeper.params", default=None) or {}) if k not in keys]
    mine = [o for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") in keys]
    return Sweep(dir=sweep_dir.resolve(), id=str(hc.sweep.dir), job=int(hc.job.num),
                 keys=tuple(keys), overrides=tuple(mine))


def scope(stages: list[str], all_stages: list[str]) -> str:
    return "full" if set(all_stages) <= set(stages) else "partial"


def run_name(cfg: DictConfig, stages: list[str], all_stages: list[str], sweep: Sweep | None) -> str:
    """``smollm2-135m r8 full 2026-05-01 14:03``, a partial run names its stages, a sweep job
    its number and swept values (``#1 lora.rank=16``)."""
    if sweep is not None:
        rest = " ".join(o for o in sweep.overrides if not o.startswith(_NOT_NAMING))
        return f"#{sweep.job} {rest}".strip()
    what = (f"r{cfg.lora.rank} full" if scope(stages, all_stages) == "full"
            else "+".join(stages))
    return f"{cfg.model.name} {what} {time.strftime('%Y-%m-%d %H:%M')}"


def parallel_jobs() -> int:
    """How many jobs of this sweep run at once on this machine (joblib's ``n_jobs``; 1 for the
    basic launcher and a single run): each takes that share of the machine."""
    try:
        hc = HydraConfig.get()
    except ValueError:
        return 1
    launcher = OmegaConf.select(hc, "launcher", default=None)
    if not (hc.mode and hc.mode.name == "MULTIRUN") or launcher is None \
            or "joblib" not in str(launcher.get("_target_", "")):
        return 1
    n = int(launcher.get("n_jobs") or 1)
    cpus = os.cpu_count() or 1
    # joblib's convention: -1 is every CPU, -2 all but one.
    return max(1, cpus + 1 + n if n < 0 else n)


def _tracker(config: DictConfig):
    from components.tracking import MLflowTracker

    t = config.tracking
    if "MLFLOW" not in str(t.get("_target_", "")).upper():
        return None
    # hydra.runtime.cwd: the ${hydra:...} resolver is not set up yet in the launching process.
    return MLflowTracker(uri=t.uri, experiment=t.experiment, root=config.hydra.runtime.cwd)


def parent_tags(sweep_id: str, keys: list[str], stages: list[str], all_stages: list[str]) -> dict:
    return {"sweep.id": sweep_id, "sweep.role": "parent", "sweep.keys": ",".join(keys),
            "scope": scope(stages, all_stages), "stages": ",".join(stages)}


class ParentRunCallback(Callback):
    """Opens the sweep's parent run before any job starts and closes it after the last one,
    with the jobs' statuses and the optimized metric as its description."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from runner.pipeline import ORDER

        sweep = Sweep(dir=Path(config.hydra.runtime.cwd) / str(config.hydra.sweep.dir),
                      id=str(config.hydra.sweep.dir), job=-1, keys=tuple(swept_keys(config.hydra)),
                      overrides=())
        # Jobs name themselves by these keys; Optuna's sweeper writes no multirun.yaml to read.
        write_json(sweep.dir / KEYS_FILE, {"keys": list(sweep.keys)})
        tracker = _tracker(config)
        if tracker is None:
            return
        run_id = tracker.sweep_parent(sweep.dir, sweep.parent_name,
                                      parent_tags(sweep.id, list(sweep.keys), list(config.stages), ORDER))
        log.info("MLflow parent run of this sweep: %s", run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        tracker = _tracker(config)
        if tracker is None:
            return
        status = tracker.end_sweep_parent(Path(config.hydra.runtime.cwd) / str(config.hydra.sweep.dir),
                                          metric=str(config.optimized_metric))
        if status:
            log.info("MLflow parent run of this sweep: %s", status)
