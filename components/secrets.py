"""Secrets stay out of everything a run writes: logs, console, MLflow, reports, config copies.

Two nets: by key (a config value whose own key names a secret: ``api_key``, ``token``, …) and by
value (credentials inside URLs, secret-looking query parameters, and every secret value seen in
the config, wherever it turns up later: an exception message, a URL, a Hydra override line).
"""
from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping

REDACTED = "***redacted***"
# Whole key names (or their last ``_``-separated words): ``max_tokens`` is not a secret, ``token``,
# ``hf_token`` and ``access_token`` are.
_SECRET_WORDS = ("api_key", "apikey", "api-key", "token", "secret", "password", "passwd",
                 "authorization", "credentials", "credential", "access_key", "secret_key",
                 "private_key", "client_secret", "bearer")
_SECRET_KEY = re.compile(r"(?:^|[_\-.])(" + "|".join(map(re.escape, _SECRET_WORDS)) + r")$", re.I)
# scheme://user:password@host or scheme://token@host; Hydra echoes overrides with ``:`` escaped.
_URL_USERINFO = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*\\?://)(?P<info>[^\s/@:\\]+(?:\\?:[^\s/@]*)?)@")
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;](?:[\w\-]*(?:key|token|secret|password|passwd|sig|signature|auth)[\w\-]*)=)"
    r"(?P<value>[^&#\s'\"]+)", re.I)
# `service.api_key=...` as Hydra echoes overrides (multirun job lines, multirun.yaml)
_OVERRIDE_SECRET = re.compile(
    r"(?P<key>\b[\w.\-]*(?:" + "|".join(map(re.escape, _SECRET_WORDS)) + r")\s*[=:]\s*)"
    r"(?P<value>(?!\*\*\*redacted)[^\s,'\"\]}]+)", re.I)

_values: set[str] = set()
_lock = threading.Lock()


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(str(key).rsplit(".", 1)[-1]))


def register(values: Iterable[str]) -> None:
    """Remember secret values so ``scrub`` removes them wherever they appear later."""
    with _lock:
        _values.update(v for v in values if isinstance(v, str) and len(v) >= 4)


def scrub(text: str) -> str:
    """``text`` with credentials in URLs, secret query parameters and known secret values
    replaced."""
    if not text:
        return text
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['key']}{REDACTED}", text)
    text = _OVERRIDE_SECRET.sub(lambda m: f"{m['key']}{REDACTED}", text)
    with _lock:
        values = sorted(_values, key=len, reverse=True)
    for v in values:
        text = text.replace(v, REDACTED)
    return text


def redact(obj: Any) -> Any:
    """A copy of a nested dict/list with secret keys' values replaced and every string scrubbed."""
    if isinstance(obj, Mapping):
        return {k: (REDACTED if is_secret_key(str(k)) and v not in (None, "") else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return scrub(obj)
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
    """The secret strings in a config: values of secret keys and credentials inside URLs."""
    found: set[str] = set()
    for k, v in flatten(obj).items():
        if not isinstance(v, str):
            continue
        if is_secret_key(k) and len(v) >= 4:
            found.add(v)
        for m in _URL_USERINFO.finditer(v):
            # user:password -> the password; a lone token -> the token (a user name alone is
            # no secret, and scrubbing a word like "admin" everywhere would mangle logs)
            secret = m["info"].rsplit(":", 1)[-1].rstrip("\\")
            if len(secret) >= 4:
                found.add(secret)
        found.update(m["value"] for m in _QUERY_SECRET.finditer(v))
    return found


def scrub_file(path: Path, mode: int | None = 0o600) -> None:
    """Scrub a file in place (atomically) and make it private: it may hold resolved config."""
    from components.files import write_text

    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    new = scrub(text)
    if new != text:
        write_text(path, new)
    if mode is not None:
        os.chmod(path, mode)


class ScrubFilter(logging.Filter):
    """Scrubs every log record, so a secret inside an exception message or a URL never reaches a
    handler. Installed on handlers (a logger's filters miss records from child loggers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = scrub(msg)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if clean != msg or record.args:
            record.msg, record.args = clean, None
        return True


def install_log_filter() -> None:
    """Put a ScrubFilter on every handler of the root logger (idempotent)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ScrubFilter) for f in handler.filters):
            handler.addFilter(ScrubFilter())
