"""Document conversion with Docling: one status per document, never an exception for the batch.

As Docling's own ``convert_all`` does, a bad file yields a failed status with its reason and the
batch goes on. PDFs go through the standard (layout-model) pipeline when its models and runtime
are installed, and through the native text-only pipeline otherwise, with a warning — the user
should know their tables and headings came out flatter.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

log = logging.getLogger(__name__)

_FORMAT_EXT = {
    "docx": (".docx",),
    "pdf": (".pdf",),
    "html": (".html", ".htm"),
    "md": (".md", ".markdown"),
}


@dataclass
class DocResult:
    source: str  # what the user recognises: "38899-h00.zip!38899-h00.docx"
    path: Path | None
    status: str  # success | failed
    markdown: str = ""
    error: str | None = None
    pdf_fallback: bool = False
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


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


class DoclingConverter:
    def __init__(self, formats: Iterable[str] = ("docx", "pdf", "html", "md"), do_ocr: bool = False,
                 do_table_structure: bool = True, ocr_engine: str = "rapidocr",
                 artifacts_path: str | None = None, pdf_backend: str = "auto",
                 max_pages: int | None = None, max_file_mb: float | None = 100,
                 workers: int | None = None) -> None:
        unknown = set(formats) - set(_FORMAT_EXT)
        if unknown:
            raise ValueError(f"docling.formats: unknown {sorted(unknown)}; known {sorted(_FORMAT_EXT)}")
        if pdf_backend not in ("auto", "standard", "native"):
            raise ValueError(f"docling.pdf_backend must be auto, standard or native, not {pdf_backend!r}")
        self.formats = list(formats)
        self.do_ocr = do_ocr
        self.do_table_structure = do_table_structure
        self.ocr_engine = ocr_engine
        self.artifacts_path = artifacts_path
        self.pdf_backend = pdf_backend
        self.max_pages = max_pages
        self.max_file_mb = max_file_mb
        self.workers = workers
        self._converter = None
        self.pdf_native = False

    @property
    def extensions(self) -> set[str]:
        return {e for f in self.formats for e in _FORMAT_EXT[f]}

    def _build(self):
        from docling.datamodel.base_models import InputFormat
        from docling.document_converter import (DocumentConverter, HTMLFormatOption,
                                                MarkdownFormatOption, PdfFormatOption,
                                                WordFormatOption)

        options: dict = {}
        allowed = []
        if "docx" in self.formats:
            allowed.append(InputFormat.DOCX)
            options[InputFormat.DOCX] = WordFormatOption()
        if "html" in self.formats:
            allowed.append(InputFormat.HTML)
            options[InputFormat.HTML] = HTMLFormatOption()
        if "md" in self.formats:
            allowed.append(InputFormat.MD)
            options[InputFormat.MD] = MarkdownFormatOption()
        if "pdf" in self.formats:
            allowed.append(InputFormat.PDF)
            options[InputFormat.PDF] = self._pdf_option(PdfFormatOption)
        return DocumentConverter(allowed_formats=allowed, format_options=options)

    def _pdf_option(self, PdfFormatOption):
        ok, why = layout_models_available(self.artifacts_path)
        if self.pdf_backend == "standard" and not ok:
            raise RuntimeError(f"docling.pdf_backend=standard but {why}")
        if self.pdf_backend == "native" or not ok:
            from docling.datamodel.pipeline_options import NativePdfPipelineOptions
            from docling.pipeline.native_pdf_pipeline import NativePdfPipeline

            if self.pdf_backend == "auto":
                log.warning("PDF layout models unavailable (%s): PDFs use the native text-only "
                            "pipeline — no layout, headings, tables or OCR", why)
            self.pdf_native = True
            opts = NativePdfPipelineOptions()
            return PdfFormatOption(pipeline_cls=NativePdfPipeline, pipeline_options=opts)
        from docling.datamodel.pipeline_options import PdfPipelineOptions

        opts = PdfPipelineOptions(artifacts_path=why, do_ocr=self.do_ocr,
                                  do_table_structure=self.do_table_structure)
        self.pdf_native = False
        return PdfFormatOption(pipeline_options=opts)

    def convert_all(self, paths: Iterable[tuple[str, Path]]) -> Iterator[DocResult]:
        """Convert (display name, path) pairs; one DocResult each, in order."""
        if self._converter is None:
            self._converter = self._build()
        for source, path in paths:
            yield self._convert_one(source, path)

    def _convert_one(self, source: str, path: Path) -> DocResult:
        from docling.datamodel.base_models import ConversionStatus

        t0 = time.perf_counter()
        ext = path.suffix.lower()
        if ext not in self.extensions:
            return DocResult(source, path, "failed", error=f"unsupported file type '{ext}'")
        try:
            size = path.stat().st_size
        except OSError as exc:
            return DocResult(source, path, "failed", error=f"cannot read: {exc}")
        if size == 0:
            return DocResult(source, path, "failed", error="empty file")
        if self.max_file_mb and size > self.max_file_mb * 2**20:
            return DocResult(source, path, "failed",
                             error=f"{size / 2**20:.1f} MB is over docling.max_file_mb={self.max_file_mb}")
        try:
            res = self._converter.convert(
                path, raises_on_error=False,
                **({"max_num_pages": self.max_pages} if self.max_pages else {}))
        except Exception as exc:  # Docling raises for some malformed inputs despite the flag
            return DocResult(source, path, "failed", error=f"{type(exc).__name__}: {exc}",
                             seconds=time.perf_counter() - t0)
        if res.status not in (ConversionStatus.SUCCESS, ConversionStatus.PARTIAL_SUCCESS):
            errs = "; ".join(e.error_message for e in (res.errors or [])) or str(res.status)
            return DocResult(source, path, "failed", error=errs, seconds=time.perf_counter() - t0)
        md = res.document.export_to_markdown()
        if not md.strip():
            return DocResult(source, path, "failed", error="no text could be extracted",
                             seconds=time.perf_counter() - t0)
        return DocResult(source, path, "success", markdown=md,
                         pdf_fallback=ext == ".pdf" and self.pdf_native,
                         seconds=time.perf_counter() - t0)
