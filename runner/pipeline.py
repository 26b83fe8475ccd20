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
from runner.stage import Interrupted, Resources, StageContext, StageError

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


def transient_failures(name: str, metrics: dict) -> int:
    """Work a stage could not finish for a reason that may pass (a server down, a timeout): such
    a stage is never up to date and never shared, so the next run retries exactly that work."""
    return int(metrics.get(f"{name}/transient_failures", 0) or 0)


def _up_to_date(ctx: StageContext, stage: ModuleType, name: str, fp: str) -> dict | None:
    p = _state_path(ctx.run_dir, name)
    if not p.is_file():
        return None
    state = json.loads(p.read_text(encoding="utf-8"))
    if (state.get("status") != "done" or state.get("fingerprint") != fp
            or transient_failures(name, state.get("metrics", {}))):
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


def _to_cache(ctx: StageContext, d: Path | None, stage: ModuleType, name: str, metrics: dict) -> None:
    if d is None or d.exists() or transient_failures(name, metrics):
        return
    try:
        with staged_dir(d, on_exists="keep", marker="metrics.json") as tmp:
            for out in stage.OUTPUTS:
                _copy(ctx.path(out), tmp / out)
            write_json(tmp / "metrics.json", metrics)
    except OSError as exc:  # the disk is full: the run goes on without sharing
        log.warning("stage cache: could not store %s: %s", d, exc)


def _check_provenance(run_dir: Path, cfg: DictConfig, tracker: Tracker, stage: ModuleType,
                      name: str) -> None:
    """Refuse inputs that the stage producing them made under another config or code, or did
    not finish: evaluating rank-8 adapters under ``lora.rank=4`` would log wrong numbers."""
    made_by = producers()
    for inp in stage.INPUTS:
        src = made_by.get(inp)
        state_path = _state_path(run_dir, src) if src else None
        if state_path is None or not state_path.is_file():
            continue  # made outside the pipeline (by hand): nothing to check against
        state = json.loads(state_path.read_text(encoding="utf-8"))
        fix = f"re-run it (e.g. stages=[{src},{name}])"
        if state.get("status") != "done":
            raise StageError(f"stage '{name}': {inp} is from a '{src}' stage that did not finish "
                             f"(interrupted or failed); {fix}")
        if state.get("outputs", {}).get(inp) != hash_path(run_dir / inp):
            raise StageError(f"stage '{name}': {inp} was changed after the '{src}' stage made it; {fix}")
        if fingerprint(load_stage(src), context(src, run_dir, cfg, tracker)) != state.get("fingerprint"):
            raise StageError(f"stage '{name}': {inp} was made by the '{src}' stage under another "
                             f"config or code than this run's; {fix}")


def _done_state(ctx: StageContext, stage: ModuleType, fp: str, metrics: dict, seconds: float,
                **extra) -> dict:
    return {"status": "done", "fingerprint": fp, "metrics": metrics, "seconds": round(seconds, 3),
            "outputs": {o: hash_path(ctx.path(o)) for o in stage.OUTPUTS}, **extra}


def run(run_dir: Path, cfg: DictConfig, tracker: Tracker, names: list[str],
        resources: Resources | None = None, cancel: threading.Event | None = None) -> dict[str, float]:
    """Run the named stages in pipeline order; return all metrics (this run's and earlier).

    A stage that fails raises ``StageError`` (or ``Interrupted``) with ``.stage`` set to its
    name; ``.state/last_run.json`` says what each stage did, the failing one included.
    """
    for n in names:
        load_stage(n)
    resources = resources or Resources()
    ordered = [n for n in ORDER if n in names]
    metrics_path = run_dir / "metrics.json"
    metrics: dict[str, float] = (json.loads(metrics_path.read_text(encoding="utf-8"))
                                 if metrics_path.is_file() else {})
    timings: dict[str, dict] = {}
    try:
        for name in ordered:
            t0 = time.perf_counter()
            try:
                stage_metrics = _run_one(name, run_dir, cfg, tracker, resources, cancel, timings, t0)
            except BaseException as exc:
                status = "interrupted" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "failed"
                timings[name] = {"status": status, "seconds": round(time.perf_counter() - t0, 3)}
                if isinstance(exc, (StageError, Interrupted)):
                    exc.stage = name
                    raise
                if isinstance(exc, KeyboardInterrupt):
                    stop = Interrupted(f"stage {name}: interrupted")
                    stop.stage = name
                    raise stop from None
                if not isinstance(exc, Exception):
                    raise
                log.exception("stage %s: unexpected error", name)
                err = StageError(f"stage {name} failed: {type(exc).__name__}: {exc}")
                err.stage = name
                raise err from exc
            tracker.log_metrics(stage_metrics)
            metrics.update(stage_metrics)
            write_json(metrics_path, metrics)
    finally:
        write_json(run_dir / STATE_DIR / "last_run.json", timings)
    return metrics


def _run_one(name: str, run_dir: Path, cfg: DictConfig, tracker: Tracker, resources: Resources,
             cancel: threading.Event | None, timings: dict, t0: float) -> dict[str, float]:
    stage = load_stage(name)
    ctx = context(name, run_dir, cfg, tracker, resources, cancel)
    for inp in stage.INPUTS:
        if not ctx.path(inp).exists():
            src = producers().get(inp, "?")
            raise StageError(f"stage '{name}' needs {inp} in {run_dir}, which the "
                             f"'{src}' stage writes; run it first (e.g. stages=[{src},{name}])")
    fp = fingerprint(stage, ctx)
    state = _up_to_date(ctx, stage, name, fp)
    if state is not None:
        log.info("stage %s: up to date, skipped", name)
        timings[name] = {"status": "skipped", "seconds": 0.0}
        return state["metrics"]
    _check_provenance(run_dir, cfg, tracker, stage, name)
    cache = _cache_dir(cfg, stage, name, fp)
    cached = _from_cache(ctx, cache, stage)
    if cached is not None:
        log.info("stage %s: outputs reused from the stage cache", name)
        write_json(_state_path(run_dir, name), _done_state(ctx, stage, fp, cached, 0.0, cached=True))
        timings[name] = {"status": "cached", "seconds": round(time.perf_counter() - t0, 3)}
        return cached
    log.info("stage %s: running", name)
    # Mark it running first: a crash mid-stage must not leave it looking complete, and a later
    # stage must not trust what it left.
    write_json(_state_path(run_dir, name), {"status": "running", "fingerprint": fp})
    stage_metrics = stage.run(ctx)
    seconds = time.perf_counter() - t0
    write_json(_state_path(run_dir, name), _done_state(ctx, stage, fp, stage_metrics, seconds))
    timings[name] = {"status": "ran", "seconds": round(seconds, 3)}
    _to_cache(ctx, cache, stage, name, stage_metrics)
    transient = transient_failures(name, stage_metrics)
    if transient:
        log.warning("stage %s: done in %.1fs with %d transient failures; the next run in this "
                    "directory retries them", name, seconds, transient)
    else:
        log.info("stage %s: done in %.1fs", name, seconds)
    return stage_metrics
