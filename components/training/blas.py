"""Swap mlx's CPU BLAS for OpenBLAS on Linux.

The mlx[cpu] wheel bundles reference BLAS, ~30x slower at float32 matmul than Debian's
libopenblas0-pthread (6 vs 200 GFLOP/s measured). Loading OpenBLAS with RTLD_GLOBAL before mlx's
first import makes the dynamic linker resolve mlx's BLAS symbols to it instead of the bundled copy.

Debian's OpenBLAS (0.3.21) picks its kernels by CPU model, and falls back to its slowest x86-64
kernels (``Prescott``, SSE3) on a model newer than it knows: on a Xeon of family 6 model 207 it
ran a 1024² matmul at 65 GFLOP/s, and at 302 with the AVX-512 ``SkylakeX`` kernels. So unless
``OPENBLAS_CORETYPE`` is set already (a machine may set it where a kernel misbehaves), the
kernels are chosen from the CPU's own feature flags: AVX-512 -> SkylakeX, AVX2 and FMA -> Haswell.
"""
from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

OPENBLAS_DIR = "/usr/lib/x86_64-linux-gnu"
# libgfortran first: the pthread libblas needs it, and loading it ourselves fails loudly if absent.
OPENBLAS_LIBS = (f"{OPENBLAS_DIR}/libgfortran.so.5", f"{OPENBLAS_DIR}/openblas-pthread/libblas.so.3")
INSTALL_HINT = "apt-get install libopenblas0-pthread"

_loaded: str | None = None
# The instruction sets each kernel family needs, best first.
KERNELS = (("SkylakeX", {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}),
           ("Haswell", {"avx2", "fma"}))


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def kernel_for(flags: set[str]) -> str | None:
    """The OpenBLAS kernel family these CPU flags run best (None: leave it to OpenBLAS)."""
    return next((name for name, needs in KERNELS if needs <= flags), None)


def core_name() -> str | None:
    """The kernel family the loaded OpenBLAS runs (None when it is not loaded)."""
    if _loaded is None:
        return None
    fn = ctypes.CDLL(_loaded).openblas_get_corename
    fn.restype = ctypes.c_char_p
    return fn().decode()


def use_fast_blas() -> str | None:
    """Load OpenBLAS for mlx; return the library path loaded, or None when not possible."""
    global _loaded
    if _loaded is not None:
        return _loaded
    if sys.platform == "darwin":  # mlx uses Accelerate there
        return None
    if not sys.platform.startswith("linux"):
        return None
    if "mlx.core" in sys.modules or "mlx" in sys.modules:
        log.warning("use_fast_blas() called after mlx was imported: too late, mlx keeps its slow reference BLAS; "
                    "call it before the first `import mlx`")
        return None
    missing = [path for path in OPENBLAS_LIBS if not os.path.exists(path)]
    if missing:
        log.warning("OpenBLAS not found (%s): mlx CPU matmuls will be ~30x slower; install it with `%s`",
                    ", ".join(missing), INSTALL_HINT)
        return None
    # OpenBLAS's idle threads spin for 2**28 cycles (~0.1 s) before they sleep: between the small
    # matmuls of a training step that kept the second core busy for nothing, a third of the
    # step's CPU time as system time, taken from llama.cpp, Docling or a test run beside it.
    # 2**10 cycles left the step time the same (1.56 vs 1.64 s, SmolLM2-135M, 2 cores) and the
    # system time a quarter of what it was.
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "10")
    if not os.environ.get("OPENBLAS_CORETYPE"):
        kernel = kernel_for(cpu_flags())
        if kernel:  # read by OpenBLAS once, when it loads
            os.environ["OPENBLAS_CORETYPE"] = kernel
    try:
        for path in OPENBLAS_LIBS:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        log.warning("could not load OpenBLAS (%s): mlx CPU matmuls will be slow; reinstall with `%s`", exc, INSTALL_HINT)
        return None
    _loaded = OPENBLAS_LIBS[-1]
    return _loaded


def matmul_gflops(n: int = 1024, min_seconds: float = 0.5) -> float:
    """Float32 n x n matmul throughput on mlx's CPU device (imports mlx: call use_fast_blas() first)."""
    import time

    import mlx.core as mx

    mx.set_default_device(mx.cpu)
    a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
    mx.eval(a @ b)  # warm-up: thread pools, first-touch allocation
    runs, start = 0, time.perf_counter()
    while True:
        mx.eval(a @ b)
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return 2 * n**3 * runs / elapsed / 1e9
