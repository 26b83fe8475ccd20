"""What our LLM client costs over a bare HTTP loop, and what it gains.

Sends the same N extraction requests to the real embedded llama.cpp server through our chain
(retries, breakers, cache off, audit on) and through a bare httpx loop, side by side: request by
request, the order alternating, after a warm-up pass so llama.cpp's prompt cache favours neither.
Then throughput at concurrency 1, 2 and 4, and a rerun served from the response cache. Last line: one JSON object
with ``overhead_ratio`` (ours / bare wall time; goal at most 1.05), ``rps_c1``, ``rps_c2``,
``rps_c4`` and ``cache_hit_speedup``. On a loaded machine generation time varies more than the
client costs, so it also prints the client's own cost per request (wall time less the compute time
llama.cpp reports) and ``overhead_ratio_server_time_matched``, the ratio with that noise removed.

    python benchmarks/extract_client.py [--n 8] [--max-tokens 48] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from components.llm.audit import Audit  # noqa: E402
from components.llm.cache import ResponseCache  # noqa: E402
from components.llm.resilience import Resilience  # noqa: E402
from components.llm.services import EmbeddedLlamaService, OpenAICompatibleService  # noqa: E402
from components.llm.resilience import chain  # noqa: E402

TOPICS = ["RRC (Radio Resource Control)", "PDCP (Packet Data Convergence Protocol)",
          "AMF (Access and Mobility Management Function)", "SMF (Session Management Function)",
          "UPF (User Plane Function)", "NGAP (NG Application Protocol)", "SDAP (Service Data Adaptation Protocol)",
          "HARQ (Hybrid Automatic Repeat Request)"]


def requests(n: int) -> list[list[dict]]:
    return [[{"role": "system", "content": "Extract acronyms and spec references as JSON."},
             {"role": "user", "content": f"Chunk {i}: The {TOPICS[i % len(TOPICS)]} is specified in "
                                         f"TS 38.{300 + i}. It is used in procedure {i}."}] for i in range(n)]


def bare_one(http: httpx.Client, model: str, m, schema, max_tokens: int) -> tuple[float, float]:
    """(wall seconds, seconds the server says it computed)."""
    t0 = time.perf_counter()
    r = http.post("/chat/completions", json={
        "model": model, "messages": m, "max_tokens": max_tokens, "temperature": 0.0,
        "stream": False, "response_format": {"type": "json_schema", "json_schema": {
            "name": "extraction", "schema": schema, "strict": True}}})
    r.raise_for_status()
    data = r.json()
    data["choices"][0]["message"]["content"]
    wall = time.perf_counter() - t0
    return wall, (data["timings"]["prompt_ms"] + data["timings"]["predicted_ms"]) / 1000


def paired(url: str, model: str, chain, reqs, schema, max_tokens: int, rounds: int) -> dict:
    """Each request through both clients back to back, the order alternating, so that load from
    other processes on the machine falls on both alike. Totals of wall time and of wall time less
    the server's own compute time (what the client and HTTP cost)."""
    t = {"bare": 0.0, "ours": 0.0, "bare_client": 0.0, "ours_client": 0.0}
    with httpx.Client(base_url=url, timeout=120) as http:
        for k in range(rounds):
            for i, m in enumerate(reqs):
                def one(which):
                    if which == "bare":
                        wall, server = bare_one(http, model, m, schema, max_tokens)
                    else:
                        t0 = time.perf_counter()
                        r = chain.chat_json(m, schema, max_tokens, chunk_id=f"c{i}")
                        wall, server = time.perf_counter() - t0, r.server_seconds
                    t[which] += wall
                    t[f"{which}_client"] += wall - server
                for which in (("ours", "bare") if (i + k) % 2 else ("bare", "ours")):
                    one(which)
    return t


def ours(chain, reqs, schema, max_tokens: int, workers: int = 1) -> float:
    t0 = time.perf_counter()
    if workers == 1:
        for i, m in enumerate(reqs):
            chain.chat_json(m, schema, max_tokens, chunk_id=f"c{i}")
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda im: chain.chat_json(im[1], schema, max_tokens, chunk_id=f"c{im[0]}"),
                          enumerate(reqs)))
    return time.perf_counter() - t0


