"""Conversion overhead and parallel speedup: our convert stage vs a bare Docling DocumentConverter.

Writes a 3GPP-style corpus of our own (larger variants of the sample specs as .docx, multi-page
vendor PDFs, HTML and Markdown; no 3GPP text), then times, best of --repeats, interleaved:
- bare: one ``DocumentConverter`` with the same format options (native PDF pipeline when the
  layout models are absent, as ours), ``convert`` + ``export_to_markdown`` + write, per file;
- stage, 1 worker: ``runner.stages.convert.run`` on the same files with a cold cache (hashing,
  metadata, tables, manifest, cache write all included);
- stage, 2 workers (process pool, and thread pool for comparison), cold cache;
- stage, warm cache: the second run over unchanged files.
``ratio_vs_bare`` compares wall clock (1 worker); ``ratio_vs_bare_cpu`` compares CPU seconds of
the same runs, which other load on a shared machine disturbs far less.
Docling is imported before any timing; each run builds its own converter(s).
The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

from components.documents.convert import layout_models_available  # noqa: E402
from components.documents.sample_corpus import (OPERATOR_NOTES, SITE_SURVEY_HTML, VENDOR_GUIDE, Section,  # noqa: E402
                                      docx_bytes, pdf_bytes, spec_documents)
from components.tracking import NullTracker  # noqa: E402
from runner import pipeline  # noqa: E402


def write_corpus(dest: Path, copies: int, scale: int) -> list[Path]:
    """``copies`` of each sample spec with every clause repeated ``scale`` times, renumbered."""
    dest.mkdir(parents=True, exist_ok=True)
    for c in range(copies):
        for doc in spec_documents():
            big = copy.deepcopy(doc)
            big.version = f"{doc.release}.{c}.0"
            sections = []
            for k in range(scale):
                for s in doc.sections:
                    sections.append(Section(f"{int(s.number.split('.')[0]) + 10 * k}"
                                            + s.number[len(s.number.split('.')[0]):],
                                            s.title, [f"{p} (variant {c}.{k})" for p in s.paragraphs],
                                            s.table))
            big.sections = sections
            (dest / f"{big.stem}.docx").write_bytes(docx_bytes(big))
        guide = [(h, [f"{p} Revision {c}.{k}." for p in ps]) for k in range(scale) for h, ps in VENDOR_GUIDE]
        (dest / f"vendor-guide-{c:02d}.pdf").write_bytes(pdf_bytes(f"Example guide {c}", guide))
        (dest / f"notes-{c:02d}.md").write_text(OPERATOR_NOTES * scale, encoding="utf-8")
        (dest / f"survey-{c:02d}.html").write_text(SITE_SURVEY_HTML.replace(
            "</body>", "<p>More checks.</p>" * 20 * scale + "</body>"), encoding="utf-8")
    return sorted(dest.iterdir())


def bare(files: list[Path], out: Path) -> tuple[float, float]:
    from docling.datamodel.base_models import InputFormat
    from docling.datamodel.pipeline_options import NativePdfPipelineOptions
    from docling.document_converter import DocumentConverter, PdfFormatOption
    from docling.pipeline.native_pdf_pipeline import NativePdfPipeline

    t, c = time.perf_counter(), time.process_time()
    out.mkdir(parents=True, exist_ok=True)
    options = {}
    if not layout_models_available(None)[0]:
        options[InputFormat.PDF] = PdfFormatOption(pipeline_cls=NativePdfPipeline,
                                                   pipeline_options=NativePdfPipelineOptions())
    conv = DocumentConverter(format_options=options)
    for f in files:
        md = conv.convert(f).document.export_to_markdown()
        (out / f"{f.stem}.md").write_text(md, encoding="utf-8")
    return time.perf_counter() - t, time.process_time() - c


def stage(corpus: Path, run_dir: Path, cache: Path, workers: int, parallel: str) -> tuple[float, float, dict]:
    from runner.stages import convert

    cfg = OmegaConf.create({
        "cache_dir": str(cache), "hw": {"convert_workers": workers},
        "corpus": OmegaConf.load(ROOT / "conf" / "corpus" / "sample.yaml"),
        "docling": OmegaConf.load(ROOT / "conf" / "docling" / "default.yaml"),
        "executor": OmegaConf.load(ROOT / "conf" / "executor" / "local.yaml"),
    })
    cfg.corpus.path = str(corpus)
    cfg.docling.workers = workers
    cfg.docling.parallel = parallel
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    t, c = time.perf_counter(), time.process_time()
    metrics = convert.run(pipeline.context("convert", run_dir, cfg, NullTracker()))
    return time.perf_counter() - t, time.process_time() - c, metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=3, help="variants of each sample document")
    ap.add_argument("--scale", type=int, default=12, help="times each clause is repeated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work-dir", type=Path, default=ROOT / "outputs" / "bench",
                    help="where corpus, outputs and caches go (outputs/ is where runs write; on "
                         "some machines /tmp creates files several times slower)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)

    import docling.document_converter  # noqa: F401  (import cost out of every timing)

    args.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="convert-", dir=args.work_dir))
    try:
        files = write_corpus(work / "corpus", args.copies, args.scale)
        mb = sum(f.stat().st_size for f in files) / 2**20
        print(f"corpus: {len(files)} files, {mb:.1f} MB in {work / 'corpus'}")
        best = {k: math.inf for k in ("bare", "stage_1", "stage_2_process", "stage_2_thread", "warm")}
        cpu = {"bare": math.inf, "stage_1": math.inf}  # CPU seconds: less swayed by a busy machine
        docs = None
        for r in range(args.repeats):
            wall, c = bare(files, work / "bare")
            best["bare"], cpu["bare"] = min(best["bare"], wall), min(cpu["bare"], c)
            s1, c, m = stage(work / "corpus", work / "run1", work / f"cache1-{r}", 1, "process")
            best["stage_1"], cpu["stage_1"] = min(best["stage_1"], s1), min(cpu["stage_1"], c)
            docs = m["convert/docs"]
            warm, _, mw = stage(work / "corpus", work / "run1", work / f"cache1-{r}", 1, "process")
            assert mw["convert/cache_hits"] == docs, mw
            best["warm"] = min(best["warm"], warm)
            for par in ("process", "thread"):
                s2, _, m2 = stage(work / "corpus", work / f"run2{par}", work / f"cache2{par}-{r}", 2, par)
                assert m2["convert/docs"] == docs, m2
                best[f"stage_2_{par}"] = min(best[f"stage_2_{par}"], s2)
            print(f"repeat {r + 1}: " + ", ".join(f"{k} {v:.2f}s" for k, v in best.items()), flush=True)
        one, two = work / "run1" / "documents", work / "run2process" / "documents"
        same = sorted(p.relative_to(two) for p in two.rglob("*")) == sorted(
            p.relative_to(one) for p in one.rglob("*")) and all(
            (one / p.relative_to(two)).read_bytes() == p.read_bytes() for p in two.rglob("*") if p.is_file())
        print(f"{'':18}{'seconds':>9}")
        for k, v in best.items():
            print(f"{k:18}{v:9.2f}")
        print(json.dumps({
            "docs": docs, "corpus_mb": round(mb, 2), "repeats": args.repeats,
            "bare_s": round(best["bare"], 3), "stage_1_worker_s": round(best["stage_1"], 3),
            "stage_2_workers_process_s": round(best["stage_2_process"], 3),
            "stage_2_workers_thread_s": round(best["stage_2_thread"], 3),
            "warm_cache_s": round(best["warm"], 3),
            "ratio_vs_bare": round(best["stage_1"] / best["bare"], 3),
            "ratio_vs_bare_cpu": round(cpu["stage_1"] / cpu["bare"], 3),
            "speedup_2_workers": round(best["stage_1"] / best["stage_2_process"], 3),
            "speedup_2_workers_thread": round(best["stage_1"] / best["stage_2_thread"], 3),
            "outputs_identical_1_vs_2_workers": same,
        }))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
