"""Hardware profiles: what the machine can take, detected or declared, scaled to what is real.

A declared profile (m3max) on a smaller machine is scaled down with a warning rather than
failing, so a config written for a workstation still runs on a laptop or a CI box.
"""
from __future__ import annotations

import logging
import os
import platform
from dataclasses import asdict, dataclass, field

import psutil

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resolved:
    name: str
    memory_gb: float
    accelerator: str  # metal | cpu
    cpu_threads: int
    convert_workers: int
    extract_concurrency: int
    train_batch_size: int
    dtype: str
    scaled: bool = False
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["warnings"] = list(self.warnings)
        return d


def detect() -> dict:
    mem_gb = psutil.virtual_memory().total / 2**30
    cpus = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    try:
        cpus = min(cpus, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        pass
    apple = platform.system() == "Darwin" and platform.machine() == "arm64"
    return {"memory_gb": mem_gb, "cpus": max(1, cpus), "accelerator": "metal" if apple else "cpu"}


class HardwareProfile:
    def __init__(self, name: str, memory_gb: float | None = None, accelerator: str = "auto",
                 cpu_threads: int | None = None, convert_workers: int | None = None,
                 extract_concurrency: int | None = None, train_batch_size: int | None = None,
                 dtype: str = "auto") -> None:
        self.name = name
        self.memory_gb = memory_gb
        self.accelerator = accelerator
        self.cpu_threads = cpu_threads
        self.convert_workers = convert_workers
        self.extract_concurrency = extract_concurrency
        self.train_batch_size = train_batch_size
        self.dtype = dtype

    def resolve(self, machine: dict | None = None) -> Resolved:
        m = machine or detect()
        warnings: list[str] = []
        accel = m["accelerator"] if self.accelerator == "auto" else self.accelerator
        if accel == "metal" and m["accelerator"] != "metal":
            warnings.append(f"hardware profile '{self.name}' expects an Apple GPU (Metal); none "
                            "here, so MLX runs on the CPU in float32")
            accel = "cpu"
        mem = self.memory_gb or m["memory_gb"]
        if mem > m["memory_gb"] * 1.05:
            warnings.append(f"hardware profile '{self.name}' expects {mem:.0f} GB of memory; this "
                            f"machine has {m['memory_gb']:.0f} GB, so the batch size is capped to "
                            f"fit it")
            mem = m["memory_gb"]
        threads = self.cpu_threads or m["cpus"]
        if threads > m["cpus"]:
            warnings.append(f"hardware profile '{self.name}' expects {threads} CPU threads; "
                            f"using {m['cpus']}")
            threads = m["cpus"]

        def capped(value: int | None, default: int, cap: int) -> int:
            return max(1, min(default if value is None else value, cap))

        dtype = self.dtype
        if dtype == "auto" or (accel == "cpu" and dtype != "float32"):
            # float32 is the fastest dtype for MLX on a CPU; bfloat16 on Metal.
            dtype = "bfloat16" if accel == "metal" else "float32"
        # A 135M model in float32 with batch 4 needs about 2 GB; keep batch under memory/4 GB.
        batch_cap = max(1, int(mem // 4))
        res = Resolved(
            name=self.name,
            memory_gb=round(mem, 1),
            accelerator=accel,
            cpu_threads=threads,
            convert_workers=capped(self.convert_workers, max(1, threads // 2), threads),
            extract_concurrency=capped(self.extract_concurrency, 2, max(2, threads)),
            train_batch_size=capped(self.train_batch_size, 4, batch_cap),
            dtype=dtype,
            scaled=bool(warnings),
            warnings=tuple(warnings),
        )
        for w in warnings:
            log.warning(w)
        return res
