"""Safe zip extraction: refuse path traversal, symlinks, encrypted entries and zip bombs.

Every refusal is an ``ArchiveError`` naming the archive (and the entry), so the caller can report
that one file and carry on with the rest. Extraction goes to a temporary sibling folder that is
renamed into place only when the whole archive (and any zip nested one level inside) is done, so
a refused or crashed extraction never leaves a half-filled ``dest_dir``.
"""
from __future__ import annotations

import os
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from components.files import files_under, staged_dir

DEFAULT_MAX_TOTAL_BYTES = 2 << 30  # 2 GiB: a whole 3GPP release unpacks well under this per zip
DEFAULT_MAX_FILES = 10_000
DEFAULT_MAX_RATIO = 200.0
# Small entries (XML parts, blank pages) routinely compress >200x and cannot hurt anyone; the
# ratio limit only bites once an entry would expand past this.
RATIO_FLOOR_BYTES = 1 << 20
_CHUNK = 1 << 16
_DRIVE = re.compile(r"^[A-Za-z]:")


class ArchiveError(ValueError):
    """An archive was refused; the message names the archive and the problem."""

    def __init__(self, archive: str | os.PathLike, problem: str):
        self.archive = str(archive)
        self.problem = problem
        super().__init__(f"{self.archive}: {problem}")


@dataclass
class _Budget:
    max_total_bytes: int
    max_files: int
    max_ratio: float
    written: int = 0
    files: int = 0


def safe_extract(
    zip_path: str | os.PathLike,
    dest_dir: str | os.PathLike,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    max_ratio: float = DEFAULT_MAX_RATIO,
    nested: bool = True,
) -> list[Path]:
    """Extract ``zip_path`` into ``dest_dir`` (which must not exist or be empty); return the files.

    With ``nested``, a ``.zip`` found inside is extracted one level deep into a folder named after
    it and the inner zip itself is dropped; the limits cover outer and inner together.
    """
    zip_path, dest = Path(zip_path), Path(dest_dir)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest}: extraction folder is not empty")
    budget = _Budget(max_total_bytes, max_files, max_ratio)
    # A concurrent extraction of the same archive may publish first; its files are the same.
    with staged_dir(dest, on_exists="keep") as tmp:
        files = _extract_into(zip_path, tmp, budget, str(zip_path))
        if nested:
            files = _extract_nested(files, budget, str(zip_path))
        return sorted(dest / f.relative_to(tmp) for f in files)


def extract_cached(zip_path: str | os.PathLike, dest_dir: str | os.PathLike, **limits) -> list[Path]:
    """``safe_extract`` into a shared cache folder: a folder that exists is complete (it is only
    ever published whole), so it is listed instead of extracted again, also when another run
    publishes it while this one extracts."""
    dest = Path(dest_dir)
    if not dest.is_dir():
        try:
            return safe_extract(zip_path, dest, **limits)
        except FileExistsError:
            pass  # another run published it between the check above and safe_extract's own
    return files_under(dest)


def _extract_nested(files: list[Path], budget: _Budget, label: str) -> list[Path]:
    out: list[Path] = []
    for f in files:
        if f.suffix.lower() != ".zip":
            out.append(f)
            continue
        target = f.with_suffix("")
        if target.exists():
            target = f.with_name(f.name + ".d")
        budget.files -= 1  # the inner zip is replaced by its contents
        budget.written -= f.stat().st_size
        out.extend(_extract_into(f, target, budget, f"{label}!{f.name}"))
        f.unlink()
    return out


def _extract_into(zip_path: Path, root: Path, budget: _Budget, label: str) -> list[Path]:
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(label, f"not a readable zip archive ({exc})") from exc
    with zf:
        entries = [(info, _target(root, info, label)) for info in zf.infolist()]
        _check_declared(entries, budget, label)
        out = []
        for info, target in entries:
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_entry(zf, info, target, budget, label)
            out.append(target)
        return out


def _target(root: Path, info: zipfile.ZipInfo, label: str) -> Path:
    name = info.filename
    where = f"entry {name!r}"
    if info.flag_bits & 0x1:
        raise ArchiveError(label, f"{where} is encrypted")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ArchiveError(label, f"{where} is a symbolic link")
    unified = name.replace("\\", "/")
    if "\x00" in name or unified.startswith("/") or _DRIVE.match(unified):
        raise ArchiveError(label, f"{where} has an absolute path (path traversal)")
    parts = [p for p in PurePosixPath(unified).parts if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ArchiveError(label, f"{where} escapes the extraction folder (path traversal)")
    target = root.joinpath(*parts)
    # Belt and braces: whatever the name said, the resolved file must stay under root.
    if not target.resolve().is_relative_to(root.resolve()):
        raise ArchiveError(label, f"{where} escapes the extraction folder (path traversal)")
    return target


def _check_declared(entries: list[tuple[zipfile.ZipInfo, Path]], budget: _Budget, label: str) -> None:
    files = [info for info, _ in entries if not info.is_dir()]
    if budget.files + len(files) > budget.max_files:
        raise ArchiveError(label, f"too many files ({budget.files + len(files)} > {budget.max_files})")
    total = budget.written + sum(i.file_size for i in files)
    if total > budget.max_total_bytes:
        raise ArchiveError(label, f"uncompressed size {total} bytes exceeds the limit {budget.max_total_bytes}")
    for info in files:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR_BYTES and ratio > budget.max_ratio:
            raise ArchiveError(
                label, f"entry {info.filename!r} compression ratio {ratio:.0f} exceeds {budget.max_ratio:g} (zip bomb?)"
            )


def _copy_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: _Budget, label: str) -> None:
    # Headers can lie, so the limits are enforced again on the bytes actually produced.
    budget.files += 1
    written = 0
    ratio_cap = max(RATIO_FLOOR_BYTES, info.compress_size * budget.max_ratio)
    try:
        with zf.open(info) as src, open(target, "wb") as dst:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                budget.written += len(chunk)
                if written > info.file_size:
                    raise ArchiveError(label, f"entry {info.filename!r} is larger than its header says")
                if written > ratio_cap:
                    raise ArchiveError(label, f"entry {info.filename!r} expands past ratio {budget.max_ratio:g} (zip bomb?)")
                if budget.written > budget.max_total_bytes:
                    raise ArchiveError(label, f"uncompressed size exceeds the limit {budget.max_total_bytes}")
                dst.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise ArchiveError(label, f"entry {info.filename!r} is corrupt or unsupported ({exc})") from exc
