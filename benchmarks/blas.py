"""mlx CPU float32 matmul: bundled reference BLAS vs OpenBLAS with the kernels it picks itself vs
OpenBLAS via components.training.blas.use_fast_blas() (kernels chosen from the CPU's flags).

Each side runs in its own interpreter, since BLAS is fixed at mlx's first import.
Usage: python benchmarks/blas.py [--n 1024 2048]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import ctypes, os, sys
from components.training import blas
if sys.argv[1] == "openblas-own":  # OpenBLAS's own choice of kernels, as before use_fast_blas chose
    for path in blas.OPENBLAS_LIBS:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    blas._loaded = blas.OPENBLAS_LIBS[-1]
elif sys.argv[1] == "openblas" and blas.use_fast_blas() is None:
    sys.exit("OpenBLAS not loaded (apt-get install libopenblas0-pthread)")
print(blas.core_name() or "-", blas.matmul_gflops(int(sys.argv[2]), min_seconds=1.0))
"""


def gflops(blas: str, n: int) -> tuple[str, float]:
    env = dict(os.environ)
    if blas == "openblas-own":
        env.pop("OPENBLAS_CORETYPE", None)
    out = subprocess.run([sys.executable, "-c", _PROBE, blas, str(n)], cwd=ROOT, check=True, env=env,
                         capture_output=True, text=True).stdout
    core, value = out.strip().splitlines()[-1].split()
    return core, float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, nargs="+", default=[1024, 2048], help="matrix sizes")
    sizes = parser.parse_args().n
    print(f"{'n':>6} {'reference':>10} {'OpenBLAS, its kernels':>22} {'OpenBLAS, ours':>16} {'speedup':>8}  GFLOP/s")
    ref_total = own_total = fast_total = 0.0
    for n in sizes:
        _, ref = gflops("reference", n)
        own_core, own = gflops("openblas-own", n)
        core, fast = gflops("openblas", n)
        ref_total, own_total, fast_total = ref_total + ref, own_total + own, fast_total + fast
        print(f"{n:>6} {ref:>10.1f} {own:>12.1f} ({own_core:>8}) {fast:>6.1f} ({core:>8}) {fast / ref:>7.1f}x")
    ref, own, fast = (t / len(sizes) for t in (ref_total, own_total, fast_total))
    print(json.dumps({"sizes": sizes, "reference_gflops": round(ref, 2), "openblas_own_kernels_gflops": round(own, 2),
                      "openblas_own_kernels": own_core, "openblas_gflops": round(fast, 2), "openblas_kernels": core,
                      "speedup": round(fast / ref, 2), "speedup_vs_own_kernels": round(fast / own, 2)}))


if __name__ == "__main__":
    main()
