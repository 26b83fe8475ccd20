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

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from omegaconf import DictConfig, OmegaConf

from components.tracking import StageTracker
from runner.config import build
from runner.errors import Interrupted, StageError  # noqa: F401  (the names stages raise)


class Closable(Protocol):
    def close(self) -> None: ...


@dataclass
class Resources:
    """What the stages of one run share: the components their config groups build (each built
    once per run and config, ``component``), and expensive things built on first use and closed
    when the run ends (a started server, a cluster; ``shared``)."""

    _built: dict[str, Closable] = field(default_factory=dict)
    _components: dict[tuple[str, str], Any] = field(default_factory=dict)

    def component(self, group: str, node: DictConfig) -> Any:
        """The component config group ``group`` builds from ``node``: built (and validated) the
        first time, the same object after, for as long as the config is the same."""
        key = (group, json.dumps(OmegaConf.to_container(node, resolve=True), sort_keys=True, default=str))
        if key not in self._components:
            self._components[key] = build(node, group)
        return self._components[key]

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

    def component(self, group: str) -> Any:
        """The component of a config group this stage declares whole (``CONFIG``), the run's one."""
        return self.resources.component(group, self.cfg[group])
