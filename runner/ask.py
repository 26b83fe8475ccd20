"""Ask the base and the tuned model of a run the same question, side by side.

    python -m runner.ask "What does MCCH stand for?"                 # the latest finished run
    python -m runner.ask "What does MCCH stand for?" hydra.run.dir=outputs/runs/2026-12-04/10-42-07
    python -m runner.ask --max-tokens 96 "Which clause covers radio link failure?"

The question is asked in the system prompt the adapters were trained with (the run's
``dataset.system_prompt``), greedily, as the evaluation's generated answers are.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNS = REPO / "outputs" / "runs"


class AskError(Exception):
    pass


def latest_run(root: Path = RUNS) -> Path:
    """The newest run directory holding finished adapters."""
    done = sorted((p.parent.parent for p in root.glob("*/*/adapters/adapters.safetensors")),
                  key=lambda d: d.stat().st_mtime)
    if not done:
        raise AskError(f"no run with adapters under {root}: run the pipeline first "
                       "(python -m runner), or name one with hydra.run.dir=DIR")
    return done[-1]


def run_setup(run_dir: Path) -> tuple[Path, Path, str | None]:
    """(base model directory, adapter directory, system prompt) of a run."""
    adapters = run_dir / "adapters"
    cfg_path = adapters / "adapter_config.json"
    if not cfg_path.is_file():
        raise AskError(f"{run_dir}: no finished adapters ({cfg_path} is missing); run the "
                       "finetune stage there first")
    model_dir = Path(json.loads(cfg_path.read_text(encoding="utf-8"))["model"])
    if not (model_dir / "config.json").is_file():
        raise AskError(f"{cfg_path}: its base model {model_dir} is gone; re-run the finetune stage")
    system = None
    resolved = run_dir / "config.resolved.yaml"
    if resolved.is_file():
        import yaml

        system = ((yaml.safe_load(resolved.read_text(encoding="utf-8")) or {}).get("dataset") or {}).get("system_prompt")
    return model_dir, adapters, system


def answers(question: str, model_dir: Path, adapters: Path, system: str | None, max_tokens: int) -> dict[str, str]:
    from components.training import lora

    lora.import_mlx()  # before any other mlx import: the fast BLAS must load first
    from mlx_lm.tuner.utils import load_adapters

    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    model, tok = lora.load(model_dir)
    out = {"base": lora.generate_answers(model, tok, [msgs], max_tokens)[0]}
    load_adapters(model, str(adapters))
    model.eval()
    out["tuned"] = lora.generate_answers(model, tok, [msgs], max_tokens)[0]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runner.ask", description=__doc__.split("\n\n")[0])
    ap.add_argument("question")
    ap.add_argument("overrides", nargs="*", help="hydra.run.dir=DIR: the run to ask (default: the latest)")
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args(argv)
    run_dir = None
    for o in args.overrides:
        key, _, value = o.partition("=")
        if key != "hydra.run.dir" or not value:
            ap.error(f"unknown override {o!r}; only hydra.run.dir=DIR is taken")
        run_dir = Path(value).expanduser().resolve()
    try:
        run_dir = run_dir or latest_run()
        model_dir, adapters, system = run_setup(run_dir)
        got = answers(args.question, model_dir, adapters, system, args.max_tokens)
    except AskError as exc:
        print(f"ask: {exc}", file=sys.stderr)
        return 2
    print(f"Run: {run_dir}\nQuestion: {args.question}\n")
    for name in ("base", "tuned"):
        print(f"{name}:")
        print(textwrap.indent(textwrap.fill(got[name].strip() or "(no answer)", 96), "  "))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
