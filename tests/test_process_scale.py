"""The Rust engine at a scale where its parallel steps split into many buckets: the same output
for any thread count, and the scaling benchmark's report."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from components.processing import rust, write_config
from tests.fixtures.synthetic import generate
from tests.test_process import binary, cfg_for  # noqa: F401 (fixture)
from tests.test_process_differential import DETERMINISTIC, with_clusters


@pytest.mark.slow
def test_many_buckets_same_output_for_any_thread_count(tmp_path, binary):
    # ~12k chunks: more than one bucket in every grouping step (exact, pairs, clusters).
    generate(tmp_path / "documents", 12_000_000, seed=3)
    results, outputs = [], []
    for threads in (1, 2, 4):
        cfg = cfg_for(tmp_path, threads=threads).model_copy(
            update={"output_path": str(tmp_path / f"chunks_{threads}.jsonl")})
        results.append(with_clusters(rust.run(write_config(cfg, tmp_path / f"p{threads}.yaml"), 300), cfg))
        outputs.append(Path(cfg.output_path).read_bytes())
    assert results[0]["chunks_total"] > 10_000
    assert results[0]["exact_duplicates"] > 1000 and results[0]["near_duplicates"] > 100
    assert outputs[0] and outputs[0] == outputs[1] == outputs[2]
    for r in results[1:]:
        assert {k: r[k] for k in DETERMINISTIC} == {k: results[0][k] for k in DETERMINISTIC}
    for r in results:
        t = r["timings"]
        assert 0 <= t["serial"] <= t["total"] and t["total"] > 0


@pytest.mark.slow
def test_scaling_benchmark_reports_efficiency_and_cost_growth(tmp_path, binary):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "process.py"), "--threads", "1,2",
                          "--mb", "1,3", "--repeats", "1", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["identical_output_across_threads"] is True
    assert report["max_threads"] == 2 and set(report["mb_s"]) == {"1", "3"}
    assert all(v > 0 for row in report["mb_s"].values() for v in row.values())
    mb_s = report["mb_s"]["3"]
    assert report["efficiency_max_threads"] == pytest.approx(mb_s["2"] / (2 * mb_s["1"]), rel=0.03)
    assert report["cost_growth"] == pytest.approx(report["mb_s"]["1"]["1"] / mb_s["1"], rel=0.03)
    assert 0 < report["serial_share_1_thread"] < 1
    assert any("MB/s" in line and "2 threads" in line for line in lines)
