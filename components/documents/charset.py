"""Decode HTML by its declared or detected charset.

Old vendor pages are often Windows-1252 with no charset declared; BeautifulSoup (under Docling's
HTML backend) then guesses, and a near-tie between code pages turns "naïve" into "naďve". We
decode here and give Docling UTF-8 with a byte-order mark, which BeautifulSoup trusts over any
stale ``<meta charset>`` left in the text.
"""
from __future__ import annotations

import codecs
import re

_DECLARED = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_XML_DECL = re.compile(rb"""<\?xml[^>]+encoding\s*=\s*["']([A-Za-z0-9_.:-]+)""", re.I)
# WHATWG: these labels mean windows-1252 in every browser.
_AS_CP1252 = {"iso-8859-1", "iso8859-1", "latin-1", "latin1", "l1", "ascii", "us-ascii",
              "cp819", "ibm819", "iso-ir-100", "windows-1252", "cp1252", "x-cp1252"}
_BOMS = [(codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"),
         (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16")]


def declared_charset(data: bytes) -> str | None:
    head = data[:4096]
    m = _DECLARED.search(head) or _XML_DECL.search(head)
    if not m:
        return None
    label = m.group(1).decode("ascii", "replace").lower()
    if label in _AS_CP1252:
        return "cp1252"
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


# Five bytes are undefined in cp1252; browsers read them as the C1 controls latin-1 gives.
_CP1252 = {b: (bytes([b]).decode("cp1252", "ignore") or chr(b)) for b in range(128, 256)}


def _cp1252(data: bytes) -> str:
    return data.decode("latin-1").translate(_CP1252)


def _decode_as(data: bytes, enc: str) -> str:
    return _cp1252(data) if enc == "cp1252" else data.decode(enc)


# Encodings a detector may be trusted on for an undeclared page: their byte patterns are rare by
# chance, unlike the single-byte code pages, which any byte string "is".
_MULTI_BYTE = {"utf_16", "utf_16_be", "utf_16_le", "utf_32", "utf_32_be", "utf_32_le", "shift_jis",
               "cp932", "euc_jp", "euc_jis_2004", "euc_jisx0213", "iso2022_jp", "iso2022_kr",
               "gb2312", "gbk", "gb18030", "hz", "big5", "big5hkscs", "cp950", "euc_kr", "cp949",
               "johab"}
_CONFIDENT_CHAOS = 0.1


def detect(data: bytes) -> str:
    """The charset to read ``data`` with: BOM, then declaration, then UTF-8, then detection."""
    for bom, enc in _BOMS:
        if data.startswith(bom):
            return enc
    declared = declared_charset(data)
    if declared in ("cp1252", "iso8859-15") and not data.isascii():
        # Pages saved as UTF-8 keep a stale latin-1 declaration often; legacy text that is
        # also valid UTF-8 is vanishingly rare, so valid UTF-8 wins.
        try:
            data.decode("utf-8")
            return "utf-8"
        except UnicodeDecodeError:
            pass
    if declared:
        try:
            _decode_as(data, declared)
            return declared
        except (UnicodeDecodeError, LookupError):
            pass  # the declaration is wrong; find out from the bytes
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    import charset_normalizer

    results = list(charset_normalizer.from_bytes(data))
    if not results:
        return "cp1252"
    best = results[0]
    if best.encoding in _MULTI_BYTE and best.chaos <= _CONFIDENT_CHAOS:
        return best.encoding
    # Browsers read an undeclared legacy page as windows-1252. Short Western text scores about
    # the same under several single-byte code pages, and the detector's favourite is often
    # cp1257 or cp1250 ("déjà" -> "déją"); so cp1252 wins whenever the detector finds it
    # plausible at all. It does not for Cyrillic or Greek text, whose cp1252 reading is a mess.
    if any(r.encoding == "cp1252" for r in results):
        return "cp1252"
    return best.encoding


def decode_html(data: bytes) -> tuple[str, str]:
    """The text of an HTML file and the charset it was read with."""
    enc = detect(data)
    try:
        return _decode_as(data, enc), enc
    except (UnicodeDecodeError, LookupError):
        return data.decode("cp1252", "replace"), "cp1252"


def utf8_for_docling(data: bytes) -> tuple[bytes, str]:
    text, enc = decode_html(data)
    return codecs.BOM_UTF8 + text.lstrip("\ufeff").encode("utf-8"), enc
