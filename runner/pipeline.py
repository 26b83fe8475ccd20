"""Run stages in order, skipping those whose outputs are complete and whose fingerprint (code,
declared config, input hashes) is unchanged, and keeping every stage's final metrics in
``metrics.json``."""
from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from types import ModuleType

from omegaconf import DictConfig

from components.files import hash_path, staged_dir, write_json
from components.tracking import Tracker
from runner.config import view
from runner.fingerprint import fingerprint
from runner.stage import Resources, StageContext, StageError

log = logging.getLogger(__name__)

ORDER = ["acquire", "convert", "process", "extract", "dataset", "finetune", "evaluate"]
STATE_DIR = ".state"


def load_stage(name: str) -> ModuleType:
    if name not in ORDER:
        raise StageError(f"unknown stage '{name}'; stages are: {', '.join(ORDER)}")
    return importlib.import_module(f"runner.stages.{name}")


def producers() -> dict[str, str]:
    return {out: name for name in ORDER for out in load_stage(name).OUTPUTS}


def context(name: str, run_dir: Path, cfg: DictConfig, tracker: Tracker,
            resources: Resources | None = None, cancel: threading.Event | None = None) -> StageContext:
    """The context stage ``name`` runs with: its declared config keys and nothing else."""
    return StageContext(run_dir=run_dir, cfg=view(cfg, load_stage(name).CONFIG), tracker=tracker,
                        resources=resources or Resources(), cancel=cancel or threading.Event())


def _state_path(run_dir: Path, name: str) -> Path:
    return run_dir / STATE_DIR / f"{name}.json"


def _up_to_date(ctx: StageContext, stage: ModuleType, name: str, fp: str) -> dict | None:
    p = _state_path(ctx.run_dir, name)
    if not p.is_file():
        return None
    state = json.loads(p.read_text(encoding="utf-8"))
    if state.get("fingerprint") != fp:
        return None
    for out in stage.OUTPUTS:
        if not ctx.path(out).exists() or state.get("outputs", {}).get(out) != hash_path(ctx.path(out)):
            return None
    return state


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


def _cache_dir(cfg: DictConfig, stage: ModuleType, name: str, fp: str) -> Path | None:
    if not cfg.get("stage_cache", False) or not getattr(stage, "STAGE_CACHE", True):
        return None
    return Path(cfg.cache_dir) / "stages" / name / fp[:32]


def _from_cache(ctx: StageContext, d: Path | None, stage: ModuleType) -> dict | None:
    """Outputs another run made from the same inputs and config (sweeps share upstream work)."""
    if d is None or not (d / "metrics.json").is_file():
        return None
    for out in stage.OUTPUTS:
        target = ctx.path(out)
        tmp = target.with_name(target.name + ".from-cache")
        shutil.rmtree(tmp, ignore_errors=True)
        _copy(d / out, tmp)
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)
    return json.loads((d / "metrics.json").read_text(encoding="utf-8"))


def _to_cache(ctx: StageContext, d: Path | None, stage: ModuleType, metrics: dict) -> None:
    if d is None or d.exists():
        return
    try:
        with staged_dir(d, on_exists="keep", marker="metrics.json") as tmp:
            for out in stage.OUTPUTS:
                _copy(ctx.path(out), tmp / out)
            write_json(tmp / "metrics.json", metrics)
    except OSError as exc:  # the disk is full: the run goes on without sharing
        log.warning("stage cache: could not store %s: %s", d, exc)


def run(run_dir: Path, cfg: DictConfig, tracker: Tracker, names: list[str],
        resources: Resources | None = None, cancel: threading.Event | None = None) -> dict[str, float]:
    """Run the named stages in pipeline order; return all metrics (this run's and earlier)."""
    for n in names:
        load_stage(n)
    resources = resources or Resources()
    ordered = [n for n in ORDER if n in names]
    metrics_path = run_dir / "metrics.json"
    metrics: dict[str, float] = (json.loads(metrics_path.read_text(encoding="utf-8"))
                                 if metrics_path.is_file() else {})
    timings: dict[str, dict] = {}
    for name in ordered:
        stage = load_stage(name)
        ctx = context(name, run_dir, cfg, tracker, resources, cancel)
        for inp in stage.INPUTS:
            if not ctx.path(inp).exists():
                src = producers().get(inp, "?")
                raise StageError(f"stage '{name}' needs {inp} in {run_dir}, which the "
                                 f"'{src}' stage writes; run it first (e.g. stages=[{src},{name}])")
        fp = fingerprint(stage, ctx)
        state = _up_to_date(ctx, stage, name, fp)
        cache = _cache_dir(cfg, stage, name, fp)
        t0 = time.perf_counter()
        cached = None if state is not None else _from_cache(ctx, cache, stage)
        if state is not None:
            log.info("stage %s: up to date, skipped", name)
            stage_metrics = state["metrics"]
            timings[name] = {"status": "skipped", "seconds": 0.0}
        elif cached is not None:
            log.info("stage %s: outputs reused from the stage cache", name)
            stage_metrics = cached
            write_json(_state_path(run_dir, name), {
                "fingerprint": fp, "metrics": stage_metrics, "seconds": 0.0, "cached": True,
                "outputs": {o: hash_path(ctx.path(o)) for o in stage.OUTPUTS}})
            timings[name] = {"status": "cached", "seconds": round(time.perf_counter() - t0, 3)}
        else:
            log.info("stage %s: running", name)
            # Drop the old state first: a crash mid-stage must not leave it looking complete.
            _state_path(run_dir, name).unlink(missing_ok=True)
            stage_metrics = stage.run(ctx)
            seconds = time.perf_counter() - t0
            write_json(_state_path(run_dir, name), {
                "fingerprint": fp, "metrics": stage_metrics, "seconds": round(seconds, 3),
                "outputs": {o: hash_path(ctx.path(o)) for o in stage.OUTPUTS}})
            timings[name] = {"status": "ran", "seconds": round(seconds, 3)}
            _to_cache(ctx, cache, stage, stage_metrics)
            log.info("stage %s: done in %.1fs", name, seconds)
        tracker.log_metrics(stage_metrics)
        metrics.update(stage_metrics)
        write_json(metrics_path, metrics)
    write_json(run_dir / STATE_DIR / "last_run.json", timings)
    return metrics
