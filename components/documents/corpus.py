"""Find the documents in a corpus path: a folder, a single file or a .zip.

Zips are opened here, safely (``components.documents.archives``), because Docling skips them and 3GPP
publishes every specification as a .docx inside a .zip. A bad archive is an error for that
archive alone.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from components.documents.archives import ArchiveError, extract_cached
from components.files import file_sha256

from components.settings import Settings


@dataclass
class Source:
    name: str  # as the user knows it: "specs/38899-h00.zip!38899-h00.docx"
    path: Path


@dataclass
class Problem:
    name: str
    error: str


def _walk(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def collect(path: str | Path, extensions: Iterable[str], work_dir: Path,
            limits: dict | None = None) -> tuple[list[Source], list[Problem]]:
    """Documents under ``path`` (zips expanded into ``work_dir``), and the files refused."""
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"corpus.path {root} does not exist")
    exts = {e.lower() for e in extensions}
    base = root if root.is_dir() else root.parent
    sources: list[Source] = []
    problems: list[Problem] = []
    for f in _walk(root):
        rel = f.relative_to(base).as_posix()
        ext = f.suffix.lower()
        if ext == ".zip":
            if ".zip" not in exts:
                continue
            dest = work_dir / f"{f.stem}-{file_sha256(f)[:12]}"
            try:
                inner = extract_cached(f, dest, **(limits or {}))
            except (ArchiveError, OSError, ValueError) as exc:
                # zipfile.BadZipFile is an Exception; catch it by name to keep the message
                problems.append(Problem(rel, str(exc)))
                continue
            except Exception as exc:  # BadZipFile, zlib errors
                problems.append(Problem(rel, f"{type(exc).__name__}: {exc}"))
                continue
            docs = [p for p in inner if p.suffix.lower() in exts - {".zip"}]
            if not docs:
                problems.append(Problem(rel, "archive holds no documents "
                                             f"(looked for {', '.join(sorted(exts - {'.zip'}))})"))
            for p in docs:
                sources.append(Source(f"{rel}!{p.relative_to(dest).as_posix()}", p))
        elif ext in exts:
            sources.append(Source(rel, f))
    return sources, problems


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def doc_ids(sources: list[Source]) -> list[str]:
    """Stable, file-name-safe, unique ids: the document's stem, suffixed on collision."""
    seen: dict[str, int] = {}
    out = []
    for s in sources:
        base = _UNSAFE.sub("-", s.path.stem).strip("-.") or "document"
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append(base if n == 0 else f"{base}-{n + 1}")
    return out


class CorpusConfig(Settings):
    """``corpus`` group: where the documents are. ``path`` None = the built-in sample corpus."""

    path: str | None = None
    extensions: list[str] = [".docx", ".pdf", ".md", ".markdown", ".html", ".htm", ".zip"]
