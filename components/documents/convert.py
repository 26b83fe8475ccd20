"""Document conversion with Docling: one status per document, never an exception for the batch.

A bad file yields a failed result whose error names the problem in words a user can act on
("encrypted PDF", "wrong extension: the content is a PDF"), and the batch goes on. PDFs go
through the standard (layout-model) pipeline when its models and runtime are installed, and
through the native text-only pipeline otherwise, with a warning — the user should know their
tables and headings came out flatter.

Documents convert in worker processes, each holding its own ``DocumentConverter``; results come
back in input order whatever the number of workers. A conversion is cached by content hash and
options, so an unchanged document never reaches Docling twice.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import multiprocessing
import os
import re
import sys
import threading
import time
import zipfile
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from components.documents.convert_cache import CACHE_VERSION, ConvertCache
from components.documents.metadata import describe

log = logging.getLogger(__name__)

_FORMAT_EXT = {
    "docx": (".docx",),
    "pdf": (".pdf",),
    "html": (".html", ".htm"),
    "md": (".md", ".markdown"),
}
OCR_ENGINES = ("rapidocr", "tesseract", "easyocr")
EXPORTS = ("json", "html")
# A caption line as 3GPP and most vendors write it: "Table 5.7.4-1: Timer values".
CAPTION = re.compile(r"^\s*(\*\*)?(Table|Tab\.)\s+[A-Z]?[\dA-Z][\w.\-]*\s*[:.\-\u2013\u2014]", re.I)


class ConvertConfigError(ValueError):
    """The docling options cannot work on this install; the message says what to change."""


@dataclass
class DocResult:
    source: str  # what the user recognises: "38899-h00.zip!38899-h00.docx"
    path: Path | None
    status: str  # success | failed
    markdown: str = ""
    error: str | None = None
    pdf_fallback: bool = False
    seconds: float = 0.0
    cached: bool = False
    sha256: str | None = None
    meta: dict = field(default_factory=dict)
    tables: list[dict] = field(default_factory=list)  # caption, markdown (captioned), csv, rows, cols
    exports: dict[str, str] = field(default_factory=dict)  # "json" | "html" -> text


def default_models_dir() -> Path:
    return Path(os.environ.get("DOCLING_CACHE_DIR", Path.home() / ".cache" / "docling")) / "models"


def layout_models_available(artifacts_path: str | os.PathLike | None) -> tuple[bool, str]:
    """Whether the standard PDF pipeline can run here, and why not."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("docling_ibm_models") is None:
        return False, ("the layout/table models need torch and docling-ibm-models, which this "
                       "install does not have (pip install 'docling[standard]')")
    root = Path(artifacts_path).expanduser() if artifacts_path else default_models_dir()
    if not root.is_dir() or not any("layout" in p.name.lower() for p in root.iterdir()):
        return False, (f"no layout models in {root}; download them with "
                       f"`docling-tools models download -o {root}` and set docling.artifacts_path")
    return True, str(root)


# --- bad input: say what is wrong in words, before or after Docling tries --------------------

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


# --- what a conversion yields besides Markdown ----------------------------------------------

def _caption(doc, table, prev_text: str | None, next_text: str | None) -> str:
    own = table.caption_text(doc) if table.captions else ""
    if own.strip():
        return own.strip()
    # Word files carry the caption as a styled paragraph above the table (3GPP's "TH"
    # style); some vendors put it below.
    for text in (prev_text, next_text):
        if text and CAPTION.match(text):
            return text.strip().strip("*").strip()
    return ""


# A GitHub pipe table as Docling's Markdown export writes it: header, rule, rows.
_MD_TABLE = re.compile(r"(?m)^\|.*\|[ \t]*\n\|[-:| ]+\|[ \t]*(?:\n\|.*\|[ \t]*)*$")


def table_markdowns(doc, markdown: str, tables: list) -> list[str]:
    """Each table's Markdown, exactly as in the document's export.

    The export already rendered every table, in document order, so they are cut out of it;
    serializing each table again would cost several per cent of the whole conversion. Where the
    count does not match (an empty table renders as nothing), each is serialized on its own.
    """
    blocks = _MD_TABLE.findall(markdown)
    if len(blocks) == len(tables):
        return blocks
    from docling_core.transforms.serializer.markdown import MarkdownDocSerializer

    serializer = MarkdownDocSerializer(doc=doc)
    return [serializer.serialize(item=t).text for t in tables]


