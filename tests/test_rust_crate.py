"""The crate's own tests (`cargo test`), so the README's one test command covers Rust too."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import REPO


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cargo") is None,
                    reason="cargo is not installed: the Rust crate cannot be tested (the Python "
                           "twin still runs in test_process*)")
def test_cargo_test_passes():
    out = subprocess.run(["cargo", "test", "--release", "-j", "2", "--manifest-path",
                          str(REPO / "rust" / "Cargo.toml")],
                         capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "test result: ok" in out.stdout
