"""Docling options, typed: a wrong value fails when the config is built, naming the key."""
from __future__ import annotations

import multiprocessing
from typing import Literal

from pydantic import Field, field_validator

from components.settings import Settings

FORMAT_EXT = {
    "docx": (".docx",),
    "pdf": (".pdf",),
    "html": (".html", ".htm"),
    "md": (".md", ".markdown"),
}


class DoclingOptions(Settings):
    """The ``docling`` group (less ``_target_``)."""

    formats: list[Literal["docx", "pdf", "html", "md"]] = ["docx", "pdf", "html", "md"]
    do_ocr: bool = False  # OCR of scanned pages (standard PDF pipeline only)
    do_table_structure: bool = True  # table-structure model (standard PDF pipeline only)
    ocr_engine: Literal["rapidocr", "tesseract", "easyocr"] = "rapidocr"
    artifacts_path: str | None = None  # layout models; None = Docling's default cache
    pdf_backend: Literal["auto", "standard", "native"] = "auto"
    max_pages: int | None = Field(None, ge=1)
    max_file_mb: float | None = Field(100, gt=0)
    exports: list[Literal["json", "html"]] = []  # Markdown is always written
    tables: bool = True
    workers: int | None = Field(None, ge=1)
    parallel: Literal["process", "thread"] = "process"
    start_method: str = "auto"
    cache: bool = True

    @field_validator("start_method")
    @classmethod
    def _known_start_method(cls, v: str) -> str:
        methods = multiprocessing.get_all_start_methods()
        if v not in ("auto", *methods):
            raise ValueError(f"must be auto or one of {methods}")
        return v

    @field_validator("exports")
    @classmethod
    def _sorted(cls, v: list[str]) -> list[str]:
        return sorted(set(v))

    @property
    def extensions(self) -> set[str]:
        return {e for f in self.formats for e in FORMAT_EXT[f]}
