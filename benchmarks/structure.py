"""Structure of real-layout specs: what convert and process make of ETSI PDFs, Word, Markdown, HTML.

Generates the ETSI-layout fixture corpus (tests/fixtures/etsi_layout.py: our own prose in the
layouts 3GPP specifications are published in, with ground truth), converts it with the
project's DoclingConverter (PDFs through the native text-only pipeline when the layout models
are missing, as the convert stage does), then runs the process engines on the Markdown:

- glossary_precision / glossary_recall: components.documents.glossary over the converted
  Markdown against the truth, pooled over all documents;
- metadata_correct: documents whose spec, version, release and title match the truth;
- on the Rust engine's chunks.jsonl: section_path_rate (chunks with a non-empty section_path),
  header_lines_left (chunk lines that are page headers, 3GPP footer lines or page numbers),
  toc_chunks (chunks made only of table-of-contents debris), mid_sentence_break_rate
  (paragraph breaks where a line ending in a lower-case word is followed by one starting in
  lower case, over all paragraph breaks);
- process_mb_s_rust / process_mb_s_python: each engine on the converted corpus replicated to
  --mb MB (Rust: best of --repeats; Python: once).
The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))

from omegaconf import OmegaConf  # noqa: E402

import etsi_layout  # noqa: E402
from components.documents.convert import DoclingConverter  # noqa: E402
from components.documents.glossary import glossary_rows, is_page_furniture  # noqa: E402
from components.processing import process_config, rust, twin, write_config  # noqa: E402

_CLAUSE_NUMBER = re.compile(r"^(?:\d{1,2}|[A-Z])(?:\.\d{1,3})*\.?$")
_LEADERS = re.compile(r"(?:\.\s?){5,}|…{2,}")
_TOC_ENTRY = re.compile(r"^(?:(?:\d{1,2}|[A-Z])(?:\.\d{1,3})*|Annex [A-Z].*?)?\s*\S.*?\s*(?:\.\s?){3,}\s*\d+$")


def config(docs: Path, out: Path, **overrides):
    group = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "process" / "default.yaml"))
    group.update(overrides)
    return process_config(group, input_dir=docs, output_path=out)


def is_toc_chunk(text: str) -> bool:
    """Only clause numbers, page numbers, leaders, "Contents" and short titles between them."""
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    debris = 0
    for line in lines:
        if _CLAUSE_NUMBER.match(line) or line.isdigit() or _LEADERS.search(line) \
                or _TOC_ENTRY.match(line) or line == "Contents":
            debris += 1
        elif len(line.split()) > 10 or line.endswith((".", ":", ";")):
            return False
    return debris > 0 and debris * 2 >= len(lines)


def paragraph_breaks(text: str) -> tuple[int, int]:
    """(paragraph breaks, of which mid-sentence): lower-case word, break, lower-case start."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    mid = 0
    for a, b in zip(paras, paras[1:]):
        last, first = a.split()[-1], b.split()[0]
        if re.fullmatch(r"[a-z][a-z\-]*,?", last) and re.match(r"[a-z]", first):
            mid += 1
    return max(len(paras) - 1, 0), mid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=4.0, help="MB of replicated Markdown for the MB/s figures")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="structure-bench-"))
    generated = etsi_layout.write_corpus(work / "specs", truth_dir=work / "truth")
    t = time.perf_counter()
    results = DoclingConverter(workers=1, cache=False).convert_all([(g.path.name, g.path) for g in generated])
    convert_s = time.perf_counter() - t
    docs = work / "documents"
    docs.mkdir(exist_ok=True)

    rows_out, meta_ok, hits, predicted, found, truth_n = [], 0, 0, 0, 0, 0
    for g, res in zip(generated, results):
        if res.status != "success":
            rows_out.append((g.path.name, g.truth["source_format"], "FAILED", res.error or "", "", ""))
            continue
        doc_id = re.sub(r"[^A-Za-z0-9_.-]", "_", g.path.stem) + "_" + g.truth["source_format"]
        (docs / f"{doc_id}.md").write_text(res.markdown, encoding="utf-8")
        truth = g.truth
        ok = all(res.meta.get(k) == truth[k] for k in ("spec", "version", "release", "title"))
        meta_ok += ok
        score = etsi_layout.score_glossary(glossary_rows(res.markdown, doc_id), truth)
        hits += round(score["precision"] * score["predicted"])
        predicted += score["predicted"]
        found += round(score["recall"] * score["truth"])
        truth_n += score["truth"]
        rows_out.append((g.path.name, truth["source_format"], "ok" if ok else f"WRONG {res.meta.get('spec')} "
                         f"{res.meta.get('version')}", f"{score['precision']:.3f}", f"{score['recall']:.3f}",
                         f"{len(res.markdown) / 1e3:.1f}"))

    # One Rust run on the converted corpus for the structure metrics.
    binary = rust.ensure_binary()
    cfg = config(docs, work / "chunks.jsonl")
    rust.run_binary(binary, write_config(cfg, work / "process.yaml"), cfg.timeout_s)
    chunks = [json.loads(x) for x in (work / "chunks.jsonl").read_text(encoding="utf-8").splitlines() if x]
    with_path = sum(bool(c.get("section_path")) for c in chunks)
    header_lines = sum(is_page_furniture(line) for c in chunks for line in c["text"].splitlines() if line.strip())
    # The same count over the chunks the LLM is sent (front matter, e.g. a cover's "(Release 19)"
    # line, is kept for metadata but marked and skipped).
    header_lines_body = sum(is_page_furniture(line) for c in chunks if c.get("kind", "body") == "body"
                            for line in c["text"].splitlines() if line.strip())
    toc = sum(is_toc_chunk(c["text"]) for c in chunks)
    breaks = [paragraph_breaks(c["text"]) for c in chunks]
    n_breaks, n_mid = sum(b for b, _ in breaks), sum(m for _, m in breaks)
    by_doc: dict[str, list[dict]] = {}
    for c in chunks:
        by_doc.setdefault(c["doc_id"], []).append(c)

    # Throughput on the corpus replicated to --mb.
    big = work / "replicated"
    big.mkdir(exist_ok=True)
    sources = sorted(docs.glob("*.md"))
    size, k = 0, 0
    while size < args.mb * 1e6 and sources:
        for p in sources:
            data = p.read_bytes()
            (big / f"{p.stem}__{k:04d}.md").write_bytes(data)
            size += len(data)
        k += 1
    big_cfg = config(big, work / "big_rust.jsonl")
    big_path = write_config(big_cfg, work / "big_rust.yaml")
    rust_s = math.inf
    for _ in range(args.repeats):
        t = time.perf_counter()
        rust.run_binary(binary, big_path, big_cfg.timeout_s)
        rust_s = min(rust_s, time.perf_counter() - t)
    t = time.perf_counter()
    twin.run(config(big, work / "big_python.jsonl"))
    python_s = time.perf_counter() - t
    identical = (work / "big_rust.jsonl").read_bytes() == (work / "big_python.jsonl").read_bytes()

    print(f"converted {len(generated)} documents in {convert_s:.1f} s; {len(chunks)} chunks (rust)")
    print(f"{'document':34} {'fmt':5} {'metadata':22} {'gloss P':>7} {'gloss R':>7} {'kchars':>7} "
          f"{'chunks':>6} {'w/ path':>7}")
    for name, fmt, meta, p, r, kc in rows_out:
        doc_id = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(name).stem) + "_" + fmt
        cs = by_doc.get(doc_id, [])
        print(f"{name:34} {fmt:5} {meta:22} {p:>7} {r:>7} {kc:>7} {len(cs):>6} "
              f"{sum(bool(c.get('section_path')) for c in cs):>7}")
    print(f"process on {size / 1e6:.1f} MB ({k} copies): rust {size / 1e6 / rust_s:.1f} MB/s, "
          f"python {size / 1e6 / python_s:.2f} MB/s, same chunks.jsonl: {identical}")
    print(json.dumps({
        "glossary_precision": round(hits / predicted, 4) if predicted else 0.0,
        "glossary_recall": round(found / truth_n, 4) if truth_n else 0.0,
        "section_path_rate": round(with_path / len(chunks), 4) if chunks else 0.0,
        "header_lines_left": header_lines,
        "header_lines_left_body": header_lines_body,
        "toc_chunks": toc,
        "mid_sentence_break_rate": round(n_mid / n_breaks, 4) if n_breaks else 0.0,
        "metadata_correct": round(meta_ok / len(generated), 4),
        "process_mb_s_rust": round(size / 1e6 / rust_s, 2),
        "process_mb_s_python": round(size / 1e6 / python_s, 3),
        "chunks": len(chunks),
        "docs": len(generated),
        "replicated_mb": round(size / 1e6, 2),
        "engines_identical": identical,
    }))


if __name__ == "__main__":
    main()
