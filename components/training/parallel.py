"""Data-parallel LoRA training on one machine: ``lora.workers`` processes, each batch split
between them, the gradients averaged over MLX's ring backend on loopback.

Why: MLX on a CPU spends much of a step in single-threaded work between its BLAS calls, so two
processes of one thread each train about 1.5x as fast as one process of two threads (docs/recipe.md).
On Metal one process has the whole GPU, and the hardware profile sets one worker.

The processes validate together, each on its share of the examples and probes; the first
(rank 0) alone reports, saves checkpoints and publishes the adapters. Its metrics and log lines
come back to this process over its stdout and stderr; a stop request goes to every process over
its stdin. All processes agree at each step whether to go on (``loop.TrainingLoop``), so they
finish together; one that dies ends the run with its error instead of leaving the others
waiting on it.
"""
from __future__ import annotations

import json
import logging
import queue
import re
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

from components.hardware import detect
from components.training import child
from components.training import lora as lora_train
from components.training.preflight import PreflightError

log = logging.getLogger(__name__)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def train(model_dir: Path, data_dir: Path, out_dir: Path, lora: lora_train.LoraConfig, *,
          log_metrics: Callable[[dict, int], None], prov: dict, system: str | None = None,
          cancel: threading.Event | None = None, threads: int | None = None) -> dict[str, float]:
    """``lora_train.train`` in ``lora.workers`` processes (in this one when that is 1); the same
    results, exceptions and published ``out_dir``. ``threads``: the CPU threads they share (the
    hardware profile's; default: this machine's cores)."""
    workers = lora.workers
    if workers > 1 and lora.batch_size % workers:
        log.warning("finetune: lora.batch_size %d cannot be split between lora.workers=%d processes; "
                    "training in one", lora.batch_size, workers)
        workers = 1
    if workers == 1:
        return lora_train.train(model_dir, data_dir, out_dir, lora, log_metrics=log_metrics, prov=prov,
                                system=system, cancel=cancel)
    return _Run(workers).train(model_dir, data_dir, out_dir, lora, log_metrics=log_metrics, prov=prov,
                               system=system, cancel=cancel or threading.Event(), threads=threads)


class _Run:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.failed: int | None = None  # the first process that exited with an error
        self.final: dict | None = None  # how rank 0 says training ended
        # Rank 0's messages, handled on the caller's thread: a tracker's active run (MLflow's)
        # belongs to the thread that started it.
        self.inbox: queue.Queue = queue.Queue()
        self.tails = [deque(maxlen=20) for _ in range(workers)]  # each process's last stderr lines

    def _read_stdout(self, stream) -> None:
        for line in stream:
            try:
                self.inbox.put(json.loads(line))
            except json.JSONDecodeError:
                continue

    def _read_stderr(self, rank: int, stream) -> None:
        for line in stream:
            line = _ANSI.sub("", line).rstrip()  # mlx-lm's progress table is coloured
            if not line:
                continue
            self.tails[rank].append(line)
            # The first process's log is the run's; the others' repeat it.
            log.log(logging.INFO if rank == 0 else logging.DEBUG, "[rank %d] %s", rank, line)

    def train(self, model_dir, data_dir, out_dir, lora, *, log_metrics, prov, system, cancel, threads) -> dict:
        machine = detect()
        threads = max(1, (threads or machine["cpus"]) // self.workers)
        spec = {"model_dir": str(model_dir), "data_dir": str(data_dir), "out_dir": str(out_dir),
                "lora": lora.model_dump(), "prov": prov, "system": system,
                # measured once here, so that every process fits the same batch and rank
                "available_bytes": machine["available_gb"] * 2**30 / self.workers}
        with tempfile.TemporaryDirectory(prefix="mlx-ring-") as tmp:
            hostfile = Path(tmp) / "hosts.json"
            hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in _free_ports(self.workers)]))
            log.info("finetune: %d data-parallel processes of %d thread(s) each", self.workers, threads)
            procs: list[subprocess.Popen] = []
            readers: list[threading.Thread] = []
            try:
                for rank in range(self.workers):
                    p = child.start("components.training.worker", [], threads, stderr=subprocess.PIPE,
                                    env={"MLX_HOSTFILE": str(hostfile), "MLX_RANK": str(rank)})
                    p.stdin.write(json.dumps(spec) + "\n")
                    p.stdin.flush()
                    procs.append(p)
                readers.append(threading.Thread(target=self._read_stdout, args=(procs[0].stdout,), daemon=True))
                readers += [threading.Thread(target=self._read_stderr, args=(r, p.stderr), daemon=True)
                            for r, p in enumerate(procs)]
                for t in readers:
                    t.start()
                self._wait(procs, cancel, log_metrics)
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                    p.wait()
                for t in readers:  # at the end of the streams of processes that are gone
                    t.join(timeout=5)
                self._handle(log_metrics, 0)  # the last lines rank 0 wrote before it went
                for p in procs:
                    for s in (p.stdin, p.stdout, p.stderr):
                        try:
                            s.close()
                        except OSError:
                            pass
        return self._result(procs)

    def _handle(self, log_metrics, timeout: float) -> None:
        """Rank 0's messages so far (waiting up to ``timeout`` for the first)."""
        try:
            msg = self.inbox.get(timeout=timeout)
            while True:
                if "metrics" in msg:
                    log_metrics(*msg["metrics"])
                else:
                    self.final = msg
                msg = self.inbox.get_nowait()
        except queue.Empty:
            pass

    def _wait(self, procs, cancel: threading.Event, log_metrics) -> None:
        asked = False
        while self.final is None and procs[0].poll() is None:
            failed = [r for r, p in enumerate(procs) if p.poll() not in (None, 0)]
            if failed:
                self.failed = failed[0]
                return  # rank 0 would wait for it for ever: _result reports it
            if cancel.is_set() and not asked:
                # All of them: one busy validating its share would keep the others waiting.
                child.ask_to_stop(procs)
                asked = True
            self._handle(log_metrics, 0.2)
        # Rank 0 has published its adapters or checkpoint (or is gone): what is left of any
        # process (its interpreter's exit, a rank still waiting on it) is of no use.
        deadline = time.monotonic() + 2
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._handle(log_metrics, 0)

    def _result(self, procs) -> dict:
        msg = self.final or {}
        if "done" in msg:
            return msg["done"]
        if "stopped" in msg:
            step, checkpoint = msg["stopped"]
            raise lora_train.TrainingStopped(step, Path(checkpoint) if checkpoint else None)
        if "preflight" in msg:
            raise PreflightError(msg["preflight"])
        bad = self.failed if self.failed is not None else 0
        tail = "\n".join(self.tails[bad]) or "(no output)"
        raise RuntimeError(f"finetune: training process {bad} of {len(procs)} exited with "
                           f"{procs[bad].returncode}; its last output:\n{tail}")
