"""LoRA training through our finetune stage vs the bare ``mlx_lm lora`` command line: same model
(the embedded SmolLM2-135M), same data, same iterations, batch, layers, rank, sequence length and
validation schedule, each in its own process, side by side.

The bare CLI on Linux loads mlx's bundled reference BLAS (see benchmarks/blas.py); it runs here with
the same OpenBLAS preloaded (LD_PRELOAD) and the same kernels (OPENBLAS_CORETYPE), so the ratio
measures our stage, not the BLAS: its validations, and the training objective of
components/training/objective.py (mlx-lm's loss on fewer positions).
Ours runs twice: in one process and in two (``lora.workers=2``, components/training/parallel.py:
the batch split, gradients averaged over MLX's ring backend on loopback), both with the machine's
threads. Peak RSS is the largest single process's.
Last line: one JSON object (ratio_vs_bare: our one-process wall time / bare wall time, goal
<= 1.05; ratio_two_vs_one_process: two processes' wall time / one's).
Usage: python benchmarks/finetune.py [--iters 30]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.telecom_terms import TERMS  # noqa: E402
ASK = ["In 3GPP terminology, what does {a} stand for?", "Expand the abbreviation {a}.",
       "What is the full name of {a} in NR?", "Define the acronym {a} as used in 5G specifications."]
SYSTEM = "You are a telecom standards assistant. Answer precisely and concisely."

_OURS = """
import json, sys, threading
from pathlib import Path
from hydra import compose, initialize_config_dir
from components.tracking import NullTracker
from runner import pipeline
from runner.config import resolve_hardware
from runner.stages import finetune
with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    cfg = compose(config_name="config", overrides=json.loads(sys.argv[3]))
resolve_hardware(cfg)
m = finetune.run(pipeline.context("finetune", Path(sys.argv[2]), cfg, NullTracker()))
print("METRICS " + json.dumps(m))
"""


def write_data(d: Path) -> None:
    from components.files import write_jsonl

    rows = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q.format(a=a)},
                          {"role": "assistant", "content": f"{a} stands for {e}."}]}
            for q in ASK for a, e in TERMS]
    d.mkdir(parents=True, exist_ok=True)
    write_jsonl(d / "train.jsonl", rows[:48])
    write_jsonl(d / "valid.jsonl", rows[48:60])
    write_jsonl(d / "test.jsonl", rows[60:])


# A wrapper whose only child is the command, so its children's peak RSS is that command's.
_WRAP = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
         "print('RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (GB) and output of one child process."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _WRAP, *cmd], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode:
        sys.exit(f"{cmd[:4]} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    rss_kb = int(next(l for l in out.stdout.splitlines() if l.startswith("RSS_KB")).split()[1])
    return seconds, rss_kb * 1024 / 1e9, out.stdout + out.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=30)
    args = parser.parse_args()

    from components.training.blas import OPENBLAS_LIBS, cpu_flags, kernel_for
    from components.training.gguf import embedded_gguf_path, ensure_mlx_model

    model_dir = ensure_mlx_model(embedded_gguf_path(), ROOT / "outputs" / "cache" / "models")
    work = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    common = dict(batch=4, layers=8, rank=8, seq=512, report=5, eval=15)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", COLUMNS="120")

    overrides = ["hardware=linux-cpu", f"cache_dir={ROOT / 'outputs' / 'cache'}", f"tracking.root={ROOT}",
                 "lora.epochs=null", f"lora.iters={args.iters}", f"lora.batch_size={common['batch']}",
                 f"lora.num_layers={common['layers']}", f"lora.rank={common['rank']}",
                 f"lora.max_seq_length={common['seq']}", f"lora.steps_per_report={common['report']}",
                 f"lora.steps_per_eval={common['eval']}", "lora.steps_per_save=1000000"]
    def ours(workers: int) -> tuple[float, float, dict]:
        run = work / f"run{workers}"
        if not run.exists():
            write_data(run / "dataset")
        seconds, rss, out = timed([sys.executable, "-c", _OURS, str(ROOT / "conf"), str(run),
                                   json.dumps([*overrides, f"lora.workers={workers}"])], env)
        return seconds, rss, json.loads(next(l for l in out.splitlines() if l.startswith("METRICS "))[8:])

    ours_s, ours_rss, metrics = ours(1)
    two_s, two_rss, two_metrics = ours(2)

    # The same OpenBLAS kernels and thread wait as ours (use_fast_blas sets both).
    kernel = os.environ.get("OPENBLAS_CORETYPE") or kernel_for(cpu_flags())
    bare_env = dict(env, LD_PRELOAD=":".join(OPENBLAS_LIBS), **({"OPENBLAS_CORETYPE": kernel} if kernel else {}),
                    OPENBLAS_THREAD_TIMEOUT=os.environ.get("OPENBLAS_THREAD_TIMEOUT", "10"))
    bare_s, bare_rss, bout = timed([sys.executable, "-m", "mlx_lm", "lora", "--model", str(model_dir), "--train",
                                    "--data", str(work / "run1" / "dataset"), "--iters", str(args.iters),
                                    "--batch-size", str(common["batch"]), "--num-layers", str(common["layers"]),
                                    "--max-seq-length", str(common["seq"]), "--steps-per-report",
                                    str(common["report"]), "--steps-per-eval", str(common["eval"]),
                                    "--val-batches", "-1", "--mask-prompt", "--learning-rate", "5e-4",
                                    "--adapter-path", str(work / "bare-adapters")], bare_env)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", bout)
    # TrainUI report rows: "  iter   train_loss ▼   tok/s   tokens"
    rows = [r.split() for r in plain.splitlines() if re.match(r"\s+\d+\s+\d+\.\d+\s+\S\s+[\d.]+\s+[\d.]+k?\s*$", r)]
    bare_tps = sum(float(r[3]) for r in rows) / len(rows) if rows else float("nan")
    ours_tps = metrics.get("finetune/tokens_per_second_final", float("nan"))

    two_tps = two_metrics.get("finetune/tokens_per_second_final", float("nan"))
    print(f"{'':>22} {'ours':>10} {'ours, 2 proc':>12} {'bare CLI':>10}")
    print(f"{'wall seconds':>22} {ours_s:>10.1f} {two_s:>12.1f} {bare_s:>10.1f}")
    print(f"{'tokens/s (last report)':>22} {ours_tps:>10.1f} {two_tps:>12.1f} {bare_tps:>10.1f}")
    print(f"{'peak RSS GB':>22} {ours_rss:>10.2f} {two_rss:>12.2f} {bare_rss:>10.2f}")
    print(f"preflight estimate {metrics['finetune/estimate_peak_gb']:.2f} GB vs mlx peak "
          f"{metrics['finetune/measured_peak_gb']:.2f} GB")
    print(json.dumps({
        "iters": args.iters, "ratio_vs_bare": round(ours_s / bare_s, 3),
        "ratio_two_vs_one_process": round(two_s / ours_s, 3), "seconds_two_processes": round(two_s, 1),
        "tokens_per_s_two_processes": round(two_tps, 1),
        "seconds_ours": round(ours_s, 1), "seconds_bare": round(bare_s, 1),
        "tokens_per_s_ours": round(ours_tps, 1), "tokens_per_s_bare": round(bare_tps, 1),
        "peak_mem_gb_ours": round(ours_rss, 2), "peak_mem_gb_bare": round(bare_rss, 2),
        "mlx_peak_gb_ours": metrics["finetune/measured_peak_gb"],
        "estimate_gb": metrics["finetune/estimate_peak_gb"],
        "estimate_error": metrics["finetune/estimate_error"],
    }))


if __name__ == "__main__":
    main()
