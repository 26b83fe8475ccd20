"""Bad input through the real convert stage: each file gets its own clear error, the run goes on,
and the report lists it. Legacy-encoded HTML is not bad input and comes out ungarbled."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from components.documents.convert import DoclingConverter
from components.documents.sample_corpus import VENDOR_GUIDE, docx_bytes, pdf_bytes, spec_documents
from components.documents.spec_word import zip_bytes
from tests.test_convert import make_cfg, run_stage

WESTERN = "R\u00e9sum\u00e9 \u2013 M\u00fcller: latency 5 \u00b5s, na\u00efve caf\u00e9 \u00fcber"


def encrypted_pdf() -> bytes:
    from reportlab.lib import pdfencrypt
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf, encrypt=pdfencrypt.StandardEncryption("user-secret", ownerPassword="owner"))
    c.drawString(72, 720, "Confidential gNB parameters")
    c.showPage()
    c.save()
    return buf.getvalue()


def docx_without_body() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
    return buf.getvalue()


# name -> (bytes, a fragment the error must contain)
BAD = {
    "corrupt.docx": (b"PK\x03\x04" + b"\x00garbage" * 40, "corrupt DOCX"),
    "hollow.docx": (docx_without_body(), "no word/document.xml"),
    "corrupt.pdf": (b"%PDF-1.4\n1 0 obj garbage\n" * 20, "corrupt PDF"),
    "empty.md": (b"", "empty file"),
    "report.docx": (b"%PDF-1.4\n", "wrong extension: the content is a PDF"),
    "notes.pdf": (b"Just some text saved with the wrong name.\n", "not a PDF"),
    "slides.html": (b"PK\x03\x04\x14\x00\x00\x00", "wrong extension: the content is a ZIP"),
    "locked.pdf": (encrypted_pdf(), "encrypted PDF"),
    "huge.md": (b"# Huge\n\n" + b"The cell is big. " * 4000, "over docling.max_file_mb=0.05"),
    "nothing.zip": (zip_bytes("readme.txt", b"no documents here"), "archive holds no documents"),
    "evil.zip": (zip_bytes("../../escape.docx", b"PK"), "path traversal"),
}


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    corpus = root / "corpus"
    corpus.mkdir()
    for name, (data, _) in BAD.items():
        (corpus / name).write_bytes(data)
    spec = spec_documents()[0]
    (corpus / "38899-h00.zip").write_bytes(zip_bytes("38899-h00.docx", docx_bytes(spec)))
    (corpus / "legacy.html").write_bytes(
        f"<html><head><title>Legacy</title></head><body><h1>{WESTERN}</h1><p>{WESTERN}</p>"
        "</body></html>".encode("cp1252"))
    (corpus / "declared.htm").write_bytes(
        f'<html><head><meta charset="ISO-8859-1"></head><body><p>{WESTERN}</p></body></html>'
        .encode("cp1252"))
    metrics = run_stage(root / "run", make_cfg(root / "cache", corpus, workers=2, max_file_mb=0.05))
    docs = root / "run" / "documents"
    return metrics, docs, {m["source"]: m for m in json.loads((docs / "manifest.json").read_text())}


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_file_has_its_own_clear_error(bad_run, name):
    _, _, report = bad_run
    entry = report[name]
    assert entry["status"] == "failed"
    assert BAD[name][1] in entry["error"], entry["error"]


def test_the_run_goes_on_and_counts_failures(bad_run):
    metrics, docs, report = bad_run
    assert metrics["convert/failed_docs"] == len(BAD)
    assert metrics["convert/docs"] == 3
    assert report["38899-h00.zip!38899-h00.docx"]["status"] == "success"
    assert (docs / "38899-h00.md").read_text().startswith("3GPP TS 38.899 V17.0.0")
    assert not (Path(docs).parent.parent / "escape.docx").exists()


def test_legacy_html_is_decoded_not_garbled(bad_run):
    _, docs, report = bad_run
    # Docling's HTML backend turns typographic dashes and quotes into ASCII on purpose; the
    # en dash (cp1252 0x96) must arrive as a dash, not as latin-1's C1 control U+0096.
    expected = WESTERN.replace("\u2013", "-")
    for doc_id in ("legacy", "declared"):
        md = (docs / f"{doc_id}.md").read_text(encoding="utf-8")
        assert expected in md, md
        assert not {"\u0096", "\u010f", "\u00c3", "\ufffd"} & set(md)  # C1, cp1250 "ď", mojibake
    assert report["legacy.html"]["title"] == expected


def test_page_limit_is_a_per_document_error(tmp_path):
    pdf = tmp_path / "guide.pdf"
    pdf.write_bytes(pdf_bytes("Example guide", VENDOR_GUIDE * 8))  # several pages
    good = tmp_path / "notes.md"
    good.write_text("# Notes\n\nShort.\n")
    results = DoclingConverter(max_pages=1).convert_all([("guide.pdf", pdf), ("notes.md", good)])
    assert [r.status for r in results] == ["failed", "success"]
    assert "max_num_pages" in results[0].error and "pages" in results[0].error
