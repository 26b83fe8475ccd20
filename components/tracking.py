"""Experiment tracking: MLflow by default.

The interface a stage sees is small: ``log_metrics``, ``log_artifact`` (a file or a folder) and
``set_tags`` (as mlx-lm's callbacks keep theirs small). Starting and ending the run, params,
datasets, tables, the description and a sweep's parent run belong to the app.

A sweep (``-m``) gets one parent run, keyed by its sweep directory: whoever comes first (the
Hydra callback in the launching process, or a job in a worker process) creates it under a file
lock and writes its id to ``<sweep dir>/mlflow_parent.json``; every job attaches to it as a child
(``mlflow.parentRunId``), so the UI groups and compares the jobs.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Protocol, runtime_checkable

from components.files import write_json
from components.secrets import REDACTED, flatten, redact, scrub  # noqa: F401 (REDACTED re-exported)

log = logging.getLogger(__name__)

# The experiment kind the UI opens on the runs table with (not the GenAI traces screen).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# What the UI shows as the run's description.
NOTE = "mlflow.note.content"
PARENT_FILE = "mlflow_parent.json"


class StageTracker(Protocol):
    """What a stage may record: metrics, files and tags of the current run."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...


@runtime_checkable
class Tracker(StageTracker, Protocol):
    """What the app does with a tracker around the stages: the run's life, its description and
    dataset, loss curves for the report, and the parent run of a sweep. ``MLflowTracker`` and
    ``NullTracker`` both are one (tests/test_tracking.py checks)."""

    run_id: str | None

    def start(self, params: Mapping[str, Any], tags: Mapping[str, str], run_name: str | None = None,
              parent_run_id: str | None = None) -> Any: ...

    def finish(self, status: str, tags: Mapping[str, str] | None = None) -> None: ...

    def close_stale(self, run_id: str, reason: str) -> bool: ...

    def set_description(self, text: str) -> None: ...

    def log_table(self, rows: list[dict], artifact_file: str) -> None: ...

    def log_dataset(self, rows: list[dict], source: str | os.PathLike, name: str, context: str) -> None: ...

    def metric_history(self, keys: Iterable[str]) -> dict[str, list[tuple[int, float]]]: ...

    def sweep_parent(self, sweep_dir: str | os.PathLike, name: str, tags: Mapping[str, str]) -> Any: ...

    def end_sweep_parent(self, sweep_dir: str | os.PathLike, metric: str | None = None,
                         status: str | None = None) -> Any: ...

    def ui_hint(self) -> str: ...


