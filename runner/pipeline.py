"""Run stages in order, skipping those whose outputs are complete and whose inputs and config
are unchanged (content hashes), and keeping every stage's final metrics in ``metrics.json``."""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import ModuleType

from omegaconf import OmegaConf

from components.files import write_json
from runner.stage import StageContext, StageError

log = logging.getLogger(__name__)

ORDER = ["acquire", "convert", "process", "extract", "dataset", "finetune", "evaluate"]
STATE_DIR = ".state"
# Bump when a change to a stage's code must invalidate outputs made by the old code.
PIPELINE_VERSION = "1"


def load_stage(name: str) -> ModuleType:
    if name not in ORDER:
        raise StageError(f"unknown stage '{name}'; stages are: {', '.join(ORDER)}")
    return importlib.import_module(f"runner.stages.{name}")


def producers() -> dict[str, str]:
    return {out: name for name in ORDER for out in load_stage(name).OUTPUTS}


def hash_path(path: Path) -> str:
    """Content hash of a file, or of a folder's relative names and file contents."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(f.relative_to(path if path.is_dir() else path.parent).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def fingerprint(stage: ModuleType, ctx: StageContext) -> str:
    # The stage's own code is part of its identity: a changed stage does not reuse stale outputs.
    code = hashlib.sha256(Path(stage.__file__).read_bytes()).hexdigest()
    parts: dict = {"v": PIPELINE_VERSION, "stage": stage.__name__, "code": code}
    parts["config"] = {k: OmegaConf.to_container(ctx.cfg[k], resolve=True) if k in ctx.cfg else None
                       for k in stage.CONFIG_KEYS}
    parts["inputs"] = {i: hash_path(ctx.path(i)) for i in stage.INPUTS}
    parts["optional"] = {i: hash_path(ctx.path(i)) if ctx.path(i).exists() else None
                         for i in getattr(stage, "OPTIONAL_INPUTS", [])}
    extra = getattr(stage, "fingerprint_extra", None)
    if extra:
        parts["extra"] = extra(ctx)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _state_path(ctx: StageContext, name: str) -> Path:
    return ctx.path(STATE_DIR) / f"{name}.json"


def _up_to_date(ctx: StageContext, stage: ModuleType, name: str, fp: str) -> dict | None:
    p = _state_path(ctx, name)
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


def _cache_dir(ctx: StageContext, stage: ModuleType, name: str, fp: str) -> Path | None:
    if not ctx.cfg.get("stage_cache", False) or not getattr(stage, "STAGE_CACHE", True):
        return None
    return Path(ctx.cfg.cache_dir) / "stages" / name / fp[:32]


def _from_cache(ctx: StageContext, stage: ModuleType, name: str, fp: str) -> dict | None:
    """Outputs another run made from the same inputs and config (sweeps share upstream work)."""
    d = _cache_dir(ctx, stage, name, fp)
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


def _to_cache(ctx: StageContext, stage: ModuleType, name: str, fp: str, metrics: dict) -> None:
    d = _cache_dir(ctx, stage, name, fp)
    if d is None or d.exists():
        return
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{d.name}.", dir=d.parent))
    try:
        for out in stage.OUTPUTS:
            _copy(ctx.path(out), tmp / out)
        write_json(tmp / "metrics.json", metrics)
        os.replace(tmp, d)
    except OSError:  # another job stored it first, or the disk is full: the run goes on
        shutil.rmtree(tmp, ignore_errors=True)


def run(ctx: StageContext, names: list[str], force: bool = False) -> dict[str, float]:
    """Run the named stages in pipeline order; return all metrics (this run's and earlier)."""
    wanted = [load_stage(n) and n for n in names]
    ordered = [n for n in ORDER if n in wanted]
    metrics_path = ctx.path("metrics.json")
    metrics: dict[str, float] = (json.loads(metrics_path.read_text(encoding="utf-8"))
                                 if metrics_path.is_file() else {})
    timings: dict[str, dict] = {}
    for name in ordered:
        stage = load_stage(name)
        for inp in stage.INPUTS:
            if not ctx.path(inp).exists():
                src = producers().get(inp, "?")
                raise StageError(f"stage '{name}' needs {inp} in {ctx.run_dir}, which the "
                                 f"'{src}' stage writes; run it first (e.g. stages=[{src},{name}])")
        fp = fingerprint(stage, ctx)
        state = None if force else _up_to_date(ctx, stage, name, fp)
        t0 = time.perf_counter()
        cached = None if force or state is not None else _from_cache(ctx, stage, name, fp)
        if state is not None:
            log.info("stage %s: up to date, skipped", name)
            stage_metrics = state["metrics"]
            timings[name] = {"status": "skipped", "seconds": 0.0}
        elif cached is not None:
            log.info("stage %s: outputs reused from the stage cache", name)
            stage_metrics = cached
            write_json(_state_path(ctx, name), {
                "fingerprint": fp, "metrics": stage_metrics, "seconds": 0.0, "cached": True,
                "outputs": {o: hash_path(ctx.path(o)) for o in stage.OUTPUTS}})
            timings[name] = {"status": "cached", "seconds": round(time.perf_counter() - t0, 3)}
        else:
            log.info("stage %s: running", name)
            # Drop the old state first: a crash mid-stage must not leave it looking complete.
            _state_path(ctx, name).unlink(missing_ok=True)
            stage_metrics = stage.run(ctx)
            seconds = time.perf_counter() - t0
            write_json(_state_path(ctx, name), {
                "fingerprint": fp, "metrics": stage_metrics, "seconds": round(seconds, 3),
                "outputs": {o: hash_path(ctx.path(o)) for o in stage.OUTPUTS}})
            timings[name] = {"status": "ran", "seconds": round(seconds, 3)}
            _to_cache(ctx, stage, name, fp, stage_metrics)
            log.info("stage %s: done in %.1fs", name, seconds)
        ctx.tracker.log_metrics(stage_metrics)
        metrics.update(stage_metrics)
        write_json(metrics_path, metrics)
    write_json(ctx.path(STATE_DIR) / "last_run.json", timings)
    return metrics
