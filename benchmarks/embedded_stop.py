"""How long a stop waits for the embedded llama.cpp server, and what a smaller decode batch
costs in throughput: ``service.batch_tokens=256`` (``--batch`` picks another) against ``null``,
the default (llama.cpp's own n_batch 2048 and n_ubatch 512), side by side on the same machine,
in alternating order.

llama.cpp's teardown waits for the decode call in progress, and a prompt is decoded up to
n_batch tokens per call; so on a slow CPU a stop (Ctrl-C, a sweep's cancel) during extraction
waited for up to 2,048 prompt tokens.

Per setting:
- stop_s: from the stop request to the extract stage's return (1 s of grace for the requests
  in flight, the cut, then the server's teardown). The stop comes as the k-th chunk's record is
  written, for each k in --stops: the moment new prompts start, as when a stop lands in the
  prompt part of a request (most of a request's time on a CPU);
- teardown_s: the server's close alone, within that;
- chunks_per_min: the extract stage (extractor=llm) on the hand-labelled fixture chunks.
The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from extraction import compose, labelled_run, run_mode


def stop_once(batch: str, after: int, tmp: Path) -> dict:
    from components.tracking import NullTracker
    from runner import pipeline
    from runner.stage import Interrupted, Resources
    from runner.stages import extract

    run = labelled_run(tmp / f"stop-{batch}-{after}")
    cfg = compose(["extraction.extractor=llm", "extraction.max_tokens=512", "extraction.verify=false",
                   f"cache_dir={run / 'cache'}", f"service.batch_tokens={batch}"])
    ctx = pipeline.context("extract", run, cfg, NullTracker(), Resources())
    times: dict[str, float] = {}
    release = extract._release

    def timed_release(*args, **kwargs):
        times["release"] = time.monotonic()
        release(*args, **kwargs)
        times["closed"] = time.monotonic()

    def stop_later():
        partial = run / extract.PARTIAL
        while not ctx.cancel.is_set():
            if partial.is_file() and len(partial.read_text().splitlines()) >= after:
                times["stop"] = time.monotonic()
                ctx.cancel.set()
            time.sleep(0.02)

    extract._release = timed_release
    threading.Thread(target=stop_later, daemon=True).start()
    try:
        extract.run(ctx)
    except Interrupted:
        pass
    finally:
        extract._release = release
    end = time.monotonic()
    if "stop" not in times:
        ctx.cancel.set()
        return {}  # the run ended before the stop
    return {"stop_s": round(end - times["stop"], 2), "teardown_s": round(times["closed"] - times["release"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stops", type=int, nargs="+", default=[1, 2, 3],
                    help="stop as the k-th record is written, for each k")
    ap.add_argument("--rounds", type=int, default=3, help="throughput runs per setting")
    ap.add_argument("--batch", default="256", help="batch_tokens to compare with null")
    args = ap.parse_args()
    batch = args.batch
    settings = [batch, "null"]
    stops: dict[str, list[dict]] = {s: [] for s in settings}
    speed: dict[str, list[float]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for i, after in enumerate(args.stops):
            for s in (settings if i % 2 == 0 else settings[::-1]):
                got = stop_once(s, after, Path(tmp))
                print(f"batch_tokens={s} stop after record {after}: {got}", file=sys.stderr)
                if got:
                    stops[s].append(got)
        for r in range(args.rounds):
            for s in (settings if r % 2 == 0 else settings[::-1]):
                base = Path(tmp) / f"speed-{s}-{r}"
                base.mkdir()
                out = run_mode("llm", ["extraction.max_tokens=512", f"service.batch_tokens={s}"], base)
                speed[s].append(out["chunks_per_min"])

    def summary(s: str) -> dict:
        st, td = [x["stop_s"] for x in stops[s]], [x["teardown_s"] for x in stops[s]]
        return {"stop_s": st, "stop_s_max": max(st, default=None), "teardown_s_max": max(td, default=None),
                "chunks_per_min": round(statistics.median(speed[s]), 2) if speed[s] else None}

    new, old = summary(batch), summary("null")
    print(json.dumps({
        f"batch_tokens_{batch}": new, "llama_cpp_default": old,
        "stop_s_max_ratio": round(new["stop_s_max"] / old["stop_s_max"], 2)
        if new["stop_s_max"] and old["stop_s_max"] else None,
        "throughput_ratio": round(new["chunks_per_min"] / old["chunks_per_min"], 2)
        if new["chunks_per_min"] and old["chunks_per_min"] else None,
    }))


if __name__ == "__main__":
    main()
