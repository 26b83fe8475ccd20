"""Ctrl-C and SIGTERM stop a run within seconds, keeping finished work.

The first signal sets the run's cancel event (long loops stop taking work) and raises
``Interrupted`` in the main thread, which unwinds the stage; while the run cleans up (closing
servers, writing the report, ending the MLflow run) a signal is only noted. A second signal
exits at once.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from runner.stage import Interrupted

log = logging.getLogger(__name__)

_received = 0


@contextmanager
def stop_on_signals(cancel: threading.Event, shielded: bool = False) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame) -> None:
        global _received
        _received += 1
        cancel.set()
        if _received > 1:
            os._exit(130)
        log.warning("%s: stopping; finished work is kept (again to quit at once)",
                    signal.Signals(signum).name)
        if not shielded:
            raise Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
