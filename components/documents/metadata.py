"""Document metadata: spec number, version, release and title.

A 3GPP specification says who it is on its cover page ("3GPP TS 38.899 V17.0.0 (2026-03)", then
the title lines ending in "(Release 17)") and again in its file name ("38899-h00.docx": the
version is three base-36 digits, h00 = 17.0.0). The cover wins; the file name fills the gaps,
e.g. for a cover Docling could not read. Any other document gets the title of its first heading.
"""
from __future__ import annotations

import re

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"

COVER = re.compile(
    r"3GPP\s+(?P<type>TS|TR)\s+(?P<spec>\d{2}\.\d{3}(?:-\d+)?)\s+V(?P<version>\d+\.\d+\.\d+)"
    r"(?:\s*\((?P<date>\d{4}-\d{2})\))?")
FILE_NAME = re.compile(r"^(?P<series>\d{2})(?P<number>\d{3})(?P<part>-\d+)?-(?P<code>[0-9a-z]{3})(?![0-9a-z])")
RELEASE = re.compile(r"\(\s*Release\s+(?P<release>\d+)\s*\)", re.I)
# Cover-page lines that are not the title.
_BOILERPLATE = re.compile(r"^(technical (specification|report)( group .*)?|3rd generation partnership "
                          r"project.*|3gpp)\s*;?$", re.I)
_COVER_LINES = 10  # non-empty lines: the title follows the cover line closely


def version_from_code(code: str) -> str:
    """``h00`` -> ``17.0.0``: each character is one base-36 version component."""
    return ".".join(str(_DIGITS.index(c)) for c in code.lower())


def from_file_name(name: str) -> dict:
    """Spec number and version from a 3GPP file name such as ``38899-h00.docx``."""
    stem = name.rsplit("!", 1)[-1].rsplit("/", 1)[-1]
    m = FILE_NAME.match(stem.lower())
    if not m:
        return {}
    version = version_from_code(m["code"])
    return {"spec": f"{m['series']}.{m['number']}{m['part'] or ''}", "version": version,
            "release": int(version.split(".")[0])}


def _clean(line: str) -> str:
    line = re.sub(r"^#+\s*", "", line.strip())
    return re.sub(r"\s+", " ", line.replace("\\_", "_")).strip()


def from_cover(markdown: str) -> dict:
    """Spec type, number, version, date, release and title from the cover page, if there is one."""
    head = markdown[:6000]
    m = COVER.search(head)
    if not m:
        return {}
    meta = {"spec_type": m["type"], "spec": m["spec"], "version": m["version"],
            "release": int(m["version"].split(".")[0])}
    if m["date"]:
        meta["date"] = m["date"]
    title: list[str] = []
    ended = False  # by "(Release N)", the cover's last title line
    lines = [(raw, _clean(raw)) for raw in head[m.end():].splitlines()]
    for raw, line in [x for x in lines if x[1]][:_COVER_LINES]:
        if raw.lstrip().startswith("#"):
            break  # the first clause heading: the cover is over
        if _BOILERPLATE.match(line):
            continue
        rel = RELEASE.search(line)
        if rel:
            meta["release"] = int(rel["release"])
            title += [_clean(line[:rel.start()])] if _clean(line[:rel.start()]) else []
            ended = True
            break
        title.append(line)
    if not ended:
        title = title[:1]  # without the release line to end it, only the first is surely title
    if title:
        meta["title"] = " ".join(title)
    return meta


def first_heading(markdown: str) -> str | None:
    """The first Markdown heading, else the first line of text (a PDF without layout has none)."""
    fallback = None
    for raw in markdown.splitlines():
        line = _clean(raw)
        if not line or line.startswith(("|", "<!--")):
            continue
        if raw.lstrip().startswith("#"):
            return line[:200]
        fallback = fallback or line[:200]
    return fallback


def describe(markdown: str, name: str) -> dict:
    """Metadata for one converted document; ``source`` says where each part came from."""
    cover = from_cover(markdown)
    named = from_file_name(name)
    meta: dict = {**named, **cover}
    if cover:
        meta["metadata_source"] = "cover"
    elif named:
        meta["metadata_source"] = "file_name"
    else:
        meta["metadata_source"] = "heading"
    if "title" not in meta:
        meta["title"] = first_heading(markdown) or name.rsplit("!", 1)[-1].rsplit("/", 1)[-1]
    return meta
