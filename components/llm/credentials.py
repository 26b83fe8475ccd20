"""API keys and endpoints for LLM services: the environment first, then a per-user file.

``~/.config/ericsson-pipeline/credentials.json`` holds, per service name, ``api_key`` and an
optional ``base_url``::

    {"openai": {"api_key": "sk-...", "base_url": "https://gateway.example/v1"}}

A file readable by others gets a warning; a world-writable one is refused (anyone on the machine
could point the pipeline at their own endpoint). A key is wrapped in ``Secret`` so that printing,
logging or formatting it into an exception shows only a placeholder.
"""
from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

ENV_FILE = "TELECOM_CREDENTIALS_FILE"  # where tests and power users point at another file


class CredentialsError(RuntimeError):
    """The credentials file cannot be used; the message names it and says why."""


class Secret:
    """A value that never shows itself in repr/str/format."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


def default_path() -> Path:
    env = os.environ.get(ENV_FILE)
    return Path(env).expanduser() if env else Path.home() / ".config" / "ericsson-pipeline" / "credentials.json"


def _env_name(service: str, what: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in service).upper() + "_" + what


def load_file(path: Path | None = None) -> dict:
    """The parsed file ({} when absent), after the permission checks."""
    path = path or default_path()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    if mode & stat.S_IWOTH:
        raise CredentialsError(f"{path}: refused: the file is writable by every user on this machine; "
                               f"run `chmod 600 {path}`")
    if mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWGRP):
        log.warning("%s is readable by other users (mode %o); run `chmod 600 %s`",
                    path, stat.S_IMODE(mode), path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        # The parser's message may quote file content (a key): name the position only.
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise CredentialsError(f"{path}: not valid JSON{where}") from None
    if not isinstance(data, dict):
        raise CredentialsError(f"{path}: expected an object keyed by service name")
    return data


def resolve(service: str, api_key: str | None = None, base_url: str | None = None,
            path: Path | None = None) -> tuple[Secret | None, str | None]:
    """(key, base_url) for ``service``: the config value when set (often itself an environment
    interpolation), else ``<SERVICE>_API_KEY`` / ``<SERVICE>_BASE_URL``, else the file."""
    key = api_key or os.environ.get(_env_name(service, "API_KEY"))
    url = base_url or os.environ.get(_env_name(service, "BASE_URL"))
    if key is None or url is None:
        entry = load_file(path).get(service) or {}
        if not isinstance(entry, dict):
            raise CredentialsError(f"{path or default_path()}: entry '{service}' must be an object "
                                   f"with api_key and optional base_url")
        key = key or entry.get("api_key")
        url = url or entry.get("base_url")
    return (Secret(str(key)) if key else None), url
