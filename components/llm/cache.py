"""A response cache on disk: the same request to the same model is answered once.

Keyed on service, model, messages, schema and options; entries expire after ``ttl_s``. One JSON
file per entry, written atomically, so parallel workers and a crash never leave a torn entry.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from components.files import write_json
from components.settings import Settings

log = logging.getLogger(__name__)


class ResponseCache(Settings):
    """``service.cache``."""

    enabled: bool = True
    ttl_s: float = Field(7 * 24 * 3600, ge=0)
    dir: str | None = None  # ${cache_dir}/llm from config; None keeps nothing

    @property
    def active(self) -> bool:
        return self.enabled and self.dir is not None and self.ttl_s > 0

    @staticmethod
    def key(service: str, model: str, messages: list[dict], schema: dict, options: dict) -> str:
        blob = json.dumps([service, model, messages, schema, options], sort_keys=True,
                          ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return Path(self.dir) / key[:2] / f"{key}.json"

    def get(self, key: str, now: float | None = None) -> dict[str, Any] | None:
        if not self.active:
            return None
        path = self._path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("response cache: unreadable entry %s (%s); asking the server", path, exc)
            return None
        if (now or time.time()) - float(entry.get("created", 0)) > self.ttl_s:
            return None
        return entry.get("reply")

    def put(self, key: str, reply: dict[str, Any]) -> None:
        if not self.active:
            return
        try:
            write_json(self._path(key), {"created": time.time(), "reply": reply})
        except OSError as exc:  # a full disk must not fail the request that was answered
            log.warning("response cache: cannot write %s: %s", self._path(key), exc)
