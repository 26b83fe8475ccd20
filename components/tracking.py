"""Experiment tracking: MLflow by default.

The interface a stage sees is two methods, ``log_metrics`` and ``log_artifact`` (as mlx-lm's
callbacks keep theirs small). Starting and ending the run, params and tags belong to the app.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol

from components.files import write_text

log = logging.getLogger(__name__)

REDACTED = "***redacted***"
_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|authorization|credential)", re.I)


class Tracker(Protocol):
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key.rsplit(".", 1)[-1]))


def redact(obj: Any) -> Any:
    """A copy of a nested dict/list with every secret-looking key's value replaced."""
    if isinstance(obj, Mapping):
        return {k: (REDACTED if is_secret_key(str(k)) and v not in (None, "") else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list) and obj and any(isinstance(v, (Mapping, list)) for v in obj):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = obj
    return out


def secret_values(obj: Any) -> set[str]:
    """The secret strings in a config, so they can be scrubbed from files Hydra wrote."""
    found: set[str] = set()
    for k, v in flatten(obj).items():
        if is_secret_key(k) and isinstance(v, str) and len(v) >= 4:
            found.add(v)
    return found


def scrub_file(path: Path, secrets: set[str]) -> None:
    if not secrets or not path.is_file():
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    new = text
    for s in secrets:
        new = new.replace(s, REDACTED)
    if new != text:
        write_text(path, new)


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
        exp = mlflow.get_experiment_by_name(self.experiment)
        if exp is None:
            # With a database store MLflow would put artifacts in ./mlruns of whatever folder the
            # run started from; keep them beside the database instead.
            loc = None
            if self.uri.startswith("sqlite:///"):
                loc = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
            try:
                mlflow.create_experiment(self.experiment, artifact_location=loc)
            except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel job
                pass
        exp = mlflow.set_experiment(self.experiment)
        self.experiment_id = exp.experiment_id
        flat = {k: ("" if v is None else str(v))[:6000] for k, v in flatten(redact(dict(params))).items()}
        with mlflow.start_run(run_name=self.run_name, tags=dict(tags)) as run:
            self.run_id = run.info.run_id
            items = list(flat.items())
            for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
                mlflow.log_params(dict(items[i:i + 100]))
            try:
                yield self
            except BaseException:
                mlflow.set_tag("status", "failed")
                raise

    def set_tags(self, tags: Mapping[str, str]) -> None:
        import mlflow

        mlflow.set_tags({k: str(v) for k, v in tags.items()})

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
