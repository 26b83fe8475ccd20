"""Faults on purpose, counted: interrupted-and-resumed extractions and concurrent cache races.

- N extractions (the real embedded llama.cpp server) are sent SIGINT at a random moment after
  their first answer, then re-run in the same directory. Against what the interrupted run had
  finished: ``lost_records`` (chunks missing at the end), ``duplicate_records`` (chunks twice in
  extractions.jsonl), ``redone_records`` (finished before the signal, asked again after it) and
  ``max_stop_seconds`` (signal to exit).
- N races: three ``python -m runner stages=[convert]`` at once over one fresh cache and a zip
  corpus; ``lost_documents`` counts documents any of them is missing.

Goal: 0, 0, 0, 0 and under 5 s. Last line: one JSON object.

    .venv/bin/python benchmarks/faults.py [--runs 3] [--chunks 8]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def runner(args: list[str], env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def records(path: Path) -> list[dict]:
    out = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by the signal
                pass
    return out


def interrupted_extraction(work: Path, chunks: Path, n_chunks: int, env: dict, rng: random.Random) -> dict:
    run_dir = work / "run"
    run_dir.mkdir(parents=True)
    shutil.copy(chunks, run_dir / "chunks.jsonl")
    args = [f"hydra.run.dir={run_dir}", f"cache_dir={work / 'cache'}", "stages=[extract]",
            "stage_cache=false", f"extraction.max_chunks={n_chunks}"]
    p = runner(args, env)
    partial = run_dir / "extractions.partial.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None and not records(partial):
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 3.0))  # somewhere after the first answer
    t0 = time.perf_counter()
    p.send_signal(signal.SIGINT)
    log = p.communicate(timeout=120)[0]
    stop = time.perf_counter() - t0
    finished = {r["chunk_id"]: r for r in records(partial) if r.get("failure") != "transient"}
    done = runner(args, env)
    log2 = done.communicate(timeout=900)[0]
    if done.returncode != 0:
        raise SystemExit(f"rerun failed:\n{log2[-3000:]}")
    final = records(run_dir / "extractions.jsonl")
    ids = [r["chunk_id"] for r in final]
    wanted = [json.loads(l)["id"] for l in chunks.read_text().splitlines()[:n_chunks]]
    return {"exit_code": p.returncode, "stop_seconds": round(stop, 2),
            "finished_before_signal": len(finished),
            "lost": len(set(wanted) - set(ids)), "duplicates": len(ids) - len(set(ids)),
            "redone": sum(1 for r in final if r["chunk_id"] in finished and r != finished[r["chunk_id"]]),
            "traceback": "Traceback" in log}


def cache_race(work: Path, corpus: Path, env: dict) -> int:
    cache = work / "cache"
    procs = [runner([f"hydra.run.dir={work / f'r{i}'}", f"cache_dir={cache}", f"corpus.path={corpus}",
                     "stages=[convert]", "docling.workers=1"], env) for i in range(3)]
    for p in procs:
        p.communicate(timeout=900)
    expected = None
    lost = 0
    for i in range(3):
        manifest = work / f"r{i}" / "documents" / "manifest.json"
        docs = {m["source"] for m in json.loads(manifest.read_text())
                if m["status"] == "success"} if manifest.is_file() else set()
        expected = expected or docs
        lost += len(expected ^ docs)
    return lost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        tmp = Path(tmp)
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        prep = tmp / "prep"
        p = runner([f"hydra.run.dir={prep}", f"cache_dir={tmp / 'cache'}", "stages=[convert,process]"], env)
        if p.wait(timeout=900) != 0:
            raise SystemExit(p.stdout.read()[-3000:])
        from components.documents.sample_corpus import SAMPLE_VERSION
        corpus = tmp / "cache" / f"sample-corpus-{SAMPLE_VERSION}"

        rows = []
        for i in range(args.runs):
            rows.append(interrupted_extraction(tmp / f"x{i}", prep / "chunks.jsonl", args.chunks, env, rng))
            print(f"extraction {i}: {rows[-1]}", flush=True)
        lost_docs = []
        for i in range(args.runs):
            lost_docs.append(cache_race(tmp / f"race{i}", corpus, env))
            print(f"cache race {i}: lost documents {lost_docs[-1]}", flush=True)
    print(json.dumps({
        "runs": args.runs,
        "lost_records": sum(r["lost"] for r in rows),
        "duplicate_records": sum(r["duplicates"] for r in rows),
        "redone_records": sum(r["redone"] for r in rows),
        "lost_documents": sum(lost_docs),
        "max_stop_seconds": max(r["stop_seconds"] for r in rows),
        "exit_codes": sorted({r["exit_code"] for r in rows}),
        "tracebacks": sum(r["traceback"] for r in rows),
        "finished_before_signal": [r["finished_before_signal"] for r in rows],
    }))


if __name__ == "__main__":
    main()
