"""``python -m runner.health``: the table, and the exit status when something needed is down."""
from __future__ import annotations

import subprocess
import sys

from conftest import REPO
from runner import health
from tests.llm_fakes import FakeOllama
from tests.fixtures.ports import free_port
from tests.fixtures.mlflow_store import fresh_store


def test_health_table_with_ollama_up(tmp_path, capsys):
    srv = FakeOllama(models=("qwen3:1.7b", "gemma3:4b"))
    try:
        rc = health.main([f"service=ollama", f"service.base_url={srv.url}", "stages=[extract]",
                          f"cache_dir={tmp_path}"])
    finally:
        srv.close()
    out = capsys.readouterr().out
    assert rc == 0, out
    line = next(l for l in out.splitlines() if l.startswith("service ollama"))
    assert " warn " in line and "0.9.6" in line and "ollama pull llama3.2:1b" in line  # routed model missing
    assert "fallback embedded" in out and "MLX" in out and "Docling" in out and "Rust binary" in out
    assert f"disk {tmp_path}" in out


def test_health_exits_non_zero_when_the_configured_service_is_down(tmp_path):
    out = subprocess.run([sys.executable, "-m", "runner.health", "service=lmstudio",
                          f"service.base_url=http://127.0.0.1:{free_port()}/v1", "service.fallback=null",
                          "stages=[extract]", f"cache_dir={tmp_path}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "service lmstudio (qwen3-1.7b)" in out.stdout and "down" in out.stdout
    assert "Start server" in out.stderr  # says what to do


def test_health_reports_a_bad_override_by_key(tmp_path):
    rc = health.main(["service=ollama", "service.on_unavailable=maybe", f"cache_dir={tmp_path}"])
    assert rc == 2


def test_on_unavailable_fail_stops_the_run_before_any_stage(tmp_path):
    import os

    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "runner", f"hydra.run.dir={run_dir}", "service=ollama",
                          f"service.base_url=http://127.0.0.1:{free_port()}", "service.on_unavailable=fail",
                          "stages=[convert,process,extract]", f"cache_dir={tmp_path / 'cache'}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, MLFLOW_TRACKING_URI=fresh_store(tmp_path / "mlflow.db")))
    assert out.returncode != 0
    assert "cannot reach" in out.stderr + out.stdout and "ollama serve" in out.stderr + out.stdout
    assert not (run_dir / "documents").exists()  # convert never started
