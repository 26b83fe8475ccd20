"""The append-only log that makes extraction resumable, and the bounded loop that fills it.

Every finished record is appended (one JSON line, flushed) as soon as it is back. A crash can cut
the last line; a rerun reads what decodes, keeps final and successful records made by the same
request, and redoes the rest, so each chunk ends up exactly once. Transient failures are never
kept: the next run retries exactly those.

The loop submits lazily, at most ``window`` requests in flight, so a stop request (``cancel``)
leaves nothing queued behind it: it stops submitting, waits a short grace for the requests
already running, and returns.
"""
from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from components.llm import record


def reusable(paths: Iterable[Path], request_key: str, shas: dict[str, str]) -> dict[str, dict]:
    """Records a rerun keeps, by chunk id (later files and lines win): made by the same request
    for the same chunk text, and not a transient failure."""
    out: dict[str, dict] = {}
    for p in paths:
        for rec in record.read(p, strict=False):
            cid = rec["chunk_id"]
            if rec.get("request_key") != request_key or shas.get(cid) != rec.get("chunk_sha"):
                continue
            if rec.get("failure") == "transient" or rec.get("status") == "error":
                out.pop(cid, None)  # a later failure of a chunk supersedes nothing finished
                continue
            out[cid] = rec
    return out


class RecordLog:
    """Append records to ``path``, each line flushed; a line cut by an earlier crash is closed
    first so the next record starts a line of its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                cut = fh.read(1) != b"\n"
        else:
            cut = False
        self._fh = open(path, "a", encoding="utf-8")
        if cut:
            self._fh.write("\n")
        self._lock = threading.Lock()

    def append(self, rec: dict) -> None:
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        with self._lock:
            self._fh.write(line)
            self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "RecordLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run_bounded(items: Iterable[Any], fn: Callable[[Any], Any], window: int,
                cancel: threading.Event, on_result: Callable[[Any, Any], None],
                grace_s: float = 2.0) -> bool:
    """Call ``fn`` on each item, at most ``window`` at once, handing each result to
    ``on_result(item, result)`` in this thread. Returns False when ``cancel`` stopped it early:
    nothing more was started, and calls still running after ``grace_s`` are abandoned (their
    results are dropped; the caller redoes those items later).

    Workers are daemon threads, not a pool: an HTTP request blocked on a busy server must not
    hold up the end of the process (a pool's threads are joined at exit)."""
    it = iter(items)
    results: queue.Queue = queue.Queue()
    running = 0
    exhausted = False

    def work(item: Any) -> None:
        try:
            results.put((item, True, fn(item)))
        except BaseException as exc:  # handed to the caller's thread
            results.put((item, False, exc))

    def fill() -> None:
        nonlocal running, exhausted
        while running < window and not cancel.is_set():
            try:
                item = next(it)
            except StopIteration:
                exhausted = True
                return
            threading.Thread(target=work, args=(item,), daemon=True, name="extract").start()
            running += 1

    def collect(timeout: float) -> None:
        nonlocal running
        try:
            item, ok, value = results.get(timeout=timeout)
        except queue.Empty:
            return
        running -= 1
        if not ok:
            if cancel.is_set() and isinstance(value, Exception):
                return  # stopping: an item that failed is simply redone
            raise value
        on_result(item, value)

    fill()
    while running:
        collect(0.2)
        if cancel.is_set():
            deadline = time.monotonic() + grace_s
            while running and time.monotonic() < deadline:
                collect(max(0.01, deadline - time.monotonic()))
            return False
        fill()
    return exhausted
