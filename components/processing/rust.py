"""Builds (when stale) and runs the `ericsson-dataset-pipeline` binary."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable

from components.processing.errors import ProcessingError

log = logging.getLogger(__name__)

CRATE_DIR = Path(__file__).resolve().parents[2] / "rust"
BINARY = "ericsson-dataset-pipeline"
BUILD_TIMEOUT_S = 1800


def cargo() -> str | None:
    found = shutil.which("cargo")
    if found:
        return found
    home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo")) / "bin" / "cargo"
    return str(home) if home.is_file() else None


def binary_path(crate_dir: Path = CRATE_DIR) -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", crate_dir / "target"))
    return target / "release" / BINARY


def sources(crate_dir: Path) -> list[Path]:
    files = [crate_dir / "Cargo.toml", crate_dir / "Cargo.lock"]
    return [f for f in files if f.exists()] + sorted((crate_dir / "src").rglob("*.rs"))


def is_up_to_date(crate_dir: Path = CRATE_DIR) -> bool:
    binary = binary_path(crate_dir)
    if not binary.is_file():
        return False
    built = binary.stat().st_mtime
    return all(src.stat().st_mtime <= built for src in sources(crate_dir))


def available(crate_dir: Path = CRATE_DIR) -> bool:
    return cargo() is not None or is_up_to_date(crate_dir)


def ensure_binary(crate_dir: Path = CRATE_DIR, jobs: int = 2) -> Path:
    """The release binary, built with cargo first when any source is newer than it."""
    if is_up_to_date(crate_dir):
        return binary_path(crate_dir)
    exe = cargo()
    if exe is None:
        raise ProcessingError("build", "cargo not found; install Rust (https://rustup.rs) or set "
                              "process.engine=python", str(crate_dir))
    cmd = [exe, "build", "--release", "--bin", BINARY, "--manifest-path", str(crate_dir / "Cargo.toml"), "-j", str(jobs)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ProcessingError("build", f"cargo build timed out after {BUILD_TIMEOUT_S} s", str(crate_dir)) from exc
    if done.returncode != 0:
        raise ProcessingError("build", f"cargo build failed:\n{done.stderr[-4000:]}", str(crate_dir))
    # cargo leaves the mtime alone when nothing needed rebuilding (e.g. a touched file).
    binary = binary_path(crate_dir)
    os.utime(binary)
    return binary


def parse_error(stderr: str, returncode: int, config_path: Path) -> ProcessingError:
    """The binary's last stderr line is {"kind", "message", "path"}; anything else is a crash."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if lines:
        try:
            obj = json.loads(lines[-1])
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and {"kind", "message"} <= obj.keys():
            return ProcessingError(str(obj["kind"]), str(obj["message"]), str(obj.get("path", "")))
    tail = "\n".join(lines[-20:]) or "(no output)"
    return ProcessingError("crash", f"{BINARY} exited with status {returncode}: {tail}", str(config_path))


def run_binary(binary: Path, config_path: Path, timeout_s: float,
               on_progress: Callable[[str, int, int], None] | None = None,
               every_s: float = 1.0) -> dict[str, Any]:
    """Runs the binary on the config; ``on_progress(phase, done, total)`` gets its progress
    lines (SPEC.md, "Progress") as they come, every ``every_s``."""
    env = dict(os.environ, EDP_PROGRESS=str(every_s)) if on_progress else None
    proc = subprocess.Popen([str(binary), str(config_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    out: list[str] = []
    errors: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:
            if on_progress and line.startswith('{"progress":'):
                try:
                    p = json.loads(line)["progress"]
                    on_progress(p["phase"], int(p["done"]), int(p["total"]))
                except (ValueError, KeyError, TypeError):
                    pass
                except Exception:  # a display problem never fails the run
                    log.debug("progress display failed", exc_info=True)
            else:
                errors.append(line)

    readers = [threading.Thread(target=read_stderr, daemon=True),
               threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)]
    for t in readers:
        t.start()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.wait()
        raise ProcessingError("timeout", f"{BINARY} ran past process.timeout_s={timeout_s}", str(config_path)) from exc
    except BaseException:  # a stop request: the binary goes too
        proc.kill()
        proc.wait()
        raise
    for t in readers:
        t.join()
    stdout = out[0] if out else ""
    if proc.returncode != 0:
        raise parse_error("".join(errors), proc.returncode, config_path)
    try:
        return json.loads(stdout)
    except json.JSONDecodeError as exc:
        raise ProcessingError("crash", f"{BINARY} printed no JSON result: {stdout[-500:]!r}", str(config_path)) from exc


def run(config_path: Path, timeout_s: float, crate_dir: Path = CRATE_DIR,
        on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    return run_binary(ensure_binary(crate_dir), config_path, timeout_s, on_progress)
