"""use_fast_blas() really swaps mlx's CPU BLAS: measured in fresh interpreters, since BLAS is fixed at mlx's import."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from conftest import REPO
from components.training.blas import OPENBLAS_LIBS


needs_openblas = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not all(os.path.exists(p) for p in OPENBLAS_LIBS),
    reason="needs Linux with Debian's OpenBLAS (apt-get install libopenblas0-pthread)",
)


def _python(code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


_PROBE = """
import sys
from components.training.blas import use_fast_blas, matmul_gflops
loaded = use_fast_blas() if sys.argv[1] == "fast" else None
maps = open("/proc/self/maps").read()
print(repr((loaded, "openblas" in maps, matmul_gflops(512, min_seconds=0.3))))
"""


@needs_openblas
def test_fast_blas_is_loaded_and_much_faster():
    loaded, mapped, fast = ast.literal_eval(_python(_PROBE, "fast"))
    assert loaded == OPENBLAS_LIBS[-1] and mapped
    ref_loaded, ref_mapped, ref = ast.literal_eval(_python(_PROBE, "reference"))
    assert ref_loaded is None and not ref_mapped
    # ~30x measured; 3x leaves room for a busy shared machine while still catching a silent no-op.
    assert fast > 3 * ref, f"OpenBLAS {fast:.1f} GFLOP/s vs reference {ref:.1f} GFLOP/s"


@needs_openblas
def test_too_late_after_mlx_import_warns():
    code = """
import logging, mlx.core
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from components.training.blas import use_fast_blas
print(repr(use_fast_blas()))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"
    assert "too late" in done.stderr


def test_kernels_follow_the_cpu_flags():
    from components.training.blas import cpu_flags, kernel_for

    avx512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma"}
    assert kernel_for(avx512) == "SkylakeX"
    assert kernel_for({"avx2", "fma", "sse4_2"}) == "Haswell"
    assert kernel_for({"sse4_2"}) is None and kernel_for(set()) is None
    if sys.platform.startswith("linux"):
        assert "sse2" in cpu_flags() or not os.path.exists("/proc/cpuinfo")


_CORE = """
from components.training import blas
blas.use_fast_blas()
print(blas.core_name())
"""


@needs_openblas
def test_the_kernels_are_chosen_unless_the_machine_set_them():
    from components.training.blas import cpu_flags, kernel_for

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    chosen = subprocess.run([sys.executable, "-c", _CORE], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=60).stdout.strip()
    want = kernel_for(cpu_flags())
    if want:  # OpenBLAS runs the kernels the CPU's flags allow, whatever model it takes the CPU for
        assert chosen == want
    set_by_machine = subprocess.run([sys.executable, "-c", _CORE], cwd=REPO, env={**env, "OPENBLAS_CORETYPE": "Haswell"},
                                    capture_output=True, text=True, timeout=60).stdout.strip()
    assert set_by_machine == "Haswell"
