"""3GPP-style Word files, written the way the 3GPP archive serves them: a ``.docx`` with the
cover lines, numbered headings, ``ACR<tab>Expansion`` abbreviation paragraphs, bold
"term:" definitions and captioned tables, packed in a ``.zip``.

The one writer of such files: the built-in sample corpus (``sample_corpus``) and the test
fixtures (``tests/fixtures/etsi_layout``) give it their own content. Bytes are reproducible
(fixed timestamps), so a content hash names a document.
"""
from __future__ import annotations

import datetime
import io
import zipfile
from dataclasses import dataclass, field

ZIP_DATE = (2026, 1, 1, 0, 0, 0)


@dataclass
class WordClause:
    """A heading and what follows it, in this order: paragraphs, definitions, abbreviations,
    a table."""

    heading: str  # "5.1\tGeneral", or an annex's own heading
    level: int
    paragraphs: list[str] = field(default_factory=list)
    # (term, definition, a paragraph after it or None): "term: definition." with the term bold
    terms: list[tuple[str, str, str | None]] = field(default_factory=list)
    abbreviations: list[tuple[str, str]] = field(default_factory=list)
    table: tuple[str, list[str], list[list[str]]] | None = None  # caption, header, rows


def docx_bytes(cover: list[str], clauses: list[WordClause], *, title: str, author: str) -> bytes:
    import docx  # python-docx

    d = docx.Document()
    cp = d.core_properties
    cp.author, cp.title = author, title
    cp.created = cp.modified = datetime.datetime(*ZIP_DATE)
    cp.last_modified_by, cp.revision = author, 1
    for line in cover:
        d.add_paragraph(line)
    for cl in clauses:
        d.add_heading(cl.heading, level=min(cl.level, 5))
        for p in cl.paragraphs:
            d.add_paragraph(p)
        for term, definition, after in cl.terms:
            para = d.add_paragraph()
            para.add_run(f"{term}:").bold = True
            para.add_run(f" {definition}.")
            if after:
                d.add_paragraph(after)
        for acr, exp in cl.abbreviations:
            d.add_paragraph(f"{acr}\t{exp}")
        if cl.table:
            caption, header, rows = cl.table
            d.add_paragraph(caption)
            t = d.add_table(rows=1 + len(rows), cols=len(header))
            for r, row in enumerate([header] + rows):
                for i, v in enumerate(row):
                    t.rows[r].cells[i].text = v
    buf = io.BytesIO()
    d.save(buf)
    # python-docx stamps each ZIP member with the current time: rewrite with a fixed one.
    out = io.BytesIO()
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(zipfile.ZipInfo(info.filename, date_time=ZIP_DATE), src.read(info),
                         compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def zip_bytes(name: str, payload: bytes) -> bytes:
    """``payload`` as the one member ``name`` of a ZIP archive, as 3GPP's archive packs a spec."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo(name, date_time=ZIP_DATE), payload, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()
