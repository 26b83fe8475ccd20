"""A LoRA training step and the multiple-choice scoring of the embedded SmolLM2-135M on the CPU,
with MLX's own exponential (the baseline) and with components/training/fastmath.py's, side by
side: the same model with adapters on every block, the same training batch (one data-parallel
process's share: 2 rows, answers of 12 tokens), the same 16 four-option acronym questions scored
by log-likelihood as the evaluate stage does, one thread (as each training process has), the two
variants alternating.

Last line: one JSON object (step_ratio and scoring_ratio: fastmath's seconds / the baseline's).
Usage: python benchmarks/fastmath.py [--rows 2] [--tokens 64] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.training.lora import import_mlx  # noqa: E402

mx = import_mlx()
import mlx.nn as nn  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
import numpy as np  # noqa: E402

from components.training import fastmath, objective, scoring  # noqa: E402

def _questions(n: int = 16):
    import random

    from components.mcq import MCQ
    from tests.fixtures.telecom_terms import TERMS

    rng = random.Random(0)
    out = []
    for i, (a, e) in enumerate(TERMS[:n]):
        options = rng.sample([x for _, x in TERMS if x != e], 3) + [e]
        rng.shuffle(options)
        out.append(MCQ(str(i), f"What does {a} stand for?", tuple(options), options.index(e) + 1))
    return out


QUESTIONS = _questions()
KEYS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def use(fast: bool) -> None:
    from mlx_lm.models import activations, base, llama

    llama.swiglu = fastmath.swiglu if fast else activations.swiglu
    llama.scaled_dot_product_attention = fastmath.attention if fast else base.scaled_dot_product_attention
    fastmath.on_cpu = (lambda: True) if fast else (lambda: False)


def variant(model_dir: Path, fast: bool, tokens, lengths):
    """A compiled training step and the scoring of QUESTIONS by a fresh model, for one variant."""
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    use(fast)
    model, tokenizer = load(str(model_dir))
    model.freeze()
    linear_to_lora_layers(model, -1, {"rank": 8, "scale": 2.0, "dropout": 0.0, "keys": KEYS})
    opt = optim.Adam(learning_rate=1e-5)
    loss_and_grad = nn.value_and_grad(model, objective.loss)
    state = [model.state, opt.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(*b):
        (value, toks), grads = loss_and_grad(model, *b)
        opt.update(model, grads)
        return value, toks

    head = objective.head(model)
    batch = next(objective.tighten(iter([(tokens, lengths)]), head))

    def train():
        use(fast)
        mx.eval(step(*batch), state)

    def score():
        use(fast)
        scoring.option_logprobs(model, tokenizer, QUESTIONS, "Telecom standards assistant.")

    return train, score


def timed(fn, repeats: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from components.training.gguf import embedded_gguf_path, ensure_mlx_model

    cache = Path(os.environ.get("FASTMATH_CACHE", ROOT / "outputs" / "cache" / "models"))
    model_dir = ensure_mlx_model(embedded_gguf_path(), cache, dtype="float32")
    rng = np.random.default_rng(0)
    tokens = mx.array(rng.integers(100, 40000, (args.rows, args.tokens + 1)).astype(np.int32))
    lengths = mx.array(np.array([[args.tokens - 12, args.tokens]] * args.rows, dtype=np.int32))
    runs = {fast: variant(model_dir, fast, tokens, lengths) for fast in (False, True)}
    seconds = {(fast, what): [] for fast in (False, True) for what in ("step", "scoring")}
    for fast in (False, True):  # warm-up: compile each shape once
        for fn in runs[fast]:
            fn()
    for _ in range(args.rounds):
        for fast in (False, True):
            train, score = runs[fast]
            seconds[fast, "step"].append(timed(train, args.repeats))
            seconds[fast, "scoring"].append(timed(score, args.repeats))
    best = {k: min(v) for k, v in seconds.items()}
    for what in ("step", "scoring"):
        print(f"{what:8s} baseline {best[False, what]:.3f} s   fastmath {best[True, what]:.3f} s   "
              f"ratio {best[True, what] / best[False, what]:.2f}")
    print(json.dumps({"benchmark": "fastmath", "rows": args.rows, "tokens": args.tokens,
                      "step_s": {"baseline": round(best[False, "step"], 4), "fastmath": round(best[True, "step"], 4)},
                      "scoring_s": {"baseline": round(best[False, "scoring"], 4), "fastmath": round(best[True, "scoring"], 4)},
                      "step_ratio": round(best[True, "step"] / best[False, "step"], 3),
                      "scoring_ratio": round(best[True, "scoring"] / best[False, "scoring"], 3)}))


if __name__ == "__main__":
    main()
