"""Processing throughput: the Rust binary vs the Python twin vs datasketch, plus LSH recall.

Generates a 3GPP-like Markdown corpus (>= 50 MB, releases with near-duplicates), then:
- Rust: the full pipeline (read, normalize, chunk, dedup, write) on the whole corpus, wall
  clock around the process, best of --repeats;
- Python twin: the same pipeline on a subset of whole specs (--subset-mb), MB/s scaled per MB;
  its chunks.jsonl must equal the binary's on that subset, byte for byte;
- datasketch: MinHash + MinHashLSH (same shingles, num_perm, bands x rows) on the subset's
  chunks; only shingling, hashing and LSH insert/query are timed (chunking is given to it free);
- recall: near-duplicate pairs with exact shingle Jaccard >= threshold (found by exact prefix
  filtering over Python-hashed shingle tuples, independent of the engines' hashes) that the
  binary put in the same cluster, over the whole corpus.
The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import math
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

from components.processing import process_config, rust, twin, write_config  # noqa: E402
from components.processing.normalize import normalize  # noqa: E402
from components.processing.signals import words  # noqa: E402
from tests.fixtures.synthetic import generate  # noqa: E402


def config(docs: Path, out: Path, **overrides):
    group = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "process" / "default.yaml"))
    group.pop("_target_")
    group.update(overrides)
    return process_config(group, input_dir=docs, output_path=out)


def run_rust(work: Path, docs: Path, name: str, repeats: int, **overrides) -> tuple[float, dict]:
    cfg = config(docs, work / f"{name}.jsonl", **overrides)
    path = write_config(cfg, work / f"{name}.yaml")
    binary = rust.ensure_binary()
    best, result = math.inf, {}
    for _ in range(repeats):
        t = time.perf_counter()
        result = rust.run_binary(binary, path, cfg.timeout_s)
        best = min(best, time.perf_counter() - t)
    return best, result


def kept_chunks(docs: Path, cfg) -> list[dict]:
    """All chunks passing the filters, exact duplicates removed, in global order."""
    seen, out = set(), []
    for doc_id, path in twin.list_documents(docs):
        text = normalize(path.read_text(encoding="utf-8"), cfg.normalize)
        for c in twin.chunk_document(doc_id, text, cfg):
            if twin.passes(c, cfg.filters) and c["text"] not in seen:
                seen.add(c["text"])
                out.append(c)
    return out


def shingle_tuples(text: str, k: int) -> list[tuple[str, ...]]:
    ws = [w.encode().lower().decode() for w in words(text)]
    if len(ws) < k:
        return [tuple(ws)] if ws else []
    return [tuple(ws[i:i + k]) for i in range(len(ws) - k + 1)]


def true_pairs(chunks: list[dict], k: int, threshold: float) -> list[tuple[str, str]]:
    """All pairs with Jaccard >= threshold, exactly, by prefix filtering: two sets that reach
    the threshold share an element among each one's first |s| - ceil(t|s|) + 1 (global order)."""
    sets = [frozenset(hash(s) for s in shingle_tuples(c["text"], k)) for c in chunks]
    freq: dict[int, int] = defaultdict(int)
    for s in sets:
        for h in s:
            freq[h] += 1
    index: dict[int, list[int]] = defaultdict(list)
    pairs = []
    for j, s in enumerate(sets):
        if not s:
            continue
        order = sorted(s, key=lambda h: (freq[h], h))  # rare shingles first: short candidate lists
        prefix = order[:len(s) - math.ceil(threshold * len(s)) + 1]
        cands = {i for h in prefix for i in index[h]}
        for i in cands:
            inter = len(sets[i] & s)
            if inter / (len(sets[i]) + len(s) - inter) >= threshold:
                pairs.append((chunks[i]["id"], chunks[j]["id"]))
        for h in prefix:
            index[h].append(j)
    return pairs


