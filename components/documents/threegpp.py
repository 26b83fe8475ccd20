"""3GPP numbering: version codes, file names and the ETSI numbers of 3GPP specifications.

One place for what acquire (building archive names) and metadata (reading documents) both need:

- a version is three base-36 characters in file names: ``j20`` = 19.2.0, ``h0a`` = 17.0.10;
- a file is named ``<series><number>[-<part>]-<code>``: ``38322-j20.docx`` = TS 38.322 V19.2.0;
- ETSI publishes TS 38.322 as ETSI TS 138 322: a leading 1, the series, then the number.
"""
from __future__ import annotations

import re

DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
SPEC = re.compile(r"^(\d{2})\.(\d{3})(-\d+)?$")
FILE_NAME = re.compile(r"^(?P<series>\d{2})(?P<number>\d{3})(?P<part>-\d+)?-(?P<code>[0-9a-z]{3})(?![0-9a-z])")
# "ETSI TS 138 322 V19.2.0 (2026-04)"; multi-part specs: "ETSI TS 138 101-1 V19.2.0 (2026-04)".
ETSI_NUMBER = re.compile(r"\b1(?P<series>\d{2})\s?(?P<number>\d{3})(?P<part>-\d+)?\b")


def parse_version(code: str) -> tuple[int, int, int]:
    """``"h00"`` -> ``(17, 0, 0)``; also accepts a dotted ``"17.0.0"``."""
    code = code.strip().lower()
    if re.fullmatch(r"\d{1,2}\.\d{1,2}\.\d{1,2}", code):
        major, minor, patch = (int(x) for x in code.split("."))
        if max(major, minor, patch) >= len(DIGITS):
            raise ValueError(f"version {code!r}: each part must be below {len(DIGITS)}")
        return major, minor, patch
    if len(code) != 3 or any(c not in DIGITS for c in code):
        raise ValueError(f"version {code!r} is not a 3GPP version code like 'h00' or '17.0.0'")
    return tuple(DIGITS.index(c) for c in code)  # type: ignore[return-value]


def version_code(major: int, minor: int, patch: int) -> str:
    """``(19, 2, 0)`` -> ``"j20"``."""
    return "".join(DIGITS[n] for n in (major, minor, patch))


def version_from_code(code: str) -> str:
    """``"h00"`` -> ``"17.0.0"``: each character is one base-36 version component."""
    return ".".join(str(n) for n in parse_version(code))


def series(spec: str) -> str:
    """``"38.322"`` -> ``"38"``."""
    return spec[:2]


def from_file_name(name: str) -> dict:
    """Spec number, version and release from a 3GPP file name such as ``38322-j20.docx``
    (also the last member of ``archive.zip!38322-j20.docx``); ``{}`` for any other name."""
    stem = name.rsplit("!", 1)[-1].rsplit("/", 1)[-1]
    m = FILE_NAME.match(stem.lower())
    if not m:
        return {}
    version = version_from_code(m["code"])
    return {"spec": f"{m['series']}.{m['number']}{m['part'] or ''}", "version": version,
            "release": int(version.split(".")[0])}


def spec_from_etsi(number: str) -> str | None:
    """``"138 322"`` -> ``"38.322"``; ``"138 101-1"`` -> ``"38.101-1"``; None otherwise."""
    m = ETSI_NUMBER.fullmatch(number.strip()) if number else None
    return f"{m['series']}.{m['number']}{m['part'] or ''}" if m else None
