"""Hardware profiles: what the machine can take, detected or declared, scaled to what is real.

A profile sets the training defaults (LoRA rank, batch size, gradient accumulation, dtype) that
``conf/lora`` interpolates from ``${hw.*}``, so an explicit ``lora.*`` override still wins. A
declared profile (m3max) on a smaller machine is scaled down with a warning rather than failing,
so a config written for a workstation still runs on a laptop or a CI box. The exact fit to the
model being trained is the finetune stage's preflight (``components.training.preflight``).
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
    available_gb: float  # free for this run when resolved (psutil), not the total
    accelerator: str  # metal | cpu
    cpu_threads: int
    convert_workers: int
    extract_concurrency: int
    train_batch_size: int
    train_workers: int  # data-parallel training processes (CPU); 1 on Metal
    lora_rank: int
    grad_accumulation_steps: int
    dtype: str
    scaled: bool = False
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["warnings"] = list(self.warnings)
        return d


def detect() -> dict:
    vm = psutil.virtual_memory()
    cpus = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    try:
        cpus = min(cpus, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        pass
    apple = platform.system() == "Darwin" and platform.machine() == "arm64"
    return {"memory_gb": vm.total / 2**30, "available_gb": vm.available / 2**30,
            "cpus": max(1, cpus), "accelerator": "metal" if apple else "cpu"}


class HardwareProfile:
    """``tiers``: larger training defaults a profile takes when more memory is *available*, e.g.
    ``[{min_available_gb: 100, train_batch_size: 64, lora_rank: 128}]``."""

    TIER_KEYS = {"min_available_gb", "train_batch_size", "lora_rank", "grad_accumulation_steps"}

    def __init__(self, name: str, memory_gb: float | None = None, accelerator: str = "auto",
                 cpu_threads: int | None = None, convert_workers: int | None = None,
                 extract_concurrency: int | None = None, train_batch_size: int | None = None,
                 train_workers: int | None = None, lora_rank: int = 8, grad_accumulation_steps: int = 1, dtype: str = "auto",
                 tiers: list[dict] | None = None) -> None:
        if accelerator not in ("auto", "metal", "cpu"):
            raise ValueError(f"hardware.accelerator must be auto, metal or cpu, not {accelerator!r}")
        if dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"hardware.dtype must be auto, float32, float16 or bfloat16, not {dtype!r}")
        for i, t in enumerate(tiers or []):
            unknown = set(t) - self.TIER_KEYS
            if unknown or "min_available_gb" not in t:
                raise ValueError(f"hardware.tiers[{i}]: keys are {sorted(self.TIER_KEYS)} with "
                                 f"min_available_gb required (got {sorted(t)})")
        for key, value in (("lora_rank", lora_rank), ("grad_accumulation_steps", grad_accumulation_steps),
                           ("train_workers", 1 if train_workers is None else train_workers)):
            if value < 1:
                raise ValueError(f"hardware.{key} must be at least 1 (got {value})")
        self.name = name
        self.memory_gb = memory_gb
        self.accelerator = accelerator
        self.cpu_threads = cpu_threads
        self.convert_workers = convert_workers
        self.extract_concurrency = extract_concurrency
        self.train_batch_size = train_batch_size
        self.train_workers = train_workers
        self.lora_rank = lora_rank
        self.grad_accumulation_steps = grad_accumulation_steps
        self.dtype = dtype
        self.tiers = sorted(tiers or [], key=lambda t: t["min_available_gb"])

    def resolve(self, machine: dict | None = None) -> Resolved:
        m = machine or detect()
        available = float(m.get("available_gb", m["memory_gb"]))
        warnings: list[str] = []
        accel = m["accelerator"] if self.accelerator == "auto" else self.accelerator
        if accel == "metal" and m["accelerator"] != "metal":
            warnings.append(f"hardware profile '{self.name}' expects an Apple GPU (Metal); none "
                            "here, so MLX runs on the CPU in float32")
            accel = "cpu"
        mem = self.memory_gb or m["memory_gb"]
        shrink = 1.0
        if mem > m["memory_gb"] * 1.05:
            warnings.append(f"hardware profile '{self.name}' expects {mem:.0f} GB of memory; this "
                            f"machine has {m['memory_gb']:.0f} GB, so the batch size is scaled "
                            f"down to fit it")
            shrink = m["memory_gb"] / mem
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
            # float32 is the fastest dtype for MLX on a CPU (no bf16 kernels); bfloat16 on Metal.
            dtype = "bfloat16" if accel == "metal" else "float32"
        train = {"train_batch_size": self.train_batch_size, "lora_rank": self.lora_rank,
                 "grad_accumulation_steps": self.grad_accumulation_steps}
        for tier in self.tiers:
            if available >= tier["min_available_gb"] and shrink == 1.0:
                train.update({k: v for k, v in tier.items() if k != "min_available_gb"})
        if train["train_batch_size"] is None:
            # Undeclared (auto): ~4 GB per batch element covers a 135M-1.7B model at 512 tokens.
            batch = capped(None, 4, max(1, int(mem // 4)))
        else:
            batch = max(1, int(train["train_batch_size"] * shrink))
        if self.train_workers is not None:
            workers = self.train_workers
        elif accel == "metal":
            workers = 1  # one GPU: a second process would only share it
        else:
            # MLX on a CPU spends much of a step in single-threaded work between the BLAS calls:
            # two processes of one thread each train 1.5x as fast as one of two threads
            # (docs/recipe.md). The batch is split between them, so it must divide.
            workers = 2 if threads >= 2 and batch % 2 == 0 else 1
        res = Resolved(
            name=self.name,
            memory_gb=round(mem, 1),
            available_gb=round(min(available, mem), 1),
            accelerator=accel,
            cpu_threads=threads,
            convert_workers=capped(self.convert_workers, max(1, threads // 2), threads),
            extract_concurrency=capped(self.extract_concurrency, 2, max(2, threads)),
            train_batch_size=batch,
            train_workers=workers,
            lora_rank=int(train["lora_rank"]),
            grad_accumulation_steps=int(train["grad_accumulation_steps"]),
            dtype=dtype,
            scaled=bool(warnings),
            warnings=tuple(warnings),
        )
        for w in warnings:
            log.warning(w)
        return res
