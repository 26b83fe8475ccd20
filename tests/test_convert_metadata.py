"""3GPP metadata from cover pages and file names, and HTML charset detection (no Docling)."""
from __future__ import annotations

import codecs

import pytest

from components.documents.metadata import describe, first_heading, from_cover, from_file_name, version_from_code
from components.documents.charset import decode_html, detect

COVER = """3GPP TS 38.899 V17.0.0 (2026-03)

Technical Specification

3rd Generation Partnership Project;

Technical Specification Group Radio Access Network;

NR;

Example signalling procedures

(Release 17)

## 1	Scope

The present document describes 3GPP TS 99.999 V1.0.0 in passing.
"""


@pytest.mark.parametrize("code,version", [("h00", "17.0.0"), ("i10", "18.1.0"), ("f2a", "15.2.10"),
                                          ("900", "9.0.0"), ("j0z", "19.0.35")])
def test_version_code_is_base36_per_component(code, version):
    assert version_from_code(code) == version


def test_file_name_gives_spec_version_and_release():
    assert from_file_name("38899-h00.docx") == {"spec": "38.899", "version": "17.0.0", "release": 17}
    assert from_file_name("specs/38101-1-i20.zip!38101-1-i20.docx") == {
        "spec": "38.101-1", "version": "18.2.0", "release": 18}
    assert from_file_name("vendor-guide.pdf") == {}
    assert from_file_name("12345-abcd.docx") == {}  # four version characters: not a 3GPP name


def test_multi_line_cover_gives_title_without_boilerplate():
    meta = from_cover(COVER)
    assert meta == {"spec_type": "TS", "spec": "38.899", "version": "17.0.0", "release": 17,
                    "date": "2026-03", "title": "NR; Example signalling procedures"}


def test_release_line_wins_over_version_major():
    # A TR drafted as V1.x.y states its release only in the title.
    meta = from_cover("3GPP TR 38.900 V1.2.0 (2025-11)\n\nStudy on an example feature (Release 19)\n")
    assert meta["spec_type"] == "TR" and meta["version"] == "1.2.0"
    assert meta["release"] == 19 and meta["title"] == "Study on an example feature"


def test_cover_beats_file_name_and_file_name_fills_gaps():
    meta = describe("3GPP TS 38.899 V17.1.0 (2026-03)\n\nNR; Example (Release 17)\n", "38899-h00.docx")
    assert meta["version"] == "17.1.0" and meta["metadata_source"] == "cover"
    named = describe("## 1 Scope\n\nNo cover here.\n", "x.zip!38899-i00.docx")
    assert named["spec"] == "38.899" and named["release"] == 18
    assert named["metadata_source"] == "file_name" and named["title"] == "1 Scope"


def test_other_documents_take_the_first_heading_or_line():
    assert describe("| a |\n\n# Site survey\n\ntext", "s.html")["title"] == "Site survey"
    assert first_heading("Example gNB Guide\n\n1 Introduction\n") == "Example gNB Guide"
    assert describe("", "notes.md")["title"] == "notes.md"


WESTERN = "R\u00e9sum\u00e9 \u2013 M\u00fcller: 5 \u00b5s, na\u00efve caf\u00e9 \u00fcber \u201cquoted\u201d"


def test_undeclared_cp1252_is_detected_not_guessed_as_cp1250():
    data = f"<html><body><h1>{WESTERN}</h1><p>{WESTERN}</p></body></html>".encode("cp1252")
    text, enc = decode_html(data)
    assert enc == "cp1252"
    assert WESTERN in text


@pytest.mark.parametrize("declared", ["iso-8859-1", "latin1", "windows-1252"])
def test_latin1_labels_mean_windows_1252(declared):
    data = f'<meta charset="{declared}"><p>{WESTERN}</p>'.encode("cp1252")
    assert detect(data) == "cp1252" and WESTERN in decode_html(data)[0]


def test_declared_and_bom_charsets_are_honoured():
    koi = '<meta http-equiv="Content-Type" content="text/html; charset=koi8-r"><p>Сеть</p>'
    assert decode_html(koi.encode("koi8-r"))[0].endswith("Сеть</p>")
    assert detect(codecs.BOM_UTF8 + "<p>é</p>".encode()) == "utf-8-sig"
    assert detect("<p>é</p>".encode("utf-16")) == "utf-16"
    # A wrong declaration does not garble valid UTF-8.
    wrong = '<meta charset="ascii"><p>µs</p>'.encode("utf-8")
    assert decode_html(wrong) == ('<meta charset="ascii"><p>µs</p>', "utf-8")
