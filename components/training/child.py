"""The processes this package starts (training workers, measuring processes): how they are
started, and their side of the conversation. A child reports on a stdout of its own (what
libraries print goes to stderr) and stops when ``stop`` arrives on its stdin or stdin closes."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parents[2]


def start(module: str, args: list[str], threads: int, **popen) -> subprocess.Popen:
    """``python -m module args`` from the repository root with ``threads`` BLAS threads, in a
    session of its own: a Ctrl-C reaches the parent, which stops its children in order."""
    env = {**os.environ, **popen.pop("env", {}), "OPENBLAS_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", module, *args], env=env, cwd=str(ROOT), text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True, **popen)


def ask_to_stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        try:
            p.stdin.write("stop\n")
            p.stdin.flush()
        except (OSError, ValueError):
            pass  # gone already


def channel() -> TextIO:
    """This process's messages to its parent: the real stdout, with ``sys.stdout`` and file
    descriptor 1 sent to stderr from now on."""
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def stop_on_stdin(cancel: threading.Event) -> None:
    """Set ``cancel`` when ``stop`` arrives on stdin or stdin closes (the parent is gone)."""
    def listen() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        cancel.set()

    threading.Thread(target=listen, daemon=True).start()
