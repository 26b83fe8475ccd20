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
    # The library's tests and every integration test: src/main.rs holds none, and linking its
    # empty test binary with the release profile's LTO took 7 of 30 s on a fresh clone.
    out = subprocess.run(["cargo", "test", "--release", "-j", "2", "--lib", "--test", "*", "--manifest-path",
                          str(REPO / "rust" / "Cargo.toml")],
                         capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "test result: ok" in out.stdout
    assert "#[test]" not in (REPO / "rust" / "src" / "main.rs").read_text(), \
        "src/main.rs has tests, which this command skips: move them to the library or tests/"
