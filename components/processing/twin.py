"""The Python engine: the reference implementation of rust/SPEC.md. Clarity over speed."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from components.processing import chunking, dedup
from components.processing.config import FilterConfig, ProcessConfig
from components.processing.errors import ProcessingError
from components.processing.normalize import normalize
from components.processing.signals import signals


def list_documents(input_dir: Path) -> list[tuple[str, Path]]:
    """`<input_dir>/*.md`, sorted by doc id (the file stem)."""
    docs = [(p.name[:-3], p) for p in input_dir.iterdir() if p.name.endswith(".md") and len(p.name) > 3 and p.is_file()]
    return sorted(docs)


def passes(sig: dict[str, Any], f: FilterConfig) -> bool:
    return (sig["n_chars"] >= f.min_chars and sig["n_words"] >= f.min_words
            and sig["alpha_ratio"] >= f.min_alpha_ratio and sig["table_density"] <= f.max_table_density)


def chunk_document(doc_id: str, text: str, cfg: ProcessConfig) -> list[dict[str, Any]]:
    """All chunks of one normalized document, before filters and dedup."""
    sections, spans = chunking.chunk(text, cfg.chunk)
    out = []
    for index, sp in enumerate(spans):
        section = sections[sp.section]
        body = text[sp.start:sp.end]
        out.append({
            "id": f"{doc_id}#{index}", "doc_id": doc_id, "index": index,
            "section_path": list(section.path), "heading": section.heading,
            "kind": section.kind, "start": sp.start, "end": sp.end, "text": body,
            **signals(body, cfg.chunk.max_chars),
        })
    return out


def dumps(obj: dict[str, Any]) -> str:
    """The line format of chunks.jsonl and the clusters file; serde_json writes the same bytes."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def run(cfg: ProcessConfig, on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """The pipeline; ``on_progress(phase, done, total)`` as the binary's progress lines say."""
    from components.files import atomic_open

    def step(phase: str, done: int, total: int) -> None:
        if on_progress is not None:
            on_progress(phase, done, total)

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    input_dir = Path(cfg.input_dir)
    try:
        docs = list_documents(input_dir)
    except OSError as exc:
        raise ProcessingError("input", f"cannot list documents: {exc}", str(input_dir)) from exc

    t = time.perf_counter()
    texts: list[tuple[str, str]] = []
    failures: list[dict[str, str]] = []
    bytes_in = 0
    for doc_id, path in docs:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            failures.append({"doc_id": doc_id, "path": str(path), "kind": "read_error",
                             "message": f"cannot read document: {exc}"})
            continue
        bytes_in += len(raw)
        try:
            texts.append((doc_id, raw.decode("utf-8")))
        except UnicodeDecodeError as exc:
            failures.append({"doc_id": doc_id, "path": str(path), "kind": "invalid_utf8",
                             "message": f"document is not UTF-8: {exc}"})
    timings["read"] = time.perf_counter() - t

    t = time.perf_counter()
    normalized = []
    for k, (doc_id, text) in enumerate(texts):
        normalized.append((doc_id, normalize(text, cfg.normalize)))
        step("documents", k + 1, len(texts))
    timings["normalize"] = time.perf_counter() - t

    t = time.perf_counter()
    all_chunks = [c for doc_id, text in normalized for c in chunk_document(doc_id, text, cfg)]
    kept = [c for c in all_chunks if passes(c, cfg.filters)]
    timings["chunk"] = time.perf_counter() - t

    t = time.perf_counter()
    step("dedup", 0, 0)
    bodies = [c["text"] for c in kept]
    exact = dedup.exact_representatives(bodies) if cfg.dedup.exact else list(range(len(kept)))
    unique = [i for i, r in enumerate(exact) if r == i]
    if cfg.dedup.near:
        near = [unique[r] for r in dedup.near_representatives([bodies[i] for i in unique], cfg.dedup)]
    else:
        near = list(unique)
    exact_groups: dict[int, list[int]] = {}
    for i, r in enumerate(exact):
        if r != i:
            exact_groups.setdefault(r, []).append(i)
    near_groups: dict[int, list[int]] = {}
    for u, r in zip(unique, near):
        if r != u:
            near_groups.setdefault(r, []).append(u)
    clusters = [{"kind": kind, "kept": kept[r]["id"], "duplicates": [kept[i]["id"] for i in dups]}
                for kind, groups in (("exact", exact_groups), ("near", near_groups))
                for r, dups in sorted(groups.items())]
    written = [kept[u] for u, r in zip(unique, near) if r == u]
    timings["dedup"] = time.perf_counter() - t

    t = time.perf_counter()
    step("write", 0, len(written))
    with atomic_open(cfg.output_path) as fh:
        for k, c in enumerate(written):
            fh.write(dumps(c) + "\n")
            if k % 1000 == 999:
                step("write", k + 1, len(written))
    with atomic_open(cfg.clusters_path) as fh:
        fh.writelines(dumps(c) + "\n" for c in clusters)
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    return {
        "engine": "python",
        "documents": len(docs) - len(failures),
        "documents_failed": len(failures),
        "failures": failures,
        "bytes_in": bytes_in,
        "chunks_total": len(all_chunks),
        "chunks_filtered": len(all_chunks) - len(kept),
        "exact_duplicates": sum(map(len, exact_groups.values())),
        "near_duplicates": sum(map(len, near_groups.values())),
        "chunks_written": len(written),
        "duplicate_clusters": len(clusters),
        "timings": timings,
        "mb_per_s": bytes_in / 1e6 / max(timings["total"], 1e-9),
    }
