"""Conversion cache: ``<root>/<content sha256>-<options hash>/``, one folder per conversion.

A folder is written beside its final name and renamed into place when complete, so a crash or
a concurrent run never leaves a half-written entry that a later run would trust. Only what
depends on the bytes and the options is cached (Markdown, tables, exports, cover metadata); what
depends on the file name is worked out again each time.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from components.files import staged_dir

log = logging.getLogger(__name__)

CACHE_VERSION = "1"  # bump when the cached payload's shape or content changes
_EXPORT_EXT = {"json": ".json", "html": ".html"}


class ConvertCache:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def get(self, key: str) -> dict | None:
        """The cached payload (markdown, tables, exports, meta), or None on a miss."""
        d = self.root / key
        try:
            payload = json.loads((d / "result.json").read_text(encoding="utf-8"))
            payload["markdown"] = (d / "document.md").read_text(encoding="utf-8")
            payload["exports"] = {fmt: (d / f"export{_EXPORT_EXT[fmt]}").read_text(encoding="utf-8")
                                  for fmt in payload.pop("export_formats", [])}
            return payload
        except (OSError, ValueError, KeyError):
            return None  # missing or damaged: convert again, and overwrite

    def put(self, key: str, payload: dict) -> None:
        try:
            # A damaged entry (get() missed on it) is replaced; a concurrent writer's equal one too.
            with staged_dir(self.root / key, on_exists="replace") as tmp:
                (tmp / "document.md").write_text(payload["markdown"], encoding="utf-8")
                exports = payload.get("exports") or {}
                for fmt, text in exports.items():
                    (tmp / f"export{_EXPORT_EXT[fmt]}").write_text(text, encoding="utf-8")
                rest = {k: v for k, v in payload.items() if k not in ("markdown", "exports")}
                rest["export_formats"] = sorted(exports)
                (tmp / "result.json").write_text(json.dumps(rest, ensure_ascii=False), encoding="utf-8")
        except OSError as exc:
            # The disk is full or the cache unwritable: the conversion itself succeeded, so
            # only the cache entry is lost.
            log.debug("conversion cache: could not store %s: %s", key, exc)
