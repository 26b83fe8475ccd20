"""Bad input, said in words a user can act on: what the bytes really are, before Docling sees
them, and why Docling failed on them after."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from components.documents.convert.options import DoclingOptions


def _sniff(head: bytes) -> str:
    if head.startswith(b"%PDF"):
        return "a PDF"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "a ZIP/Office file"
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        return "a legacy Office (.doc/.xls) file"
    if b"\x00" in head[:512] and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "binary data"
    return "text"


_EXPECTED = {".pdf": {"a PDF"}, ".docx": {"a ZIP/Office file"},
             ".html": {"text"}, ".htm": {"text"}, ".md": {"text"}, ".markdown": {"text"}}


def content_mismatch(ext: str, head: bytes) -> str | None:
    """Why the bytes cannot be what the extension says, or None."""
    kind = _sniff(head)
    if kind in _EXPECTED.get(ext, {kind}):
        return None
    if ext == ".pdf" and kind == "text":
        return "not a PDF: no %PDF header (corrupt file, or wrong extension)"
    if ext == ".docx" and kind == "text":
        return "not a DOCX: no ZIP signature (corrupt file, or wrong extension)"
    return f"wrong extension: the content is {kind}, not what '{ext}' says"


def diagnose(path: Path, ext: str) -> str | None:
    """After Docling fails: the specific reason, when the file itself shows one."""
    if ext == ".pdf":
        import pypdfium2 as pdfium

        try:
            pdfium.PdfDocument(str(path)).close()
        except pdfium.PdfiumError as exc:
            if "password" in str(exc).lower():
                return "encrypted PDF (password-protected): decrypt it first or remove it"
            return f"corrupt PDF: {exc}"
    elif ext == ".docx":
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError) as exc:
            return f"corrupt DOCX: not a readable ZIP package ({exc})"
        if "word/document.xml" not in names:
            return "corrupt DOCX: the package has no word/document.xml"
        if bad:
            return f"corrupt DOCX: damaged part {bad}"
    return None


def precheck(opts: DoclingOptions, path: Path) -> tuple[str | None, str | None, bool]:
    """Refuse what Docling need not see: (problem, content sha256, problem is transient). A file
    that cannot be read now may be readable on the next run; a wrong or empty one will not."""
    ext = path.suffix.lower()
    if ext not in opts.extensions:
        return f"unsupported file type '{ext}' (docling.formats: {', '.join(opts.formats)})", None, False
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file (0 bytes)", None, False
        if opts.max_file_mb and size > opts.max_file_mb * 2**20:
            return f"file is {size / 2**20:.2f} MB, over docling.max_file_mb={opts.max_file_mb}", None, False
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            head = fh.read(1 << 20)
            h.update(head)
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}", None, True
    mismatch = content_mismatch(ext, head[:1024])
    if mismatch:
        return mismatch, None, False
    return None, h.hexdigest(), False
