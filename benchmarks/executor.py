"""Convert + process on this machine's pool (``executor=local``) vs on a Ray cluster
(``executor=ray``), same generated corpus, same outputs expected.

Starts a one-node Ray as a user would (``ray start --head``, --cpus CPUs, token auth) before
any timing; then, best of --repeats, with a cold conversion cache each time and no stage cache:
- local: ``pipeline.run`` of convert and process, ``docling.workers=--workers`` (process pool);
- ray: the same with ``executor=ray executor.address=<the head>``; each run connects, ships
  components/ and starts its workers (each imports Docling), as a real run on a cluster does.
All local runs come first: a fork pool must not fork a process that holds Ray's threads.
``identical_outputs``: every run's ``documents/`` tree and ``chunks.jsonl`` are byte-identical.
The corpus is ``benchmarks/convert.py``'s (larger variants of the sample specs; no 3GPP text).
The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.tracking import NullTracker  # noqa: E402
from runner import pipeline  # noqa: E402
from runner.stage import Resources  # noqa: E402
from tests.fixtures.ray_head import ray_head  # noqa: E402


def write_corpus(dest: Path, copies: int, scale: int) -> list[Path]:
    spec = importlib.util.spec_from_file_location("bench_convert", ROOT / "benchmarks" / "convert.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.write_corpus(dest, copies, scale)


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from runner.config import resolve_hardware

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=[f"tracking.root={ROOT}", *overrides])
    resolve_hardware(cfg)
    return cfg


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_run(work: Path, name: str, corpus: Path, overrides: list[str]) -> tuple[float, dict, dict]:
    run_dir, cache = work / name, work / f"cache-{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    run_dir.mkdir(parents=True)
    cfg = compose(f"cache_dir={cache}", f"corpus.path={corpus}", "stage_cache=false", *overrides)
    resources = Resources()
    t0 = time.perf_counter()
    try:
        metrics = pipeline.run(run_dir, cfg, NullTracker(), ["convert", "process"], resources,
                               threading.Event())
    finally:
        resources.close()  # the Ray connection too: a run's connection is part of its cost
    wall = time.perf_counter() - t0
    outputs = {f"documents/{k}": v for k, v in tree(run_dir / "documents").items()}
    outputs["chunks.jsonl"] = (run_dir / "chunks.jsonl").read_bytes()
    return wall, metrics, outputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=3, help="variants of each sample document")
    ap.add_argument("--scale", type=int, default=12, help="times each clause is repeated")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray node")
    ap.add_argument("--workers", type=int, default=2, help="docling.workers of the local runs")
    ap.add_argument("--work-dir", type=Path, default=ROOT / "outputs" / "bench")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if importlib.util.find_spec("ray") is None:
        sys.exit("benchmarks/executor.py needs Ray: pip install '.[ray]'")

    import docling.document_converter  # noqa: F401  (import cost out of every timing)

    args.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="executor-", dir=args.work_dir))
    try:
        files = write_corpus(work / "corpus", args.copies, args.scale)
        mb = sum(f.stat().st_size for f in files) / 2**20
        print(f"corpus: {len(files)} files, {mb:.1f} MB; local: {args.workers} workers; "
              f"Ray: one node, {args.cpus} CPUs")
        rows: dict[str, list[tuple[float, float, float]]] = {"local": [], "ray": []}
        outputs, docs = [], 0
        local = [f"docling.workers={args.workers}", "docling.parallel=process"]
        for r in range(args.repeats):
            wall, m, out = one_run(work, f"local-{r}", work / "corpus", local)
            rows["local"].append((wall, m["convert/seconds"], m["process/wall_seconds"]))
            outputs.append(out)
            docs = int(m["convert/docs"])
        t0 = time.perf_counter()
        with ray_head(cpus=args.cpus) as (address, env):
            head_s = time.perf_counter() - t0
            # Ray reads its auth mode when imported: this process is the driver from here on.
            os.environ.update(RAY_AUTH_MODE=env["RAY_AUTH_MODE"], RAY_AUTH_TOKEN=env["RAY_AUTH_TOKEN"])
            for r in range(args.repeats):
                wall, m, out = one_run(work, f"ray-{r}", work / "corpus",
                                       ["executor=ray", f"executor.address={address}"])
                rows["ray"].append((wall, m["convert/seconds"], m["process/wall_seconds"]))
                outputs.append(out)
        identical = all(o == outputs[0] for o in outputs[1:])
        print(f"{'executor':<10}{'run':>5}{'wall s':>10}{'convert s':>12}{'process s':>12}")
        best = {}
        for name, rs in rows.items():
            best[name] = min(rs)
            for r, x in enumerate(rs):
                mark = "  best" if x == best[name] else ""
                print(f"{name:<10}{r:>5}{x[0]:>10.2f}{x[1]:>12.2f}{x[2]:>12.2f}{mark}")
        print(f"Ray head start (not in the runs): {head_s:.1f}s; outputs identical: {identical}")
        result = {
            "benchmark": "executor", "files": len(files), "docs": docs, "corpus_mb": round(mb, 2),
            "local_workers": args.workers, "ray_cpus": args.cpus, "repeats": args.repeats,
            "local_s": round(best["local"][0], 3), "ray_s": round(best["ray"][0], 3),
            "local_convert_s": round(best["local"][1], 3), "ray_convert_s": round(best["ray"][1], 3),
            "ratio_ray_vs_local": round(best["ray"][0] / best["local"][0], 3),
            "ratio_convert_ray_vs_local": round(best["ray"][1] / best["local"][1], 3),
            "identical_outputs": identical,
        }
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
