"""Alerts: a warning line, an MLflow tag and a row in the run report when something is going wrong;
``alerts.fail_on`` makes chosen ones stop the run."""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from typing import Literal

import psutil
from pydantic import Field

from components.llm.errors import ServiceFailure
from components.settings import Settings

log = logging.getLogger(__name__)

Name = Literal["service_down", "breaker_open", "latency_p95", "error_rate", "memory", "disk"]


@dataclass(frozen=True)
class Alert:
    name: str
    message: str


class AlertStop(ServiceFailure):
    """An alert listed in ``alerts.fail_on`` fired: the run should stop (``stop_run``)."""

    transient = False
    stop_run = True


class Alerts(Settings):
    """``alerts``: thresholds; ``fail_on`` lists the alerts that stop the run."""

    latency_p95_s: float = Field(60.0, gt=0)
    error_rate: float = Field(0.25, ge=0, le=1)
    min_requests: int = Field(8, ge=1)   # rates need a few requests to mean anything
    memory_percent: float = Field(95.0, gt=0, le=100)
    disk_free_gb: float = Field(2.0, ge=0)
    fail_on: list[Name] = Field(default_factory=list)

    def resources(self, path: str | None) -> list[Alert]:
        out = []
        mem = psutil.virtual_memory()
        if mem.percent >= self.memory_percent:
            out.append(Alert("memory", f"memory {mem.percent:.0f}% used (limit "
                                       f"{self.memory_percent:.0f}%); close other apps or use a smaller model"))
        if path:
            try:
                free = shutil.disk_usage(path).free / 1e9
            except OSError:
                free = None
            if free is not None and free < self.disk_free_gb:
                out.append(Alert("disk", f"{free:.1f} GB free at {path} (limit {self.disk_free_gb} GB)"))
        return out

    def service(self, key: str, requests: int, errors: int, p95_s: float | None) -> list[Alert]:
        out = []
        if p95_s is not None and requests >= self.min_requests and p95_s > self.latency_p95_s:
            out.append(Alert("latency_p95", f"{key}: p95 latency {p95_s:.1f} s above "
                                            f"{self.latency_p95_s} s"))
        if requests >= self.min_requests and errors / requests > self.error_rate:
            out.append(Alert("error_rate", f"{key}: {errors}/{requests} requests failed "
                                           f"(limit {self.error_rate:.0%})"))
        return out
