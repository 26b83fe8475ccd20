"""``audit.jsonl``: one line per external call, in the run directory.

Time, service, endpoint, model, request and response bytes, latency, status, retries, scrubbed
count, cache hit. No prompt or answer text unless ``audit.include_content=true``; never a key
(the endpoint is written without user info or query).
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from components.settings import Settings

FILE = "audit.jsonl"


class Audit(Settings):
    """``audit``."""

    enabled: bool = True
    include_content: bool = False

    def log(self, run_dir: str | Path | None) -> "AuditLog | None":
        return AuditLog(Path(run_dir) / FILE, self.include_content) if self.enabled and run_dir else None


def endpoint(url: str | None) -> str | None:
    if not url:
        return url
    p = urlsplit(url)
    return f"{p.scheme}://{p.hostname}{f':{p.port}' if p.port else ''}{p.path}"


class AuditLog:
    """Appends rows; each row is one write of one line, flushed, so a crash loses at most the
    line being written and readers skip a torn last line."""

    def __init__(self, path: Path, include_content: bool = False) -> None:
        self.path = path
        self.include_content = include_content
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8")

    def write(self, row: dict[str, Any], content: dict[str, Any] | None = None) -> None:
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **row}
        if self.include_content and content:
            row.update(content)
        line = json.dumps(row, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            if not self._fh.closed:
                self._fh.write(line)
                self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._fh.close()
