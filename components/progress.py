"""Progress a person can watch: a rich bar on a terminal, plain periodic lines elsewhere (CI,
a log file), each with the rate, the time left and the failures so far."""
from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("progress")


class Progress:
    def __init__(self, label: str, total: float | None, unit: str = "items", every_s: float = 10.0,
                 terminal: bool | None = None, scale: float = 1.0) -> None:
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.scale = scale  # e.g. 2**20 to show bytes as MB
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.done = 0.0
        self.failed = 0
        self.note = ""
        self._bar: Any = None
        self._task: Any = None
        self._t0 = self._last = 0.0

    def __enter__(self) -> "Progress":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close(failed=exc[0] is not None)

    def start(self) -> "Progress":
        self._t0 = self._last = time.perf_counter()
        if self.terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn,
                                       TimeRemainingColumn)

            self._bar = Bar(TextColumn(self.label), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                            TextColumn("{task.fields[note]}"), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, rate="", note="")
        return self

    def close(self, failed: bool = False) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
        if not failed and self.done:
            log.info("%s", self.line(final=True))

    def rate(self) -> float:
        elapsed = time.perf_counter() - self._t0
        return self.done / self.scale / elapsed if elapsed > 0 else 0.0

    def line(self, final: bool = False) -> str:
        done, total = self.done / self.scale, (self.total or 0) / self.scale
        parts = [f"{self.label}: {done:.0f}" + (f"/{total:.0f}" if self.total else "") + f" {self.unit}",
                 f"{self.rate():.2f} {self.unit}/s"]
        if self.total and not final and self.rate() > 0:
            parts.append(f"ETA {(total - done) / self.rate():.0f}s")
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.note:
            parts.append(self.note)
        return ", ".join(parts)

    def advance(self, n: float = 1, failed: int = 0, note: str = "") -> None:
        self.done += n
        self.failed += failed
        self.note = note or self.note
        if self._bar is not None:
            fails = f" · {self.failed} failed" if self.failed else ""
            self._bar.update(self._task, advance=n, rate=f"{self.rate():.2f} {self.unit}/s{fails}",
                             note=self.note[:40])
            return
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            log.info("%s", self.line())
