"""Experiment tracking: MLflow by default.

The interface a stage sees is two methods, ``log_metrics`` and ``log_artifact`` (as mlx-lm's
callbacks keep theirs small). Starting and ending the run, params and tags belong to the app.
"""
from __future__ import annotations

import logging
import os
import subprocess
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol

from components.secrets import REDACTED, flatten, redact, scrub  # noqa: F401 (REDACTED re-exported)

log = logging.getLogger(__name__)

class Tracker(Protocol):
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...


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
                 root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root else Path.cwd()
        self.uri = resolve_uri(uri, self.root)
        self.experiment = experiment
        self.run_name = run_name
        self.run_id: str | None = None
        self.experiment_id: str | None = None

    @contextmanager
    def start(self, params: Mapping[str, Any], tags: Mapping[str, str]) -> Iterator["MLflowTracker"]:
        import mlflow

        # MLflow's own chatter (alembic migrations, emoji links) is noise in a pipeline log.
        logging.getLogger("alembic").setLevel(logging.WARNING)
        mlflow.set_tracking_uri(self.uri)
        with self._store_lock():
            exp = mlflow.get_experiment_by_name(self.experiment)
            if exp is None:
                # With a database store MLflow would put artifacts in ./mlruns of whatever folder
                # the run started from; keep them beside the database instead.
                loc = None
                if self.uri.startswith("sqlite:///"):
                    loc = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
                mlflow.create_experiment(self.experiment, artifact_location=loc)
            exp = mlflow.set_experiment(self.experiment)
        self.experiment_id = exp.experiment_id
        flat = {k: ("" if v is None else str(v))[:6000] for k, v in flatten(redact(dict(params))).items()}
        with mlflow.start_run(run_name=self.run_name, tags={k: scrub(str(v)) for k, v in tags.items()}) as run:
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
        import mlflow

        if Path(path).exists():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def ui_hint(self) -> str:
        return f"mlflow ui --backend-store-uri {self.uri}"


class NullTracker:
    """For stages run outside the app (tests, notebooks)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def finish(self, status: str, tags: Mapping[str, str] | None = None) -> None:
        pass
