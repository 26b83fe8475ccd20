"""MLflow tracking on a real sqlite store: params, metrics, tags, artifacts; no secret leaks."""
from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

import logging
import os
import stat

import pytest

from components import secrets
from components.secrets import REDACTED, flatten, redact, scrub, scrub_file, secret_values
from components.tracking import MLflowTracker, resolve_uri
from tests.fixtures.mlflow_store import fresh_store

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
    tracker = MLflowTracker(uri=fresh_store(tmp_path / "mlflow.db"), experiment="t", root=tmp_path)
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


def _tracker(tmp_path, **kw) -> MLflowTracker:
    db = tmp_path / "mlflow.db"  # a test's second tracker opens its first one's store
    uri = f"sqlite:///{db}" if db.exists() else fresh_store(db)
    return MLflowTracker(uri=uri, experiment="t", root=tmp_path, **kw)


def test_experiment_opens_on_the_runs_table_and_runs_have_names_and_descriptions(tmp_path):
    tracker = _tracker(tmp_path, system_metrics=False)
    with tracker.start(params={"extraction": {"max_tokens": 256}}, tags={"scope": "partial"},
                       run_name="smollm2-135m convert+process 2026-01-01 10:00"):
        tracker.set_description("**FINISHED**\n- chunks: 22")
    client = MlflowClient(tracker.uri)
    exp = client.get_experiment_by_name("t")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    run = client.get_run(tracker.run_id)
    assert run.info.run_name == "smollm2-135m convert+process 2026-01-01 10:00"
    assert run.data.tags["mlflow.note.content"].startswith("**FINISHED**")
    assert run.data.params["extraction.max_tokens"] == "256"  # not mistaken for a secret


def test_an_experiment_made_before_gets_its_kind(tmp_path):
    import mlflow

    tracker = _tracker(tmp_path, system_metrics=False)
    mlflow.set_tracking_uri(tracker.uri)
    mlflow.create_experiment("t")
    with tracker.start(params={}, tags={}):
        pass
    assert MlflowClient(tracker.uri).get_experiment_by_name("t").tags["mlflow.experimentKind"] \
        == "custom_model_development"


def test_folders_tables_datasets_and_history(tmp_path):
    tracker = _tracker(tmp_path, system_metrics=False)
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    (adapters / "adapter_config.json").write_text('{"rank": 8}')
    (adapters / "adapters.safetensors").write_bytes(b"\0" * 16)
    rows = [{"question": f"What does X{i} stand for?", "answer": f"X{i} stands for Example {i}.",
             "kind": "acronym", "doc_id": "ts-99901"} for i in range(5)]
    with tracker.start(params={}, tags={}):
        tracker.log_artifact(adapters)
        tracker.log_table(rows, "dataset_sample.json")
        for split, context in (("train", "training"), ("valid", "validation"), ("test", "test")):
            tracker.log_dataset(rows, tmp_path / f"{split}.jsonl", split, context)
        for step, loss in ((5, 3.0), (10, 2.5)):
            tracker.log_metrics({"finetune/train_loss": loss}, step=step)
        history = tracker.metric_history(["finetune/train_loss", "finetune/val_loss"])
    assert history == {"finetune/train_loss": [(5, 3.0), (10, 2.5)], "finetune/val_loss": []}
    client = MlflowClient(tracker.uri)
    assert {a.path for a in client.list_artifacts(tracker.run_id, "adapters")} == \
        {"adapters/adapter_config.json", "adapters/adapters.safetensors"}
    table = json.loads(Path(client.download_artifacts(tracker.run_id, "dataset_sample.json", str(tmp_path))).read_text())
    assert len(table["data"]) == 5 and set(table["columns"]) == {"question", "answer", "kind", "doc_id"}
    inputs = client.get_run(tracker.run_id).inputs.dataset_inputs
    got = {(i.dataset.name, {t.key: t.value for t in i.tags}["mlflow.data.context"]) for i in inputs}
    assert got == {("train", "training"), ("valid", "validation"), ("test", "test")}
    assert all(json.loads(i.dataset.profile)["num_rows"] == 5 for i in inputs)