def extract_tables(doc, markdown: str) -> list[dict]:
    from docling_core.types.doc import TableItem, TextItem

    items = [it for it, _ in doc.iterate_items() if isinstance(it, (TableItem, TextItem))]
    found = [(i, it) for i, it in enumerate(items) if isinstance(it, TableItem)]
    out = []
    for (i, item), text in zip(found, table_markdowns(doc, markdown, [it for _, it in found])):
        prev_text = items[i - 1].text if i and isinstance(items[i - 1], TextItem) else None
        nxt = items[i + 1] if i + 1 < len(items) else None
        next_text = nxt.text if isinstance(nxt, TextItem) else None
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([[c.text for c in row] for row in item.data.grid])
        caption = _caption(doc, item, prev_text, next_text)
        if caption and caption not in text:
            text = f"{caption}\n\n{text}"
        out.append({"caption": caption, "markdown": text, "csv": buf.getvalue(),
                    "rows": item.data.num_rows, "cols": item.data.num_cols})
    return out


# --- worker side: one DocumentConverter per process ----------------------------------------

_WORKER: "DoclingConverter | None" = None


def _init_worker(settings: dict) -> None:
    global _WORKER
    logging.getLogger("docling").setLevel(logging.ERROR)  # the parent reports per document
    _WORKER = DoclingConverter(**settings)
    _WORKER._ensure_built(quiet=True)


def _work(source: str, path: str, sha256: str | None) -> DocResult:
    assert _WORKER is not None
    return _WORKER._convert_one(source, Path(path), sha256)


