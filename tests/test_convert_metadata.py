"""3GPP metadata from cover pages and file names, and HTML charset detection.

Most tests need no Docling; the ``etsi_converted`` ones run the ETSI-layout fixtures (PDF,
Word, Markdown, HTML) through the project's converter and check what ``describe`` makes of them.
"""
from __future__ import annotations

import codecs

import pytest

from components.documents import acquire, threegpp
from components.documents.metadata import (describe, first_heading, from_cover, from_etsi_cover,
                                           from_file_name, version_from_code)
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


@pytest.mark.parametrize("text", ["Prix: 12 \u20ac \u2013 Stra\u00dfe, Gr\u00fc\u00dfe, d\u00e9j\u00e0 vu, l\u2019\u00e9quipe",
                                  "D\u00e9j\u00e0 vu: l\u2019\u00e9t\u00e9 \u00e0 Z\u00fcrich co\u00fbte 10 \u20ac"])
def test_short_undeclared_western_page_is_windows_1252(text):
    # The detector's favourite for these is cp1257, which reads "d\u00e9j\u00e0" as "d\u00e9j\u0105".
    data = f"<html><body><p>{text}</p></body></html>".encode("cp1252")
    decoded, enc = decode_html(data)
    assert enc == "cp1252" and text in decoded


def test_undeclared_multi_byte_and_non_western_pages_are_still_detected():
    ja = "<p>\u3053\u308c\u306f\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002\u57fa\u5730\u5c40\u306e\u8a2d\u5b9a\u306b\u3064\u3044\u3066\u8aac\u660e\u3057\u307e\u3059\u3002</p>"
    assert ja in decode_html(ja.encode("shift_jis"))[0]
    ru = "<p>\u0421\u0435\u0442\u044c \u043f\u0435\u0440\u0435\u0434\u0430\u0447\u0438 \u0434\u0430\u043d\u043d\u044b\u0445 \u0438 \u0431\u0430\u0437\u043e\u0432\u0430\u044f \u0441\u0442\u0430\u043d\u0446\u0438\u044f \u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0442 \u0432\u043c\u0435\u0441\u0442\u0435</p>"
    assert ru in decode_html(ru.encode("cp1251"))[0]


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


# --- ETSI front pages and real conversions ---------------------------------------------------

ETSI_FRONT = """ETSI TS 138 322 V19.2.0 (2026-04)

1

3GPP TS 38.322 version 19.2.0 Release 19

ETSI

ETSI TS 138 322 V19.2.0 (2026-04)

5G; NR; Radio Link Control (RLC) protocol specification

(3GPP TS 38.322 version 19.2.0 Release 19)

TECHNICAL SPECIFICATION
"""


def test_etsi_front_page_maps_to_the_3gpp_spec_and_title():
    assert from_etsi_cover(ETSI_FRONT) == {
        "spec_type": "TS", "spec": "38.322", "version": "19.2.0", "release": 19, "date": "2026-04",
        "title": "NR; Radio Link Control (RLC) protocol specification"}
    meta = describe(ETSI_FRONT, "ts_138322v190200p.pdf")
    assert meta["series"] == "38" and meta["source_format"] == "pdf"
    assert meta["metadata_source"] == "etsi_cover"


def test_etsi_title_prefixes_and_wrapped_titles():
    md = ("ETSI TR 121 905 V17.2.0 (2024-04)\n\nDigital cellular telecommunications system (Phase 2+) "
          "(GSM); Universal Mobile\n\nTelecommunications System (UMTS); LTE; 5G; Vocabulary for 3GPP "
          "Specifications\n\n(3GPP TR 21.905 version 17.2.0 Release 17)\n")
    meta = from_etsi_cover(md)
    assert meta["spec"] == "21.905" and meta["spec_type"] == "TR"
    assert meta["title"] == "Vocabulary for 3GPP Specifications"
    # Only the ETSI line (the bracketed 3GPP line was lost): the number still maps.
    assert from_etsi_cover("ETSI TS 137 324 V18.1.0 (2025-07)\n")["spec"] == "37.324"
    assert threegpp.spec_from_etsi("138 101-1") == "38.101-1"


def test_a_lying_file_name_never_replaces_the_content():
    meta = describe(ETSI_FRONT, "38323-j00_PDCP_draft.pdf")
    assert (meta["spec"], meta["version"], meta["release"]) == ("38.322", "19.2.0", 19)
    # With no cover at all the name is all there is.
    assert describe("Some text\n", "38323-j00.pdf")["spec"] == "38.323"


def test_one_version_code_module():
    assert acquire.parse_version is threegpp.parse_version
    assert acquire.version_code is threegpp.version_code
    assert version_from_code("j20") == "19.2.0" and threegpp.version_code(19, 2, 0) == "j20"


@pytest.mark.parametrize("fmt", ["pdf", "docx", "md", "html"])
def test_metadata_from_converted_fixtures(etsi_converted, fmt):
    docs = [(d, r) for d, r in etsi_converted if d.truth["source_format"] == fmt]
    assert docs
    for doc, res in docs:
        assert res.status == "success", res.error
        truth, meta = doc.truth, res.meta
        got = {k: meta.get(k) for k in ("spec", "version", "release", "title", "series", "source_format")}
        want = {k: truth[k] for k in got}
        assert got == want, doc.path.name
        assert meta["metadata_source"] in ("cover", "etsi_cover")
