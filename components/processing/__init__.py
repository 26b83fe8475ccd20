"""Corpus processing: normalize, chunk and deduplicate converted Markdown (rust/SPEC.md).

Two engines implement one specification: the Rust binary `ericsson-dataset-pipeline` (fast)
and a Python twin (the reference). ``process.engine=auto`` picks Rust when cargo is available.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from components.processing import rust, twin
from components.processing.config import ProcessConfig, process_config, write_config
from components.processing.errors import ProcessingError

__all__ = ["ProcessConfig", "ProcessingError", "process_config", "resolve_engine", "settings",
           "run_processing", "write_config"]


def resolve_engine(engine: str) -> str:
    if engine == "auto":
        return "rust" if rust.available() else "python"
    return engine


def run_processing(cfg: ProcessConfig, config_path: str | Path,
                   on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Runs the configured engine on the config written at ``config_path``; returns its result.
    ``on_progress(phase, done, total)``: documents, dedup, write, as they go."""
    if resolve_engine(cfg.engine) == "rust":
        return rust.run(Path(config_path), cfg.timeout_s, on_progress=on_progress)
    return twin.run(cfg, on_progress)


def settings(**group: Any) -> ProcessConfig:
    """The ``process`` group, validated before any work; the stage adds the run's paths."""
    return process_config({**group, "input_dir": "", "output_path": ""},
                          source="conf/process (the `process` config group)")
