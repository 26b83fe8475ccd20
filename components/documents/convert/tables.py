"""Tables out of a converted document: Markdown (as the export rendered it), CSV and caption."""
from __future__ import annotations

import csv
import io
import re

# A caption line as 3GPP and most vendors write it: "Table 5.7.4-1: Timer values".
CAPTION = re.compile(r"^\s*(\*\*)?(Table|Tab\.)\s+[A-Z]?[\dA-Z][\w.\-]*\s*[:.\-\u2013\u2014]", re.I)


def _caption(doc, table, prev_text: str | None, next_text: str | None) -> str:
    own = table.caption_text(doc) if table.captions else ""
    if own.strip():
        return own.strip()
    # Word files carry the caption as a styled paragraph above the table (3GPP's "TH"
    # style); some vendors put it below.
    for text in (prev_text, next_text):
        if text and CAPTION.match(text):
            return text.strip().strip("*").strip()
    return ""


# A GitHub pipe table as Docling's Markdown export writes it: header, rule, rows.
_MD_TABLE = re.compile(r"(?m)^\|.*\|[ \t]*\n\|[-:| ]+\|[ \t]*(?:\n\|.*\|[ \t]*)*$")


def table_markdowns(doc, markdown: str, tables: list) -> list[str]:
    """Each table's Markdown, exactly as in the document's export.

    The export already rendered every table, in document order, so they are cut out of it;
    serializing each table again would cost several per cent of the whole conversion. Where the
    count does not match (an empty table renders as nothing), each is serialized on its own.
    """
    blocks = _MD_TABLE.findall(markdown)
    if len(blocks) == len(tables):
        return blocks
    from docling_core.transforms.serializer.markdown import MarkdownDocSerializer

    serializer = MarkdownDocSerializer(doc=doc)
    return [serializer.serialize(item=t).text for t in tables]


def extract_tables(doc, markdown: str) -> list[dict]:
    from docling_core.types.doc import TableItem, TextItem

    items = [it for it, _ in doc.iterate_items() if isinstance(it, (TableItem, TextItem))]
    found = [(i, it) for i, it in enumerate(items) if isinstance(it, TableItem)]
    out = []
    for (i, item), text in zip(found, table_markdowns(doc, markdown, [it for _, it in found])):
        prev_text = items[i - 1].text if i and isinstance(items[i - 1], TextItem) else None
        nxt = items[i + 1] if i + 1 < len(items) else None
        next_text = nxt.text if isinstance(nxt, TextItem) else None
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([[c.text for c in row] for row in item.data.grid])
        caption = _caption(doc, item, prev_text, next_text)
        if caption and caption not in text:
            text = f"{caption}\n\n{text}"
        out.append({"caption": caption, "markdown": text, "csv": buf.getvalue(),
                    "rows": item.data.num_rows, "cols": item.data.num_cols})
    return out
