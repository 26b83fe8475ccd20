"""Document metadata: spec number, version, release, title, series and source format.

A 3GPP specification says who it is on its cover page, and the content always wins:

- the 3GPP cover (Word, and Markdown/HTML made from it): "3GPP TS 38.899 V17.0.0 (2026-03)",
  then the title lines ending in "(Release 17)";
- the ETSI front page of the published PDF: "ETSI TS 138 322 V19.2.0 (2026-04)", the title with
  ETSI's series prefix ("5G; NR; Radio Link Control (RLC) protocol specification"), then
  "(3GPP TS 38.322 version 19.2.0 Release 19)". ETSI numbers 3GPP's xx.yyy as 1xx yyy. The
  title kept is 3GPP's, without the prefix ("NR; Radio Link Control (RLC) protocol
  specification"); the same lines repeat as page furniture on every page, so the title is read
  from the lines just above the bracketed 3GPP line.

The file name ("38899-h00.docx": the version is three base-36 digits, h00 = 17.0.0) only fills
the gaps, e.g. for a cover Docling could not read, and is ignored when it names another spec than
the content does. Any other document gets the title of its first heading.
"""
from __future__ import annotations

import re

from components.documents.threegpp import (FILE_NAME, from_file_name, series,  # noqa: F401
                                           spec_from_etsi, version_from_code)

COVER = re.compile(
    r"3GPP\s+(?P<type>TS|TR)\s+(?P<spec>\d{2}\.\d{3}(?:-\d+)?)\s+V(?P<version>\d+\.\d+\.\d+)"
    r"(?:\s*\((?P<date>\d{4}-\d{2})\))?")
ETSI_COVER = re.compile(
    r"ETSI\s+(?P<type>TS|TR)\s+(?P<number>1\d{2}\s?\d{3}(?:-\d+)?)\s+V(?P<version>\d+\.\d+\.\d+)"
    r"\s*\((?P<date>\d{4}-\d{2})\)")
ETSI_3GPP = re.compile(
    r"\(\s*3GPP\s+(?P<type>TS|TR)\s+(?P<spec>\d{2}\.\d{3}(?:-\d+)?)\s+version\s+"
    r"(?P<version>\d+\.\d+\.\d+)\s+Release\s+(?P<release>\d+)\s*\)")
# Page furniture of an ETSI PDF: "3GPP TS 38.322 version 19.2.0 Release 19", "ETSI", "12".
_ETSI_FURNITURE = re.compile(r"^(3GPP\s+T[SR]\s+\S+\s+version\s+\S+\s+Release\s+\d+|ETSI|\d{1,4})$")
# ETSI's series prefix in front of the 3GPP title: "5G; ", "LTE; 5G; ", "Universal Mobile ...".
_ETSI_PREFIX = re.compile(
    r"^(?:(?:Digital cellular telecommunications system \(Phase 2\+?\)(?: \(GSM\))?|"
    r"Universal Mobile Telecommunications System \(UMTS\)|LTE|5G|GSM)\s*;\s*)+")
RELEASE = re.compile(r"\(\s*Release\s+(?P<release>\d+)\s*\)", re.I)
# Cover-page lines that are not the title.
_BOILERPLATE = re.compile(r"^(technical (specification|report)( group .*)?|3rd generation partnership "
                          r"project.*|3gpp)\s*;?$", re.I)
_COVER_LINES = 10  # non-empty lines: the title follows the cover line closely
_HEAD_CHARS = 8000
_FORMATS = {"pdf": "pdf", "docx": "docx", "md": "md", "markdown": "md", "html": "html", "htm": "html"}


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


def from_etsi_cover(markdown: str) -> dict:
    """Spec, version, release, date and 3GPP title from an ETSI front page, if there is one."""
    head = markdown[:_HEAD_CHARS]
    m3, me = ETSI_3GPP.search(head), ETSI_COVER.search(head)
    if not m3 and not me:
        return {}
    meta: dict = {}
    if me:
        spec = spec_from_etsi(me["number"])
        meta.update({"spec_type": me["type"], "spec": spec, "version": me["version"],
                     "release": int(me["version"].split(".")[0]), "date": me["date"]})
    if m3:
        meta.update({"spec_type": m3["type"], "spec": m3["spec"], "version": m3["version"],
                     "release": int(m3["release"])})
        title = [_clean(head[head.rfind("\n", 0, m3.start()) + 1:m3.start()])]
        before = head[:head.rfind("\n", 0, m3.start()) + 1].splitlines()
        for raw in reversed(before):
            line = _clean(raw)
            if not line or _ETSI_FURNITURE.match(line):
                continue
            if ETSI_COVER.search(line) or raw.lstrip().startswith("#") or len(title) > 4:
                break
            title.insert(0, line)
        text = _ETSI_PREFIX.sub("", " ".join(t for t in title if t)).strip()
        if text:
            meta["title"] = text
    return meta


def from_content(markdown: str) -> dict:
    """The 3GPP cover or the ETSI front page, whichever comes first in the document."""
    head = markdown[:_HEAD_CHARS]
    found = []
    for pattern, read, source in ((COVER, from_cover, "cover"), (ETSI_3GPP, from_etsi_cover, "etsi_cover"),
                                  (ETSI_COVER, from_etsi_cover, "etsi_cover")):
        m = pattern.search(head)
        if m:
            found.append((m.start(), read, source))
    if not found:
        return {}
    _, read, source = min(found, key=lambda f: f[0])
    meta = read(markdown)
    return {**meta, "metadata_source": source} if meta else {}


def source_format(name: str) -> str | None:
    """``pdf``, ``docx``, ``md`` or ``html`` from the (last member's) file name."""
    last = name.rsplit("!", 1)[-1].rsplit("/", 1)[-1]
    return _FORMATS.get(last.rsplit(".", 1)[-1].lower()) if "." in last else None


def describe(markdown: str, name: str) -> dict:
    """Metadata for one converted document; ``metadata_source`` says where it came from:
    ``cover`` (3GPP), ``etsi_cover``, ``file_name`` or ``heading``."""
    content = from_content(markdown)
    named = from_file_name(name)
    if content.get("spec") and named.get("spec") != content["spec"]:
        named = {}  # the name is of another spec (a renamed file): it says nothing about this one
    meta: dict = {**named, **content}
    if not content:
        meta["metadata_source"] = "file_name" if named else "heading"
    if "title" not in meta:
        meta["title"] = first_heading(markdown) or name.rsplit("!", 1)[-1].rsplit("/", 1)[-1]
    if meta.get("spec"):
        meta["series"] = series(meta["spec"])
    fmt = source_format(name)
    if fmt:
        meta["source_format"] = fmt
    return meta