def test_system_metrics_are_sampled_while_the_run_lasts(tmp_path):
    import time

    tracker = _tracker(tmp_path, system_metrics=True, system_metrics_interval=0.5)
    with tracker.start(params={}, tags={}):
        time.sleep(2.5)
    metrics = MlflowClient(tracker.uri).get_run(tracker.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert "system/system_memory_usage_megabytes" in metrics


def _attach(args) -> str:
    root, sweep_dir, job = args
    t = MLflowTracker(uri="sqlite:///mlflow.db", experiment="t", root=root, system_metrics=False)
    parent = t.sweep_parent(sweep_dir, "sweep x lora.rank", {"sweep.id": "x"})
    with t.start(params={"lora": {"rank": job}}, tags={"sweep.id": "x"}, run_name=f"#{job} lora.rank={job}",
                 parent_run_id=parent):
        t.log_metrics({"eval/val_loss_after": 3.0 - job})
    return parent


def test_sweep_jobs_in_parallel_processes_share_one_parent_which_ends_with_them(tmp_path):
    import multiprocessing

    sweep_dir = tmp_path / "multirun" / "x"
    # The store exists before the jobs start, as a sweep's parent callback makes it. The jobs are
    # fresh interpreters, as a parallel launcher's are, forked from a server that imported MLflow's
    # SQL store once: spawned, each imported it while holding the parent's file lock, which made
    # the four jobs take turns (13 s on 2 cores; 5 s so).
    fresh_store(tmp_path / "mlflow.db")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["mlflow.store.tracking.sqlalchemy_store", "tests.test_tracking"])
    with ctx.Pool(4) as pool:
        parents = pool.map(_attach, [(str(tmp_path), str(sweep_dir), j) for j in range(4)])
    assert len(set(parents)) == 1
    tracker = _tracker(tmp_path, system_metrics=False)
    assert tracker.end_sweep_parent(sweep_dir, "eval/val_loss_after") == "FINISHED"
    assert tracker.end_sweep_parent(sweep_dir, "eval/val_loss_after") is None  # once
    client = MlflowClient(tracker.uri)
    exp = client.get_experiment_by_name("t").experiment_id
    runs = client.search_runs([exp])
    assert len(runs) == 5
    parent = client.get_run(parents[0])
    assert parent.info.status == "FINISHED" and parent.info.run_name == "sweep x lora.rank"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0]]
    assert sorted(r.info.run_name for r in children) == [f"#{j} lora.rank={j}" for j in range(4)]
    note = parent.data.tags["mlflow.note.content"]
    assert "4 FINISHED" in note and note.index("#3 lora.rank=3") < note.index("#0 lora.rank=0")
    assert parent.data.metrics["sweep/min/eval/val_loss_after"] == 0.0


def test_a_failed_job_fails_the_sweep_parent(tmp_path):
    tracker = _tracker(tmp_path, system_metrics=False)
    parent = tracker.sweep_parent(tmp_path / "s", "sweep s", {})
    with tracker.start(params={}, tags={}, parent_run_id=parent):
        tracker.finish("FAILED", {"failure.stage": "convert"})
    assert tracker.end_sweep_parent(tmp_path / "s") == "FAILED"
    assert MlflowClient(tracker.uri).get_run(parent).info.status == "FAILED"


# --- sweeps through `python -m runner -m`, as a user starts them (slow) -------------------------

def _corpus(root: Path) -> Path:
    """Three short documents in 3GPP style (own text), quick to convert."""
    d = root / "corpus"
    d.mkdir(parents=True, exist_ok=True)
    for n in range(3):
        (d / f"ts-9990{n}.md").write_text(
            f"# 3GPP TS 99.90{n} Example procedures\n\n## 1 Scope\n\nThe present document specifies "
            f"example procedure {n} between the XNB and the core network.\n\n## 3 Abbreviations\n\n"
            f"XNB\tExample Node B\n\n## 4 Procedure\n\nThe XNB shall send the EXAMPLE REQUEST "
            f"message {n} to the core network and start timer T99{n}.\n")
    return d


