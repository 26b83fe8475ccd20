"""convert: corpus documents -> ``documents/<doc_id>.md`` and ``documents/manifest.json``."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from hydra.utils import instantiate

from runner.atomic import write_json, write_text
from runner.stage import StageContext, StageError

log = logging.getLogger(__name__)

INPUTS: list[str] = []
OPTIONAL_INPUTS = ["acquired.json"]
OUTPUTS = ["documents"]
CONFIG_KEYS = ["corpus", "docling"]


def corpus_root(ctx: StageContext) -> Path:
    if ctx.cfg.corpus.path:
        return Path(str(ctx.cfg.corpus.path)).expanduser()
    from components.sample_corpus import SAMPLE_VERSION, write_sample_corpus

    return write_sample_corpus(Path(ctx.cfg.cache_dir) / f"sample-corpus-{SAMPLE_VERSION}")


def _inputs(ctx: StageContext) -> list[Path]:
    roots = [corpus_root(ctx)]
    acquired = ctx.path("acquired.json")
    if acquired.is_file():
        data = json.loads(acquired.read_text(encoding="utf-8"))
        roots += [Path(p) for p in data.get("documents", [])]
    return roots


def fingerprint_extra(ctx: StageContext) -> str:
    """The corpus files' names, sizes and times: a changed corpus is converted again."""
    h = hashlib.sha256()
    for root in _inputs(ctx):
        if not root.exists():
            h.update(f"missing:{root}".encode())
            continue
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            st = p.stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def run(ctx: StageContext) -> dict[str, float]:
    from components.corpus import collect, doc_ids

    converter = instantiate(ctx.cfg.docling)
    if converter.workers is None and getattr(ctx, "hardware", None) is not None:
        converter.workers = ctx.hardware.convert_workers
    exts = set(ctx.cfg.corpus.extensions)
    sources, problems = [], []
    for root in _inputs(ctx):
        try:
            s, p = collect(root, exts, Path(ctx.cfg.cache_dir) / "extracted")
        except FileNotFoundError as exc:
            raise StageError(f"convert: {exc}") from None
        sources += s
        problems += p
    if not sources and not problems:
        raise StageError(f"convert: no documents ({', '.join(sorted(exts))}) under "
                         f"{', '.join(map(str, _inputs(ctx)))}")

    out = ctx.path("documents")
    tmp = ctx.path("documents.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    manifest = []
    for pr in problems:
        log.error("convert: %s: %s", pr.name, pr.error)
        manifest.append({"source": pr.name, "status": "failed", "error": pr.error})
    t0 = time.perf_counter()
    chars = fallback = ok = 0
    ids = doc_ids(sources)
    for doc_id, res in zip(ids, converter.convert_all((s.name, s.path) for s in sources)):
        entry = {"source": res.source, "doc_id": doc_id, "status": res.status,
                 "seconds": round(res.seconds, 3)}
        if res.status == "success":
            write_text(tmp / f"{doc_id}.md", res.markdown)
            entry.update(chars=len(res.markdown), pdf_fallback=res.pdf_fallback)
            chars += len(res.markdown)
            fallback += int(res.pdf_fallback)
            ok += 1
        else:
            entry["error"] = res.error
            log.error("convert: %s: %s", res.source, res.error)
        manifest.append(entry)
    write_json(tmp / "manifest.json", manifest)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    failed = sum(1 for m in manifest if m["status"] == "failed")
    if ok == 0:
        raise StageError(f"convert: all {failed} documents failed; see {out / 'manifest.json'}")
    return {"convert/docs": ok, "convert/failed_docs": failed,
            "convert/pdf_fallback_docs": fallback, "convert/chars": chars,
            "convert/seconds": round(time.perf_counter() - t0, 3)}
