"""Health rows for what a run needs: LLM services, MLX, Docling, the Rust binary, disk.

Each check returns a row (component, status up|down|warn, latency, version, detail) and never
raises; ``python -m runner.health`` prints them as a table and ``start()`` of a service runs the
same service check before the extract stage sends its first chunk.
"""
from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path
from typing import Any

from components.versions import installed


def row(component: str, status: str, detail: str = "", latency_ms: float | None = None,
        version: str | None = None, models: list[str] | None = None, needed: bool = True) -> dict:
    return {"component": component, "status": status, "latency_ms": latency_ms, "version": version,
            "models": models or [], "detail": detail, "needed": needed}


def service(svc: Any, needed: bool = True, role: str = "service") -> dict:
    r = svc.health()
    status = r["status"]
    if status == "up" and svc.model in r["missing"]:
        status = "down"
    elif status == "up" and r["missing"]:
        status = "warn"
    out = row(f"{role} {svc.name} ({svc.model})", status, r["detail"], r["latency_ms"], r["version"],
              r["models"], needed)
    out["endpoint"] = r.get("endpoint")
    return out


def mlx(needed: bool) -> dict:
    import psutil

    if importlib.util.find_spec("mlx") is None:
        return row("MLX", "down", "mlx is not installed (pip install mlx)", needed=needed)
    t0 = time.perf_counter()
    try:
        from components.training.blas import use_fast_blas

        use_fast_blas()
        import mlx.core as mx

        device = str(mx.default_device())
        mx.eval(mx.ones((8, 8)) @ mx.ones((8, 8)))
    except Exception as exc:  # a broken install shows here, not in the middle of training
        return row("MLX", "down", f"{type(exc).__name__}: {exc}", needed=needed)
    mem = psutil.virtual_memory()
    return row("MLX", "up", f"device {device}; memory {mem.available / 2**30:.1f} of "
                            f"{mem.total / 2**30:.1f} GiB free",
               round((time.perf_counter() - t0) * 1000, 1), installed("mlx"), needed=needed)


def docling(formats: list[str], artifacts_path: str | None, needed: bool) -> dict:
    if importlib.util.find_spec("docling") is None:
        return row("Docling", "down", "docling is not installed", needed=needed)
    from components.documents.convert import layout_models_available

    ok, why = layout_models_available(artifacts_path)
    detail = f"formats {', '.join(formats)}; " + (f"layout models in {why}" if ok else
                                                  f"PDF layout models unavailable: {why}")
    status = "up" if ok or "pdf" not in formats else "warn"
    return row("Docling", status, detail, version=installed("docling") or installed("docling-slim"),
               needed=needed)


def rust(engine: str, needed: bool) -> dict:
    from components.processing import rust as R

    path = R.binary_path()
    if R.is_up_to_date():
        return row("Rust binary", "up", str(path), needed=needed)
    if R.cargo():
        return row("Rust binary", "warn", f"{path} missing or stale; cargo will build it on first use",
                   needed=needed)
    status = "down" if engine == "rust" else "warn"
    return row("Rust binary", status, "no binary and no cargo (install Rust from https://rustup.rs "
                                      "or set process.engine=python)", needed=needed)


def disk(path: str | Path, min_free_gb: float) -> dict:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    free = shutil.disk_usage(p).free / 1e9
    status = "up" if free >= min_free_gb else "down"
    return row(f"disk {path}", status, f"{free:.1f} GB free (alert below {min_free_gb} GB)")
