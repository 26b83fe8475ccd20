"""The stage contract.

A stage is a module in ``runner.stages`` with four names:

- ``INPUTS``: paths (relative to the run directory) it reads, produced by earlier stages;
- ``OUTPUTS``: paths it writes;
- ``CONFIG_KEYS``: the config subtrees that change its outputs;
- ``run(ctx) -> dict[str, float]``: does the work and returns its final metrics, named
  ``"<stage>/<name>"``.

Optional names: ``OPTIONAL_INPUTS`` (read when present), ``fingerprint_extra(ctx) -> str`` (what
else decides its outputs, e.g. files outside the run directory) and ``STAGE_CACHE = False`` (never
share its outputs across runs).

The pipeline owns skipping: a stage whose outputs exist and whose code, input hashes and config
are unchanged is not run again, and its last metrics are reused; another run with the same
fingerprint copies its outputs from the stage cache. A stage knows nothing about the stages
around it; it only reads its inputs from and writes its outputs to ``ctx.run_dir``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig


class StageError(RuntimeError):
    """A stage cannot run; the message says why and what to do."""


@dataclass
class StageContext:
    run_dir: Path
    cfg: DictConfig
    tracker: Any  # components.tracking.Tracker
    hardware: Any = None  # components.training.hardware.Resolved
    # Lazily built shared components (e.g. the LLM service), keyed by name.
    _cache: dict[str, Any] = field(default_factory=dict)
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def path(self, rel: str) -> Path:
        return self.run_dir / rel

    def shared(self, name: str, factory: Callable[[], Any]) -> Any:
        """One instance per run of an expensive component (a started server, a loaded model)."""
        if name not in self._cache:
            obj = factory()
            self._cache[name] = obj
            close = getattr(obj, "close", None)
            if callable(close):
                self._closers.append(close)
        return self._cache[name]

    def release(self, name: str) -> None:
        """Close a shared component early (a server that later stages do not need)."""
        obj = self._cache.pop(name, None)
        close = getattr(obj, "close", None)
        if callable(close):
            self._closers.remove(close)
            close()

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()
        self._cache.clear()
