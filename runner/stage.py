"""The stage contract.

A stage is a module in ``runner.stages`` that declares everything that decides its outputs:

- ``INPUTS``: paths (relative to the run directory) it reads, produced by earlier stages;
- ``OUTPUTS``: paths it writes;
- ``CONFIG``: the config keys it reads, as dotted paths (``"lora"``, ``"lora.batch_size"``,
  ``"hw.convert_workers"``); cross-group keys too;
- ``run(ctx) -> dict[str, float]``: does the work and returns its final metrics, named
  ``"<stage>/<name>"``.

Optional names: ``OPTIONAL_INPUTS`` (read when present), ``fingerprint_extra(ctx) -> str`` (what
else decides its outputs, e.g. files outside the run directory or non-Python sources),
``NOT_FINGERPRINTED`` (config keys that change how fast a stage runs, never what it writes, such
as worker counts) and ``STAGE_CACHE = False`` (never share its outputs across runs).

The code a stage runs is found, not declared: its module, every project module it imports
(transitively, lazy imports included) and the modules the ``_target_`` of its config names
(``runner.fingerprint``). ``ctx.cfg`` holds only the declared keys, resolved and read-only, so
reading anything else fails at once instead of silently escaping the fingerprint.

The pipeline owns skipping: a stage whose outputs exist and whose fingerprint (code, config,
input hashes) is unchanged is not run again; another run with the same fingerprint copies its
outputs from the stage cache. A stage knows nothing about the stages around it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from omegaconf import DictConfig

from components.tracking import StageTracker


class StageError(RuntimeError):
    """A stage cannot run; the message says why and what to do."""

    stage: str | None = None  # set by the pipeline: the stage that failed


class Interrupted(BaseException):
    """The run was asked to stop (Ctrl-C, SIGTERM). A stage that sees ``ctx.cancel`` set stops
    taking new work, keeps what is finished and raises this; like KeyboardInterrupt it is not
    an ``Exception``, so handlers of ordinary errors do not swallow it."""

    stage: str | None = None


class Closable(Protocol):
    def close(self) -> None: ...


@dataclass
class Resources:
    """Expensive components shared by the stages of one run (a started server, a loaded model),
    built on first use and closed when the run ends."""

    _built: dict[str, Closable] = field(default_factory=dict)

    def shared(self, name: str, factory: Callable[[], Closable]) -> Closable:
        if name not in self._built:
            self._built[name] = factory()
        return self._built[name]

    def release(self, name: str) -> None:
        """Close a shared component early (a server that later stages do not need)."""
        obj = self._built.pop(name, None)
        if obj is not None:
            obj.close()

    def close(self) -> None:
        while self._built:
            self.release(next(reversed(self._built)))


@dataclass
class StageContext:
    run_dir: Path
    cfg: DictConfig  # the stage's declared keys only
    tracker: StageTracker
    resources: Resources = field(default_factory=Resources)
    # Set when the run is asked to stop; long loops check it between items.
    cancel: threading.Event = field(default_factory=threading.Event)

    def path(self, rel: str) -> Path:
        return self.run_dir / rel