def git_commit(repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def resolve_uri(uri: str, root: Path) -> str:
    """A relative ``sqlite:///path`` is taken from the repository root, not the current folder."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = uri[len("sqlite:///"):]
        path = (root / rel).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    if "://" not in uri:  # a plain folder: file store
        path = (root / uri).resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path.as_uri()
    return uri


class MLflowTracker:
    def __init__(self, uri: str, experiment: str, run_name: str | None = None,
                 root: str | os.PathLike | None = None, system_metrics: bool = True,
                 system_metrics_interval: float = 10.0) -> None:
        self.root = Path(root) if root else Path.cwd()
        self.uri = resolve_uri(uri, self.root)
        self.experiment = experiment
        self.run_name = run_name
        self.system_metrics = system_metrics
        self.system_metrics_interval = system_metrics_interval
        self.run_id: str | None = None
        self.experiment_id: str | None = None

    def _experiment(self):
        """The experiment (created once, under the store lock), tagged as model development."""
        import mlflow

        # MLflow's own chatter (alembic migrations, the system-metrics sampler starting and
        # stopping) is noise in a pipeline log; importing mlflow set its level back to INFO.
        for name in ("alembic", "mlflow"):
            logging.getLogger(name).setLevel(logging.WARNING)
        mlflow.set_tracking_uri(self.uri)
        with self._store_lock():
            exp = mlflow.get_experiment_by_name(self.experiment)
            if exp is None:
                # With a database store MLflow would put artifacts in ./mlruns of whatever folder
                # the run started from; keep them beside the database instead.
                loc = None
                if self.uri.startswith("sqlite:///"):
                    loc = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
                mlflow.create_experiment(self.experiment, artifact_location=loc, tags=EXPERIMENT_KIND)
                exp = mlflow.get_experiment_by_name(self.experiment)
            elif not exp.tags.get("mlflow.experimentKind"):  # made by an earlier version
                for k, v in EXPERIMENT_KIND.items():
                    mlflow.tracking.MlflowClient(self.uri).set_experiment_tag(exp.experiment_id, k, v)
        self.experiment_id = exp.experiment_id
        return exp

    @contextmanager
    def start(self, params: Mapping[str, Any], tags: Mapping[str, str], run_name: str | None = None,
              parent_run_id: str | None = None) -> Iterator["MLflowTracker"]:
        """Start the run: ``run_name`` unless the config names one; a child of ``parent_run_id``
        (a sweep's parent run) when given."""
        import mlflow

        exp = self._experiment()
        flat = {k: ("" if v is None else str(v))[:6000] for k, v in flatten(redact(dict(params))).items()}
        if self.system_metrics:
            mlflow.set_system_metrics_sampling_interval(self.system_metrics_interval)
        name = scrub(self.run_name or run_name or "") or None
        with mlflow.start_run(experiment_id=exp.experiment_id, run_name=name,
                              parent_run_id=parent_run_id, log_system_metrics=self.system_metrics,
                              tags={k: scrub(str(v)) for k, v in tags.items()}) as run:
            self.run_id = run.info.run_id
            items = list(flat.items())
            for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
                mlflow.log_params(dict(items[i:i + 100]))
            try:
                yield self
            except BaseException as exc:
                self.finish("FAILED", {"failure.reason": f"{type(exc).__name__}: {exc}"[:500]})
                raise

    def _store_lock(self):
        """Parallel runs (a joblib sweep, two terminals) creating one sqlite store or experiment
        at once would race on its tables; the first creates, the others wait."""
        from filelock import FileLock

        if self.uri.startswith("sqlite:///"):
            return FileLock(self.uri[len("sqlite:///"):] + ".lock", timeout=120)
        return nullcontext()

    def finish(self, status: str, tags: Mapping[str, str] | None = None) -> None:
        """End the run as FINISHED, FAILED or KILLED, with the reason in ``tags``."""
        import mlflow

        if mlflow.active_run() is None:
            return
        if tags:
            self.set_tags(tags)
        mlflow.end_run(status)

    def close_stale(self, run_id: str, reason: str) -> bool:
        """Close a run left RUNNING by a process that died; True when it was."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.uri)
        try:
            run = client.get_run(run_id)
        except Exception:  # another store, or deleted
            return False
        if run.info.status != "RUNNING":
            return False
        client.set_tag(run_id, "failure.reason", scrub(reason))
        client.set_terminated(run_id, "FAILED")
        return True

    def set_tags(self, tags: Mapping[str, str]) -> None:
        import mlflow

        mlflow.set_tags({k: scrub(str(v)) for k, v in tags.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if clean:
            mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """A file, or a folder with its contents (under ``artifact_path`` or the folder's name)."""
        import mlflow

        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path or path.name)
        elif path.exists():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_description(self, text: str) -> None:
        """The run's description in the UI (markdown)."""
        self.set_tags({NOTE: text[:5000]})

    def log_table(self, rows: list[dict], artifact_file: str) -> None:
        """Rows as a table artifact the UI shows as a table (``mlflow.log_table``)."""
        import mlflow

        if rows:
            columns = sorted({k for r in rows for k in r})
            mlflow.log_table({c: [scrub(str(r.get(c, ""))) for r in rows] for c in columns},
                             artifact_file=artifact_file)

    def log_dataset(self, rows: list[dict], source: str | os.PathLike, name: str, context: str) -> None:
        """A split as a dataset input of the run (name, digest, schema, rows) with its context
        (``training``, ``validation``, ``test``)."""
        import mlflow
        import pandas as pd

        with warnings.catch_warnings():  # "source can be interpreted in multiple ways": a file
            warnings.simplefilter("ignore", UserWarning)
            ds = mlflow.data.from_pandas(pd.DataFrame(rows), source=str(source), name=name)
        mlflow.log_input(ds, context=context)

    def metric_history(self, keys: Iterable[str]) -> dict[str, list[tuple[int, float]]]:
        """The logged series of each key, as ``(step, value)``, for the report's curves."""
        from mlflow.tracking import MlflowClient

        if not self.run_id:
            return {}
        client = MlflowClient(self.uri)
        return {k: [(m.step, m.value) for m in client.get_metric_history(self.run_id, k)] for k in keys}

    # --- a sweep's parent run -----------------------------------------------------------------

    def sweep_parent(self, sweep_dir: str | os.PathLike, name: str, tags: Mapping[str, str]) -> str:
        """The id of the sweep's parent run, created by the first caller (under a file lock)."""
        from filelock import FileLock
        from mlflow.tracking import MlflowClient

        sweep_dir = Path(sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        record = sweep_dir / PARENT_FILE
        with FileLock(str(record) + ".lock", timeout=120):
            if record.is_file():
                return json.loads(record.read_text(encoding="utf-8"))["run_id"]
            exp = self._experiment()
            run = MlflowClient(self.uri).create_run(
                exp.experiment_id, run_name=scrub(name), tags={k: scrub(str(v)) for k, v in tags.items()})
            write_json(record, {"run_id": run.info.run_id, "uri": self.uri})
            return run.info.run_id

    def end_sweep_parent(self, sweep_dir: str | os.PathLike, metric: str | None = None,
                         status: str | None = None) -> str | None:
        """Close the sweep's parent run: FAILED or KILLED if a job ended so (or ``status``
        says), else FINISHED; its description lists the jobs with ``metric``. Returns the
        status set, None when there was no open parent."""
        from mlflow.tracking import MlflowClient

        record = Path(sweep_dir) / PARENT_FILE
        if not record.is_file():
            return None
        parent = json.loads(record.read_text(encoding="utf-8"))["run_id"]
        client = MlflowClient(self.uri)
        if client.get_run(parent).info.status != "RUNNING":
            return None
        exp = client.get_run(parent).info.experiment_id
        children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'",
                                      max_results=10000)
        statuses = {c.info.status for c in children}
        final = status or next((s for s in ("FAILED", "KILLED") if s in statuses), "FINISHED")
        lines = [f"Sweep of {len(children)} jobs: " + ", ".join(
            f"{sum(c.info.status == s for c in children)} {s}" for s in sorted(statuses))]
        if metric:
            def key(c):
                v = c.data.metrics.get(metric)
                return (v is None, v if v is not None else 0.0)
            lines += ["", f"| job | status | {metric} |", "|---|---|---|"]
            lines += [f"| {c.info.run_name} | {c.info.status} | {c.data.metrics.get(metric, '')} |"
                      for c in sorted(children, key=key)]
            values = [c.data.metrics[metric] for c in children if metric in c.data.metrics]
            if values:
                client.log_metric(parent, f"sweep/min/{metric}", min(values))
                client.log_metric(parent, f"sweep/max/{metric}", max(values))
        client.set_tag(parent, NOTE, scrub("\n".join(lines)))
        client.set_terminated(parent, final)
        return final

    def ui_hint(self) -> str:
        return f"mlflow ui --backend-store-uri {self.uri}"


class NullTracker:
    """For stages run outside the app (tests, notebooks)."""

    run_id = None

    def set_description(self, text: str) -> None:
        pass

    def log_table(self, rows: list[dict], artifact_file: str) -> None:
        pass

    def log_dataset(self, rows: list[dict], source: str | os.PathLike, name: str, context: str) -> None:
        pass

    def metric_history(self, keys: Iterable[str]) -> dict[str, list[tuple[int, float]]]:
        return {}

    def sweep_parent(self, sweep_dir, name: str, tags: Mapping[str, str]) -> None:
        return None

    def end_sweep_parent(self, sweep_dir, metric: str | None = None, status: str | None = None) -> None:
        return None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def finish(self, status: str, tags: Mapping[str, str] | None = None) -> None:
        pass

    @contextmanager
    def start(self, params: Mapping[str, Any], tags: Mapping[str, str], run_name: str | None = None,
              parent_run_id: str | None = None) -> Iterator["NullTracker"]:
        yield self

    def close_stale(self, run_id: str, reason: str) -> bool:
        return False

    def ui_hint(self) -> str:
        return "no tracking store"