class DoclingConverter:
    def __init__(self, formats: Iterable[str] = ("docx", "pdf", "html", "md"), do_ocr: bool = False,
                 do_table_structure: bool = True, ocr_engine: str = "rapidocr",
                 artifacts_path: str | None = None, pdf_backend: str = "auto",
                 max_pages: int | None = None, max_file_mb: float | None = 100,
                 exports: Iterable[str] = (), tables: bool = True,
                 workers: int | None = None, parallel: str = "process", start_method: str = "auto",
                 cache: bool = True) -> None:
        formats, exports = list(formats), list(exports or ())
        unknown = set(formats) - set(_FORMAT_EXT)
        if unknown:
            raise ValueError(f"docling.formats: unknown {sorted(unknown)}; known {sorted(_FORMAT_EXT)}")
        if pdf_backend not in ("auto", "standard", "native"):
            raise ValueError(f"docling.pdf_backend must be auto, standard or native, not {pdf_backend!r}")
        if ocr_engine not in OCR_ENGINES:
            raise ValueError(f"docling.ocr_engine must be one of {', '.join(OCR_ENGINES)}, not {ocr_engine!r}")
        if set(exports) - set(EXPORTS):
            raise ValueError(f"docling.exports: unknown {sorted(set(exports) - set(EXPORTS))}; "
                             f"known {list(EXPORTS)} (Markdown is always written)")
        if parallel not in ("process", "thread"):
            raise ValueError(f"docling.parallel must be process or thread, not {parallel!r}")
        if start_method not in ("auto", *multiprocessing.get_all_start_methods()):
            raise ValueError(f"docling.start_method must be auto or one of "
                             f"{multiprocessing.get_all_start_methods()}, not {start_method!r}")
        if max_pages is not None and int(max_pages) < 1:
            raise ValueError(f"docling.max_pages must be at least 1 or null, not {max_pages}")
        self.formats = formats
        self.do_ocr = bool(do_ocr)
        self.do_table_structure = bool(do_table_structure)
        self.ocr_engine = ocr_engine
        self.artifacts_path = str(artifacts_path) if artifacts_path else None
        self.pdf_backend = pdf_backend
        self.max_pages = int(max_pages) if max_pages else None
        self.max_file_mb = max_file_mb
        self.exports = sorted(exports)
        self.tables = bool(tables)
        self.workers = workers
        self.parallel = parallel
        self.start_method = start_method
        self.cache = cache
        self._converter = None
        self._pdf_native: bool | None = None
        self._pdf_why = ""

    def settings(self) -> dict:
        return {"formats": self.formats, "do_ocr": self.do_ocr,
                "do_table_structure": self.do_table_structure, "ocr_engine": self.ocr_engine,
                "artifacts_path": self.artifacts_path, "pdf_backend": self.pdf_backend,
                "max_pages": self.max_pages, "max_file_mb": self.max_file_mb,
                "exports": self.exports, "tables": self.tables, "workers": 1,
                "parallel": self.parallel, "start_method": self.start_method, "cache": False}

    @property
    def extensions(self) -> set[str]:
        return {e for f in self.formats for e in _FORMAT_EXT[f]}

    @property
    def pdf_native(self) -> bool:
        """Whether PDFs take the native (text-only) pipeline; warns once when that is a fallback."""
        if self._pdf_native is None:
            ok, why = layout_models_available(self.artifacts_path)
            if self.pdf_backend == "standard" and not ok:
                raise ConvertConfigError(f"docling.pdf_backend=standard but {why}")
            self._pdf_native = self.pdf_backend == "native" or not ok
            self._pdf_why = why
            if not ok and self.pdf_backend == "auto" and "pdf" in self.formats:
                log.warning("PDF layout models unavailable (%s): PDFs use the native text-only "
                            "pipeline — no layout, headings, tables or OCR", why)
        return self._pdf_native

    def options_hash(self, pdf: bool = True) -> str:
        """What changes a conversion's output: the cache key's second half. The PDF pipeline
        counts only for PDFs, so installing layout models keeps the cached DOCX conversions."""
        versions = {}
        for pkg in ("docling", "docling-slim", "docling-core", "docling-parse"):
            try:
                versions[pkg] = importlib.metadata.version(pkg)
            except importlib.metadata.PackageNotFoundError:
                pass
        # Not formats, max_pages or max_file_mb: they decide whether a file is converted, not
        # what its conversion holds.
        opts = {"v": CACHE_VERSION, "versions": versions, "exports": self.exports, "tables": self.tables,
                "html": None if pdf else "pre-heading-body",
                "pdf": None if not pdf else "native" if self.pdf_native else {
                    "models": self._pdf_why, "ocr": self.do_ocr and self.ocr_engine,
                    "tables": self.do_table_structure}}
        return hashlib.sha256(json.dumps(opts, sort_keys=True).encode()).hexdigest()[:16]

    # -- building Docling ----------------------------------------------------------------

    def _ensure_built(self, quiet: bool = False) -> None:
        if self._converter is not None:
            return
        if quiet and self._pdf_native is None:
            ok, why = layout_models_available(self.artifacts_path)
            self._pdf_native, self._pdf_why = self.pdf_backend == "native" or not ok, why
        self._converter = self._build()

    def _build(self):
        from docling.datamodel.base_models import InputFormat
        from docling.document_converter import (DocumentConverter, HTMLFormatOption,
                                                MarkdownFormatOption, PdfFormatOption,
                                                WordFormatOption)

        options: dict = {}
        if "docx" in self.formats:
            options[InputFormat.DOCX] = WordFormatOption()
        if "html" in self.formats:
            from docling.datamodel.backend_options import HTMLBackendOptions

            # Docling files everything above the first <h1>-<h6> as furniture, which the
            # Markdown export leaves out: a spec's cover (number, version, title) with it.
            options[InputFormat.HTML] = HTMLFormatOption(
                backend_options=HTMLBackendOptions(infer_furniture=False))
        if "md" in self.formats:
            options[InputFormat.MD] = MarkdownFormatOption()
        if "pdf" in self.formats:
            options[InputFormat.PDF] = self._pdf_option(PdfFormatOption)
        return DocumentConverter(allowed_formats=list(options), format_options=options)

    def _pdf_option(self, PdfFormatOption):
        if self.pdf_native:
            from docling.datamodel.pipeline_options import NativePdfPipelineOptions
            from docling.pipeline.native_pdf_pipeline import NativePdfPipeline

            return PdfFormatOption(pipeline_cls=NativePdfPipeline,
                                   pipeline_options=NativePdfPipelineOptions())
        from docling.datamodel import pipeline_options as po

        ocr = {"rapidocr": po.RapidOcrOptions, "tesseract": po.TesseractCliOcrOptions,
               "easyocr": po.EasyOcrOptions}[self.ocr_engine]()
        opts = po.PdfPipelineOptions(artifacts_path=self._pdf_why, do_ocr=self.do_ocr,
                                     do_table_structure=self.do_table_structure, ocr_options=ocr)
        return PdfFormatOption(pipeline_options=opts)

    # -- one document ----------------------------------------------------------------------

    def precheck(self, source: str, path: Path) -> tuple[DocResult | None, str | None]:
        """Refuse what Docling need not see; otherwise the content hash (for the cache key)."""
        ext = path.suffix.lower()
        fail = lambda msg: (DocResult(source, path, "failed", error=msg), None)  # noqa: E731
        if ext not in self.extensions:
            return fail(f"unsupported file type '{ext}' (docling.formats: {', '.join(self.formats)})")
        try:
            size = path.stat().st_size
            if size == 0:
                return fail("empty file (0 bytes)")
            if self.max_file_mb and size > self.max_file_mb * 2**20:
                return fail(f"file is {size / 2**20:.2f} MB, over docling.max_file_mb={self.max_file_mb}")
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                head = fh.read(1 << 20)
                h.update(head)
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError as exc:
            return fail(f"cannot read: {exc.strerror or exc}")
        mismatch = content_mismatch(ext, head[:1024])
        if mismatch:
            return fail(mismatch)
        return None, h.hexdigest()

    def _convert_one(self, source: str, path: Path, sha256: str | None = None) -> DocResult:
        self._ensure_built()  # outside the try: a converter that cannot be built stops the batch
        t0 = time.perf_counter()
        try:
            return self._convert(source, path, sha256, t0)
        except Exception as exc:  # a bug or a Docling surprise costs this document, not the batch
            log.debug("convert %s", source, exc_info=True)
            return DocResult(source, path, "failed", error=f"{type(exc).__name__}: {exc}",
                             sha256=sha256, seconds=time.perf_counter() - t0)

    def _convert(self, source: str, path: Path, sha256: str | None, t0: float) -> DocResult:
        from docling.datamodel.base_models import ConversionStatus, DocumentStream

        ext = path.suffix.lower()

        def failed(msg: str) -> DocResult:
            return DocResult(source, path, "failed", error=msg, sha256=sha256,
                             seconds=time.perf_counter() - t0)

        target = path
        if ext in _FORMAT_EXT["html"]:
            from components.documents.charset import utf8_for_docling

            data, _ = utf8_for_docling(path.read_bytes())
            target = DocumentStream(name=path.name, stream=io.BytesIO(data))
        limits = {"max_num_pages": self.max_pages} if self.max_pages else {}
        try:
            res = self._converter.convert(target, raises_on_error=False, **limits)
        except Exception as exc:  # Docling raises for some malformed inputs despite the flag
            return failed(diagnose(path, ext) or f"{type(exc).__name__}: {exc}")
        if res.status not in (ConversionStatus.SUCCESS, ConversionStatus.PARTIAL_SUCCESS):
            errs = "; ".join(e.error_message for e in (res.errors or []))
            return failed(diagnose(path, ext) or errs or f"Docling status {res.status.value}")
        doc = res.document
        md = doc.export_to_markdown()
        if not md.strip():
            return failed("no text could be extracted (a scanned PDF needs OCR and layout models)"
                          if ext == ".pdf" else "no text could be extracted")
        exports = {}
        if "json" in self.exports:
            exports["json"] = json.dumps(doc.export_to_dict(), ensure_ascii=False, sort_keys=True)
        if "html" in self.exports:
            exports["html"] = doc.export_to_html()
        return DocResult(source, path, "success", markdown=md, sha256=sha256,
                         pdf_fallback=ext == ".pdf" and bool(self.pdf_native),
                         tables=extract_tables(doc, md) if self.tables else [],
                         exports=exports, seconds=time.perf_counter() - t0)

    # -- the batch -------------------------------------------------------------------------

    def convert_all(self, items: Iterable[tuple[str, Path]], cache_dir: str | os.PathLike | None = None,
                    progress: bool = False) -> list[DocResult]:
        """Convert (display name, path) pairs; one DocResult each, in input order."""
        items = [(s, Path(p)) for s, p in items]
        results: list[DocResult | None] = [None] * len(items)
        cache = ConvertCache(Path(cache_dir) / "docling") if cache_dir and self.cache else None
        hashes: dict[bool, str] = {}

        def key(sha: str, path: Path) -> str:
            pdf = path.suffix.lower() == ".pdf"
            if pdf not in hashes:
                hashes[pdf] = self.options_hash(pdf)
            return f"{sha}-{hashes[pdf]}"

        todo: list[int] = []
        for i, (source, path) in enumerate(items):
            refused, sha = self.precheck(source, path)
            if refused:
                results[i] = refused
                continue
            hit = cache.get(key(sha, path)) if cache else None
            if hit is not None:
                results[i] = DocResult(source, path, "success", cached=True, sha256=sha,
                                       pdf_fallback=path.suffix.lower() == ".pdf" and bool(self.pdf_native),
                                       **hit)
            else:
                results[i] = DocResult(source, path, "pending", sha256=sha)
                todo.append(i)
        for i, res in self._run(todo, results, progress):
            res.path = items[i][1]  # a worker's Path is an equal copy; keep the caller's
            results[i] = res
            if cache and res.status == "success":
                cache.put(key(res.sha256, res.path), {"markdown": res.markdown, "tables": res.tables,
                                                      "exports": res.exports})
        for res in results:
            if res.status == "success":  # the file name is not part of the cache key
                res.meta = describe(res.markdown, res.source)
        return results  # type: ignore[return-value]

    def _start_method(self) -> str:
        if self.start_method != "auto":
            return self.start_method
        # fork starts a worker in milliseconds where spawn re-imports Docling (seconds each);
        # macOS frameworks are not fork-safe, so there it is spawn. The pool is created before
        # the progress bar's thread starts, and Python 3.11's fork pool starts all its workers
        # at once, so no thread of ours is running mid-lock when they fork.
        return "fork" if sys.platform.startswith("linux") else "spawn"

    def workers_for(self, n_docs: int) -> int:
        return max(1, min(int(self.workers or 1), n_docs, os.cpu_count() or 1))

    def _run(self, todo: list[int], results: list, progress: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if not todo:
            return
        workers = self.workers_for(len(todo))
        bar = Progress(TextColumn("convert"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       TextColumn("{task.fields[name]}"), disable=not progress, transient=True)
        pool: Executor | None = None
        if workers > 1:
            _ = self.pdf_native  # warn once, here, not in every worker
            if self.parallel == "process":
                method = self._start_method()
                if method == "fork":
                    self._ensure_built()  # children inherit imported Docling: no 3 s start each
                pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                           initializer=_init_worker, initargs=(self.settings(),))
            else:
                pool = ThreadPoolExecutor(workers, initializer=_init_worker_thread,
                                          initargs=(self.settings(),))
        if pool is None:
            with bar:
                task = bar.add_task("convert", total=len(todo), name="")
                for i in todo:
                    r = results[i]
                    bar.update(task, name=r.source)
                    res = self._convert_one(r.source, r.path, r.sha256)
                    bar.advance(task)
                    yield i, res
            return
        submit = _work if self.parallel == "process" else _work_thread
        with pool:
            # Submit (and so fork) before the progress bar starts its refresh thread.
            futures = {pool.submit(submit, results[i].source, str(results[i].path),
                                   results[i].sha256): i for i in todo}
            with bar:
                task = bar.add_task("convert", total=len(todo), name="")
                for fut in as_completed(futures):
                    i = futures[fut]
                    try:
                        res = fut.result()
                    except Exception as exc:  # a worker died (out of memory, a crash in C code)
                        res = DocResult(results[i].source, results[i].path, "failed",
                                        error=f"converter process failed: {type(exc).__name__}: {exc}")
                    bar.update(task, advance=1, name=res.source)
                    yield i, res


# Threads: one converter per thread, since a DocumentConverter's pipelines are not shared-safe.
_LOCAL = threading.local()


def _init_worker_thread(settings: dict) -> None:
    _LOCAL.conv = DoclingConverter(**settings)
    _LOCAL.conv._ensure_built(quiet=True)


def _work_thread(source: str, path: str, sha256: str | None) -> DocResult:
    return _LOCAL.conv._convert_one(source, Path(path), sha256)