def datasketch_seconds(chunks: list[dict], cfg) -> float:
    from datasketch import MinHash, MinHashLSH

    d = cfg.dedup
    t = time.perf_counter()
    lsh = MinHashLSH(threshold=d.threshold, num_perm=d.num_perm, params=(d.bands, d.num_perm // d.bands))
    for c in chunks:
        m = MinHash(num_perm=d.num_perm, seed=d.seed)
        m.update_batch([" ".join(s).encode() for s in shingle_tuples(c["text"], d.shingle_size)])
        lsh.query(m)
        lsh.insert(c["id"], m)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=52.0, help="corpus size in MB (issue asks >= 50)")
    ap.add_argument("--subset-mb", type=float, default=4.0, help="MB run through Python and datasketch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="process-bench-"))
    docs, subset = work / "documents", work / "subset"
    if not docs.exists():
        generate(docs, int(args.mb * 1e6))
    corpus_bytes = sum(p.stat().st_size for p in docs.glob("*.md"))
    subset.mkdir(exist_ok=True)
    size = 0
    for p in sorted(docs.glob("*.md")):  # whole specs (all their releases), in order
        if size >= args.subset_mb * 1e6 and p.name.endswith("_rel15.md"):
            break
        (subset / p.name).write_bytes(p.read_bytes())
        size += p.stat().st_size
    print(f"corpus: {corpus_bytes / 1e6:.1f} MB in {len(list(docs.glob('*.md')))} documents; "
          f"subset {size / 1e6:.1f} MB", flush=True)

    rust_s, rust_result = run_rust(work, docs, "rust_full", args.repeats)
    rust_mb_s = corpus_bytes / 1e6 / rust_s
    print(f"rust: {rust_s:.2f} s ({rust_mb_s:.1f} MB/s), phases {rust_result['timings']}, "
          f"{rust_result['chunks_written']} chunks written, {rust_result['exact_duplicates']} exact and "
          f"{rust_result['near_duplicates']} near duplicates", flush=True)
    rust1_s, _ = run_rust(work, docs, "rust_1thread", 1, threads=1)
    print(f"rust, 1 thread: {corpus_bytes / 1e6 / rust1_s:.1f} MB/s", flush=True)

    _, sub_rust = run_rust(work, subset, "rust_subset", 1)
    cfg = config(subset, work / "python_subset.jsonl")
    t = time.perf_counter()
    sub_py = twin.run(cfg)
    python_mb_s = size / 1e6 / (time.perf_counter() - t)
    identical = filecmp.cmp(work / "rust_subset.jsonl", work / "python_subset.jsonl", shallow=False) \
        and sub_rust["clusters"] == sub_py["clusters"]
    print(f"python twin on the subset: {python_mb_s:.2f} MB/s; same output as rust: {identical}", flush=True)

    ds_s = datasketch_seconds(kept_chunks(subset, cfg), cfg)
    datasketch_mb_s = size / 1e6 / ds_s
    print(f"datasketch on the subset: {datasketch_mb_s:.2f} MB/s (MinHash + LSH only)", flush=True)

    full_cfg = config(docs, work / "unused.jsonl")
    t = time.perf_counter()
    pairs = true_pairs(kept_chunks(docs, full_cfg), full_cfg.dedup.shingle_size, full_cfg.dedup.threshold)
    root: dict[str, str] = {}
    for c in rust_result["clusters"]:
        if c["kind"] == "near":
            for dup in c["duplicates"]:
                root[dup] = c["kept"]
    found = sum(root.get(a, a) == root.get(b, b) for a, b in pairs)
    recall = found / len(pairs) if pairs else 1.0
    print(f"recall: {found}/{len(pairs)} pairs with Jaccard >= {full_cfg.dedup.threshold} "
          f"({time.perf_counter() - t:.0f} s to compute)", flush=True)

    print(json.dumps({
        "rust_mb_s": round(rust_mb_s, 2),
        "python_mb_s": round(python_mb_s, 3),
        "datasketch_mb_s": round(datasketch_mb_s, 3),
        "ratio_vs_python": round(rust_mb_s / python_mb_s, 1),
        "ratio_vs_datasketch": round(rust_mb_s / datasketch_mb_s, 1),
        "recall": round(recall, 4),
        "corpus_mb": round(corpus_bytes / 1e6, 1),
        "subset_mb": round(size / 1e6, 1),
        "python_scaled_from_subset": True,
        "identical_output": identical,
    }))


if __name__ == "__main__":
    main()
