"""convert: corpus documents -> ``documents/<doc_id>.md`` plus, beside them:

- ``documents/manifest.json``: the report — one entry per document or refused file, sorted by
  source, with its status, error, metadata and table count;
- ``documents/meta/<doc_id>.json``: spec, version, release, title and the table captions;
- ``documents/tables/<doc_id>/table-NN.md|.csv``: each table, the Markdown headed by its caption;
- ``documents/exports/<doc_id>.json|.html``: Docling JSON / HTML when ``docling.exports`` asks.

Only ``documents/*.md`` are documents to later stages. Nothing written depends on timing, the
worker count, the executor (local or Ray) or the cache, so the same corpus always gives the
same bytes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path

from components.files import build_dir, stat_listing, write_json
from runner.stage import Interrupted, StageContext, StageError

log = logging.getLogger(__name__)

INPUTS: list[str] = []
OPTIONAL_INPUTS = ["acquired.json"]
OUTPUTS = ["documents"]
CONFIG = ["corpus", "docling", "executor", "cache_dir"]
# Documents convert one by one, alike in any number of processes (tests/test_convert.py).
NOT_FINGERPRINTED = ["docling.workers", "docling.parallel"]


def corpus_root(ctx: StageContext) -> Path:
    if ctx.cfg.corpus.path:
        return Path(ctx.cfg.corpus.path).expanduser()
    from components.documents.sample_corpus import SAMPLE_VERSION, write_sample_corpus

    return write_sample_corpus(Path(ctx.cfg.cache_dir) / f"sample-corpus-{SAMPLE_VERSION}")


def _inputs(ctx: StageContext) -> list[Path]:
    acquired: list[Path] = []
    if ctx.path("acquired.json").is_file():
        data = json.loads(ctx.path("acquired.json").read_text(encoding="utf-8"))
        acquired = [Path(p) for p in data.get("documents", [])]
    # The built-in sample corpus only stands in when the user gave no documents at all.
    if acquired and not ctx.cfg.corpus.path:
        return acquired
    return [corpus_root(ctx), *acquired]


def fingerprint_extra(ctx: StageContext) -> str:
    """The corpus files' names, sizes and times: a changed corpus is converted again."""
    h = hashlib.sha256()
    for root in _inputs(ctx):
        if not root.exists():
            h.update(f"missing:{root}".encode())
            continue
        for p, size, mtime_ns in stat_listing(root):
            h.update(f"{p}|{size}|{mtime_ns}\n".encode())
    return h.hexdigest()


def _put(path: Path, text: str) -> None:
    # Plain writes: the whole folder is built by build_dir and renamed into place at the end,
    # which is the atomic step; an fsync per table file would cost more than Docling.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _write_document(tmp: Path, doc_id: str, res, exports: list[str]) -> dict:
    _put(tmp / f"{doc_id}.md", res.markdown)
    captions = []
    for n, table in enumerate(res.tables, start=1):
        stem = tmp / "tables" / doc_id / f"table-{n:02d}"
        _put(stem.with_suffix(".md"), table["markdown"] + "\n")
        _put(stem.with_suffix(".csv"), table["csv"])
        captions.append({"file": f"tables/{doc_id}/table-{n:02d}", "caption": table["caption"],
                         "rows": table["rows"], "cols": table["cols"]})
    for fmt in exports:
        if fmt in res.exports:
            _put(tmp / "exports" / f"{doc_id}.{fmt}", res.exports[fmt])
    meta = {"doc_id": doc_id, "source": res.source, "sha256": res.sha256, **res.meta,
            "tables": captions, "pdf_fallback": res.pdf_fallback}
    _put(tmp / "meta" / f"{doc_id}.json", json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return meta


def run(ctx: StageContext) -> dict[str, float]:
    from components.documents.convert import ConvertConfigError
    from components.documents.corpus import collect, doc_ids
    from components.executor import ExecutorError

    converter = ctx.component("docling")
    # Shared: a later stage (extract) reuses the cluster connection; closed when the run ends.
    executor = ctx.resources.shared("executor", lambda: ctx.component("executor"))
    exts = set(ctx.component("corpus").extensions)
    sources, problems = [], []
    roots = _inputs(ctx)
    for root in roots:
        try:
            s, p = collect(root, exts, Path(ctx.cfg.cache_dir) / "extracted")
        except FileNotFoundError as exc:
            raise StageError(f"convert: {exc}") from None
        sources += s
        problems += p
    if not sources and not problems:
        raise StageError(f"convert: no documents ({', '.join(sorted(exts))}) under "
                         f"{', '.join(map(str, roots))}")

    out = ctx.path("documents")
    manifest = [{"source": pr.name, "status": "failed", "error": pr.error, "failure": "final"}
                for pr in problems]
    t0 = time.perf_counter()
    try:
        results = converter.convert_all(((s.name, s.path) for s in sources),
                                        cache_dir=ctx.cfg.cache_dir, progress=sys.stderr.isatty(),
                                        cancel=ctx.cancel, executor=executor)
    except (ConvertConfigError, ExecutorError) as exc:
        raise StageError(f"convert: {exc}") from None
    if ctx.cancel.is_set():
        # Every document finished so far is in the conversion cache: the rerun takes it there.
        raise Interrupted("convert")
    seconds = time.perf_counter() - t0
    chars = fallback = ok = hits = tables = 0
    with build_dir(out) as tmp:
        for doc_id, res in zip(doc_ids(sources), results):
            entry = {"source": res.source, "doc_id": doc_id, "status": res.status}
            if res.status == "success":
                meta = _write_document(tmp, doc_id, res, converter.exports)
                entry.update(chars=len(res.markdown), tables=len(res.tables), pdf_fallback=res.pdf_fallback,
                             **{k: meta[k] for k in ("spec", "version", "release", "title") if k in meta})
                chars += len(res.markdown)
                fallback += int(res.pdf_fallback)
                hits += int(res.cached)
                tables += len(res.tables)
                ok += 1
            else:
                entry.update(error=res.error, failure="transient" if res.transient else "final")
            manifest.append(entry)
        manifest.sort(key=lambda e: e["source"])
        for m in manifest:
            if m["status"] == "failed":
                log.error("convert: %s: %s", m["source"], m["error"])
        write_json(tmp / "manifest.json", manifest)
    failed = len(manifest) - ok
    transient = sum(m.get("failure") == "transient" for m in manifest)
    log.info("convert: %d converted (%d from cache), %d failed, %d PDFs on the native fallback, "
             "%.1fs; report: %s", ok, hits, failed, fallback, seconds, out / "manifest.json")
    if ok == 0:
        raise StageError(f"convert: all {failed} documents failed; see {out / 'manifest.json'}")
    return {"convert/docs": ok, "convert/failed_docs": failed,
            "convert/pdf_fallback_docs": fallback, "convert/cache_hits": hits,
            "convert/tables": tables, "convert/chars": chars,
            "convert/transient_failures": transient,
            "convert/workers": converter.workers_for(len(sources), executor),
            "convert/seconds": round(seconds, 3)}