def _sweep(tmp_path: Path, *args: str):
    import subprocess
    import sys

    from conftest import REPO

    store = fresh_store(tmp_path / "mlflow.db")
    env = dict(os.environ, HF_HUB_OFFLINE="1", MLFLOW_TRACKING_URI=store)
    sweep = tmp_path / "sweep"
    out = subprocess.run([sys.executable, "-m", "runner", "-m", f"hydra.sweep.dir={sweep}",
                          f"cache_dir={tmp_path / 'cache'}", f"corpus.path={_corpus(tmp_path)}",
                          "stages=[convert,process]", "optimized_metric=process/chunks", *args],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    client = MlflowClient(store)
    parent_id = json.loads((sweep / "mlflow_parent.json").read_text())["run_id"]
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return sweep, client, parent, sorted(children, key=lambda r: int(r.data.tags["sweep.job"]))


def _check_sweep(sweep, parent, children, n: int) -> None:
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sweep.id"] == str(sweep) and parent.data.tags["scope"] == "partial"
    assert len(children) == n and {c.info.status for c in children} == {"FINISHED"}
    assert all(c.data.tags["sweep.id"] == str(sweep) and c.data.tags["scope"] == "partial" for c in children)
    assert f"{n} FINISHED" in parent.data.tags["mlflow.note.content"]
    from omegaconf import OmegaConf

    from conftest import CONF

    max_tokens = OmegaConf.load(CONF / "extraction" / "default.yaml").max_tokens
    for c in children:
        job = sweep / c.data.tags["sweep.job"]
        assert c.data.params["extraction.max_tokens"] == str(max_tokens)  # whole-name redaction only
        assert f"max_tokens: {max_tokens}" in (job / "config.resolved.yaml").read_text()
        assert (job / "report.html").is_file() and "process/chunks" in c.data.metrics


@pytest.mark.slow
def test_basic_sweep_makes_a_parent_with_named_children(tmp_path):
    sweep, client, parent, children = _sweep(tmp_path, "lora.rank=4,8")
    _check_sweep(sweep, parent, children, 2)
    assert [c.info.run_name for c in children] == ["#0 lora.rank=4", "#1 lora.rank=8"]
    assert parent.info.run_name.endswith("lora.rank")
    # Stage outputs are shared: the second job's convert and process come from the stage cache.
    last = json.loads((sweep / "1" / ".state" / "last_run.json").read_text())
    assert {v["status"] for v in last.values()} == {"cached"}


@pytest.mark.slow
def test_joblib_preset_runs_jobs_in_parallel_each_on_its_share_of_the_machine(tmp_path):
    from components.hardware import detect

    sweep, client, parent, children = _sweep(tmp_path, "hydra/launcher=local_parallel",
                                             "hydra.launcher.n_jobs=2", "lora.rank=4,8")
    _check_sweep(sweep, parent, children, 2)
    share = max(1, detect()["cpus"] // 2)
    assert {c.data.tags["hardware.cpu_threads"] for c in children} == {str(share)}
    assert {int(c.data.tags["hardware.convert_workers"]) for c in children} <= set(range(1, share + 1))
    pids = {json.loads((sweep / str(j) / ".state" / "run.json").read_text())["pid"] for j in (0, 1)}
    assert os.getpid() not in pids  # the jobs ran in worker processes


@pytest.mark.slow
def test_optuna_preset_optimizes_the_returned_metric_in_the_configured_direction(tmp_path):
    import yaml

    sweep, client, parent, children = _sweep(
        tmp_path, "hydra/sweeper=optuna_search", "hydra.sweeper.n_trials=2",
        "optimize.direction=maximize", "process.chunk.max_chars=choice(300,3000)")
    _check_sweep(sweep, parent, children, 2)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    chunks = [c.data.metrics["process/chunks"] for c in children]
    assert best["best_value"] == max(chunks)
    assert all(c.info.run_name.startswith(f"#{i} process.chunk.max_chars=") for i, c in enumerate(children))


def test_both_trackers_are_what_the_app_and_the_stages_use(tmp_path):
    """The protocols name every method the app (Tracker) and the stages (StageTracker) call."""
    import ast

    from components.tracking import NullTracker, StageTracker, Tracker
    from conftest import REPO

    declared = {n for p in (Tracker, StageTracker) for n in p.__dict__ if not n.startswith("_")} | {"run_id"}
    called = set()
    for path in [*(REPO / "runner").rglob("*.py"), *(REPO / "components").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute | ast.Name):
                owner = node.value.attr if isinstance(node.value, ast.Attribute) else node.value.id
                if owner == "tracker":
                    called.add(node.attr)
    assert called - {"uri", "experiment"} <= declared, called - declared
    assert isinstance(NullTracker(), Tracker) and isinstance(_tracker(tmp_path), Tracker)
