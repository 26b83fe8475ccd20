"""mlx CPU float32 matmul: bundled reference BLAS vs OpenBLAS via components.training.blas.use_fast_blas().

Each side runs in its own interpreter, since BLAS is fixed at mlx's first import.
Usage: python benchmarks/blas.py [--n 1024 2048]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import sys
from components.training.blas import use_fast_blas, matmul_gflops
loaded = use_fast_blas() if sys.argv[1] == "openblas" else None
if sys.argv[1] == "openblas" and loaded is None:
    sys.exit("OpenBLAS not loaded (apt-get install libopenblas0-pthread)")
print(matmul_gflops(int(sys.argv[2]), min_seconds=1.0))
"""


def gflops(blas: str, n: int) -> float:
    out = subprocess.run([sys.executable, "-c", _PROBE, blas, str(n)], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, nargs="+", default=[1024, 2048], help="matrix sizes")
    sizes = parser.parse_args().n
    print(f"{'n':>6} {'reference GFLOP/s':>18} {'OpenBLAS GFLOP/s':>17} {'speedup':>8}")
    ref_total = fast_total = 0.0
    for n in sizes:
        ref, fast = gflops("reference", n), gflops("openblas", n)
        ref_total, fast_total = ref_total + ref, fast_total + fast
        print(f"{n:>6} {ref:>18.1f} {fast:>17.1f} {fast / ref:>7.1f}x")
    ref, fast = ref_total / len(sizes), fast_total / len(sizes)
    print(json.dumps({"sizes": sizes, "reference_gflops": round(ref, 2), "openblas_gflops": round(fast, 2),
                      "speedup": round(fast / ref, 2)}))


if __name__ == "__main__":
    main()
