"""MLflow tracking on a real sqlite store: params, metrics, tags, artifacts; no secret leaks."""
from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

import logging
import os
import stat

import pytest

from components import secrets
from components.secrets import REDACTED, flatten, redact, scrub, scrub_file, secret_values
from components.tracking import MLflowTracker, resolve_uri

CFG = {"service": {"name": "openai", "api_key": "sk-live-abcdef123456", "base_url": "http://x"},
       "tracking": {"token": None}, "lora": {"rank": 8}, "stages": ["convert", "process"]}


def test_redact_and_flatten():
    flat = flatten(redact(CFG))
    assert flat["service.api_key"] == REDACTED
    assert flat["tracking.token"] is None  # nothing to hide
    assert flat["lora.rank"] == 8 and flat["stages"] == ["convert", "process"]
    assert secret_values(CFG) == {"sk-live-abcdef123456"}


def test_scrub_file_by_value_and_makes_it_private(tmp_path):
    secrets.register(secret_values(CFG))
    f = tmp_path / "overrides.yaml"
    f.write_text("- service.api_key=sk-live-abcdef123456\n- lora.rank=8\n- note=sk-live-abcdef123456\n")
    f.chmod(0o644)
    scrub_file(f)
    assert "sk-live" not in f.read_text() and "lora.rank=8" in f.read_text()
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600


def test_secret_keys_are_whole_names_not_substrings():
    cfg = {"extraction": {"max_tokens": 256}, "evaluate": {"max_tokens": 48},
           "hub": {"hf_token": "hf_abcdefgh"}, "x": {"access_token": "t0ps3cret"}}
    flat = flatten(redact(cfg))
    assert flat["extraction.max_tokens"] == 256 and flat["evaluate.max_tokens"] == 48
    assert flat["hub.hf_token"] == REDACTED and flat["x.access_token"] == REDACTED


@pytest.mark.parametrize("text, leaked", [
    ("http://user:sk-url-999888777@host:8000/v1", "sk-url-999888777"),
    ("https://sk-url-token-123456@host/v1", "sk-url-token-123456"),
    ("GET http://h/v1/models?api_key=qk-778899&x=1", "qk-778899"),
    ("http://h/x?token=abcd1234efgh#frag", "abcd1234efgh"),
    ("#0 : lora.rank=8 service.api_key=sk-cli-445566", "sk-cli-445566"),
])
def test_secrets_by_value_in_urls_queries_and_overrides(text, leaked):
    out = scrub(text)
    assert leaked not in out and REDACTED in out


def test_url_credentials_in_config_become_known_secrets():
    cfg = {"service": {"base_url": "http://user:sk-in-url-424242@host/v1"}}
    assert "sk-in-url-424242" in secret_values(cfg)
    assert "sk-in-url-424242" not in str(redact(cfg))


def test_log_records_are_scrubbed(caplog):
    secrets.register({"sk-registered-31337"})
    handler = logging.StreamHandler()
    handler.addFilter(secrets.ScrubFilter())
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed: %s", ("key sk-registered-31337",), None)
    handler.filter(record)
    assert "sk-registered" not in record.getMessage() and REDACTED in record.getMessage()


def test_relative_sqlite_uri_is_taken_from_the_root(tmp_path):
    uri = resolve_uri("sqlite:///outputs/mlflow.db", tmp_path)
    assert uri == f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"


def test_run_records_params_metrics_tags_and_artifacts_without_secrets(tmp_path):
    tracker = MLflowTracker(uri="sqlite:///mlflow.db", experiment="t", root=tmp_path)
    art = tmp_path / "report.md"
    art.write_text("# report\n")
    with tracker.start(params=CFG, tags={"service.used": "embedded"}):
        tracker.log_metrics({"finetune/train_loss": 2.5}, step=1)
        tracker.log_metrics({"finetune/train_loss": 1.5}, step=2)
        tracker.log_artifact(art)
    client = MlflowClient(tracking_uri=tracker.uri)
    run = client.get_run(tracker.run_id)
    assert run.data.params["lora.rank"] == "8"
    assert run.data.params["service.api_key"] == REDACTED
    assert "sk-live" not in repr(run.data.params)
    assert run.data.tags["service.used"] == "embedded"
    hist = client.get_metric_history(tracker.run_id, "finetune/train_loss")
    assert [(m.step, m.value) for m in hist] == [(1, 2.5), (2, 1.5)]
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["report.md"]
    # Artifacts live beside the database, not in ./mlruns of the current folder.
    assert (tmp_path / "mlartifacts").is_dir() and not Path("mlruns").exists()
