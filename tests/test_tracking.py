"""MLflow tracking on a real sqlite store: params, metrics, tags, artifacts; no secret leaks."""
from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from components.tracking import (REDACTED, MLflowTracker, flatten, redact, resolve_uri,
                                 scrub_file, secret_values)

CFG = {"service": {"name": "openai", "api_key": "sk-live-abcdef123456", "base_url": "http://x"},
       "tracking": {"token": None}, "lora": {"rank": 8}, "stages": ["convert", "process"]}


def test_redact_and_flatten():
    flat = flatten(redact(CFG))
    assert flat["service.api_key"] == REDACTED
    assert flat["tracking.token"] is None  # nothing to hide
    assert flat["lora.rank"] == 8 and flat["stages"] == ["convert", "process"]
    assert secret_values(CFG) == {"sk-live-abcdef123456"}


def test_scrub_file(tmp_path):
    f = tmp_path / "overrides.yaml"
    f.write_text("- service.api_key=sk-live-abcdef123456\n- lora.rank=8\n")
    scrub_file(f, secret_values(CFG))
    assert "sk-live" not in f.read_text() and "lora.rank=8" in f.read_text()


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