def client(url: str, model: str, tmp: Path, cache: bool, concurrency: int = 4):
    res = Resilience(length_retry_max_tokens=0)  # same work as the bare loop: no second ask
    svc = OpenAICompatibleService(base_url=url, model=model, name="embedded", audit=Audit(),
                                  resilience=res, max_concurrency=concurrency,
                                  cache=ResponseCache(enabled=cache, dir=str(tmp / "cache")))
    return chain(svc).bind(tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    # One llama.cpp thread: on a shared small machine, threads that spin-wait for each other stall
    # for seconds whenever another process takes a core, which swamps what is measured here.
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    # A small answer, so that each reply completes within max_tokens (a cut one is not cached)
    # and the client's share of the time is not drowned in generation on a small machine.
    schema = {"type": "object", "properties": {"acronym": {"type": "string", "maxLength": 8},
                                               "expansion": {"type": "string", "maxLength": 48}},
              "required": ["acronym", "expansion"]}
    reqs = requests(args.n)
    server = EmbeddedLlamaService(n_ctx=4096, n_parallel=4, threads=args.threads)
    server.start()
    url, model = f"{server.base_url}/v1", server.model
    tmp = Path(tempfile.mkdtemp(prefix="bench-client-"))
    try:
        chain = client(url, model, tmp, cache=False)
        with httpx.Client(base_url=url, timeout=120) as http:  # warm-up: prompt cache, page cache
            for m in reqs:
                bare_one(http, model, m, schema, args.max_tokens)
        t = paired(url, model, chain, reqs, schema, args.max_tokens, args.rounds)
        b, o, calls = t["bare"], t["ours"], args.n * args.rounds
        print(f"{'':24}{'bare httpx':>12}{'our client':>12}{'ratio':>8}")
        print(f"{f'{args.n}x{args.rounds} paired, c=1 (s)':24}{b:>12.2f}{o:>12.2f}{o / b:>8.3f}")
        print(f"{'client+HTTP ms/request':24}{1000 * t['bare_client'] / calls:>12.2f}"
              f"{1000 * t['ours_client'] / calls:>12.2f}")
        rps = {}
        for c in (1, 2, 4):
            rps[c] = args.n / ours(chain, reqs, schema, args.max_tokens, workers=c)
            print(f"{f'our client c={c} (req/s)':24}{'':>12}{rps[c]:>12.2f}")
        chain.close()
        cached = client(url, model, tmp, cache=True)
        miss = ours(cached, reqs, schema, args.max_tokens)
        hit = ours(cached, reqs, schema, args.max_tokens)
        hits = cached.metrics().get("service/cache_hits", 0)
        cached.close()
        print(f"{'cache miss / hit (s)':24}{miss:>12.3f}{hit:>12.4f}{miss / hit:>8.0f}x  ({hits:.0f} hits)")
        audit_rows = sum(1 for _ in open(tmp / "audit.jsonl"))
    finally:
        server.close()
    print(json.dumps({"n": args.n, "max_tokens": args.max_tokens, "bare_s": round(b, 3), "ours_s": round(o, 3),
                      "overhead_ratio": round(o / b, 4),
                      "client_ms_bare": round(1000 * t["bare_client"] / calls, 2),
                      "client_ms_ours": round(1000 * t["ours_client"] / calls, 2),
                      # the wall ratio with generation-time noise removed: same server time for both
                      "overhead_ratio_server_time_matched": round(
                          (b + t["ours_client"] - t["bare_client"]) / b, 4), "rps_c1": round(rps[1], 3), "rps_c2": round(rps[2], 3),
                      "rps_c4": round(rps[4], 3), "cache_hit_speedup": round(miss / hit, 1),
                      "cache_hits": int(hits), "audit_rows": audit_rows}))


if __name__ == "__main__":
    main()
