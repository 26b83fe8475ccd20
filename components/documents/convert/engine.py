"""One document through Docling: building the converter from the options, picking the PDF
pipeline, and turning the result (or the failure) into a ``DocResult``."""
from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from components.documents.convert.cache import CACHE_VERSION
from components.documents.convert.options import FORMAT_EXT, DoclingOptions
from components.documents.convert.sniff import diagnose
from components.documents.convert.tables import extract_tables
from components.files import json_sha256
from components.versions import installed

log = logging.getLogger(__name__)


class ConvertConfigError(ValueError):
    """The docling options cannot work on this install; the message says what to change."""


@dataclass
class DocResult:
    source: str  # what the user recognises: "38899-h00.zip!38899-h00.docx"
    path: Path | None
    status: str  # success | failed | pending
    markdown: str = ""
    error: str | None = None
    # The failure came from the environment (unreadable now, a worker that died), not from the
    # file: the next run tries it again.
    transient: bool = False
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


class DoclingEngine:
    """A ``DocumentConverter`` for the options, built on first use (one per worker)."""

    def __init__(self, opts: DoclingOptions) -> None:
        self.opts = opts
        self._converter = None
        self._pdf_native: bool | None = None
        self._pdf_why = ""

    @property
    def pdf_native(self) -> bool:
        """Whether PDFs take the native (text-only) pipeline; warns once when that is a fallback."""
        if self._pdf_native is None:
            ok, why = layout_models_available(self.opts.artifacts_path)
            if self.opts.pdf_backend == "standard" and not ok:
                raise ConvertConfigError(f"docling.pdf_backend=standard but {why}")
            self._pdf_native = self.opts.pdf_backend == "native" or not ok
            self._pdf_why = why
            if not ok and self.opts.pdf_backend == "auto" and "pdf" in self.opts.formats:
                log.warning("PDF layout models unavailable (%s): PDFs use the native text-only "
                            "pipeline — no layout, headings, tables or OCR", why)
        return self._pdf_native

    def options_hash(self, pdf: bool = True) -> str:
        """What changes a conversion's output: the cache key's second half. The PDF pipeline
        counts only for PDFs, so installing layout models keeps the cached DOCX conversions."""
        versions = {pkg: v for pkg in ("docling", "docling-slim", "docling-core", "docling-parse")
                    if (v := installed(pkg)) is not None}
        o = self.opts
        # Not formats, max_pages or max_file_mb: they decide whether a file is converted, not
        # what its conversion holds.
        opts = {"v": CACHE_VERSION, "versions": versions, "exports": o.exports, "tables": o.tables,
                "html": None if pdf else "pre-heading-body",
                "pdf": None if not pdf else "native" if self.pdf_native else {
                    "models": self._pdf_why, "ocr": o.do_ocr and o.ocr_engine,
                    "tables": o.do_table_structure}}
        return json_sha256(opts)[:16]

    # -- building Docling ----------------------------------------------------------------

    def prepare(self, quiet: bool = False) -> None:
        """Build Docling now (workers: quietly, the parent already warned)."""
        if self._converter is not None:
            return
        if quiet and self._pdf_native is None:
            ok, why = layout_models_available(self.opts.artifacts_path)
            self._pdf_native, self._pdf_why = self.opts.pdf_backend == "native" or not ok, why
        self._converter = self._build()

    def _build(self):
        from docling.datamodel.base_models import InputFormat
        from docling.document_converter import (DocumentConverter, HTMLFormatOption,
                                                MarkdownFormatOption, PdfFormatOption,
                                                WordFormatOption)

        options: dict = {}
        if "docx" in self.opts.formats:
            options[InputFormat.DOCX] = WordFormatOption()
        if "html" in self.opts.formats:
            from docling.datamodel.backend_options import HTMLBackendOptions

            # Docling files everything above the first <h1>-<h6> as furniture, which the
            # Markdown export leaves out: a spec's cover (number, version, title) with it.
            options[InputFormat.HTML] = HTMLFormatOption(
                backend_options=HTMLBackendOptions(infer_furniture=False))
        if "md" in self.opts.formats:
            options[InputFormat.MD] = MarkdownFormatOption()
        if "pdf" in self.opts.formats:
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
               "easyocr": po.EasyOcrOptions}[self.opts.ocr_engine]()
        opts = po.PdfPipelineOptions(artifacts_path=self._pdf_why, do_ocr=self.opts.do_ocr,
                                     do_table_structure=self.opts.do_table_structure, ocr_options=ocr)
        return PdfFormatOption(pipeline_options=opts)

    # -- one document ----------------------------------------------------------------------

    def convert_one(self, source: str, path: Path, sha256: str | None = None) -> DocResult:
        self.prepare()  # outside the try: a converter that cannot be built stops the batch
        t0 = time.perf_counter()
        try:
            return self._convert(source, path, sha256, t0)
        except (MemoryError, OSError) as exc:  # the machine, not the file: try again next run
            return DocResult(source, path, "failed", error=f"{type(exc).__name__}: {exc}",
                             transient=True, sha256=sha256, seconds=time.perf_counter() - t0)
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
        if ext in FORMAT_EXT["html"]:
            from components.documents.charset import utf8_for_docling

            data, _ = utf8_for_docling(path.read_bytes())
            target = DocumentStream(name=path.name, stream=io.BytesIO(data))
        limits = {"max_num_pages": self.opts.max_pages} if self.opts.max_pages else {}
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
        if "json" in self.opts.exports:
            exports["json"] = json.dumps(doc.export_to_dict(), ensure_ascii=False, sort_keys=True)
        if "html" in self.opts.exports:
            exports["html"] = doc.export_to_html()
        return DocResult(source, path, "success", markdown=md, sha256=sha256,
                         pdf_fallback=ext == ".pdf" and bool(self.pdf_native),
                         tables=extract_tables(doc, md) if self.opts.tables else [],
                         exports=exports, seconds=time.perf_counter() - t0)
