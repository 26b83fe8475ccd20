"""File helpers shared by every layer: atomic writes (a reader never sees a half-written file, a
crash never destroys an old one), folders built aside and published in one rename, and content
hashes."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, TextIO


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[TextIO]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def json_sha256(obj: Any) -> str:
    """The hash of a JSON-able value, the same for equal values whatever their keys' order (what
    is not JSON counts by its ``str``): the key of a cache entry, a request or a provenance."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def files_under(path: Path) -> list[Path]:
    """``path`` if it is a file, else every file below it, sorted."""
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def stat_listing(path: Path) -> list[tuple[Path, int, int]]:
    """(file, size, modification time in ns) of each of ``files_under(path)``: what tells a
    changed folder from the same one without reading gigabytes of models or documents."""
    out = []
    for f in files_under(path):
        st = f.stat()
        out.append((f, st.st_size, st.st_mtime_ns))
    return out


def hash_path(path: Path) -> str:
    """Content hash of a file, or of a folder's relative names and file contents."""
    h = hashlib.sha256()
    for f in files_under(path):
        h.update(f.relative_to(path if path.is_dir() else path.parent).as_posix().encode() + b"\0")
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def _complete(final: Path, marker: str | None) -> bool:
    if marker:
        return (final / marker).exists()
    return final.is_dir() and any(final.iterdir())


@contextmanager
def staged_dir(final: str | os.PathLike, on_exists: str = "keep", marker: str | None = None,
               mode: int = 0o755) -> Iterator[Path]:
    """Build a folder in a unique sibling temp folder and publish it with one rename.

    Shared caches are written by concurrent runs, so the temp name is unique per writer and the
    race is settled by ``on_exists``: ``keep`` (the first complete folder wins, later writers
    discard their copy: right when every writer makes the same content) or ``replace`` (the
    newest wins: right when an existing folder may be stale or damaged). ``marker``, a file that
    only a complete folder has, tells a complete folder from a leftover.
    """
    if on_exists not in ("keep", "replace"):
        raise ValueError(f"on_exists must be 'keep' or 'replace', not {on_exists!r}")
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name[:40]}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        tmp.chmod(mode)  # mkdtemp makes it owner-only
        if on_exists == "keep":
            # Let the rename settle the race: it fails onto a non-empty folder, so the first
            # complete copy stays. Checking for one first and then moving aside whatever is
            # there could move aside a copy another writer had just published and read.
            try:
                os.rename(tmp, final)
                return
            except OSError:
                if _complete(final, marker):
                    return
            # What is there lacks the marker: a leftover, replaced below.
        if final.exists():
            # Move the old folder aside first: rename cannot replace a non-empty folder.
            old = Path(tempfile.mkdtemp(prefix=f".{final.name[:40]}.", suffix=".old", dir=final.parent))
            try:
                os.replace(final, old / "x")
            except FileNotFoundError:  # another writer moved it meanwhile
                pass
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not _complete(final, marker):  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def build_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Build a folder as ``<final>.partial`` and swap it in only when the block completes: an
    error leaves the previous ``final`` as it was. The swap moves the previous one aside to
    ``<final>.old`` first, so a crash between the two renames leaves it there;
    ``recover_dir`` (called here first) puts it back."""
    final = Path(final)
    recover_dir(final)
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)  # what an earlier crash left
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(final.name + ".old")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(final: str | os.PathLike) -> None:
    """Put back the previous ``final`` a crash mid-swap (``build_dir``) left as ``<final>.old``."""
    final = Path(final)
    old = final.with_name(final.name + ".old")
    if old.exists():
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as fh:
        fh.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    n = 0
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
