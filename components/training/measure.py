"""Everything the evaluate stage measures on one model (the base, or the base with adapters):
the probe sets scored by log-likelihood, test loss and perplexity, a few generated answers and
the generated multiple-choice replies.

Why a module of its own: on a CPU the base and the tuned model are measured at the same time in
two processes of one thread each (``measure_both``), as training runs, since MLX spends much of
a forward pass in single-threaded work between BLAS calls. Run as ``python -m
components.training.measure SPEC OUT`` a process measures the model ``SPEC`` (a JSON file)
names, prints ``advance N`` lines as it goes, writes its result to ``OUT`` and stops early when
a line ``stop`` arrives on stdin (or stdin closes).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from components.files import file_sha256, json_sha256, stat_listing
from components.training import child
from components.versions import installed


class Stopped(Exception):
    """A stop was asked for before the measurement finished."""


class MeasureError(RuntimeError):
    """A measuring process failed; the message carries the end of its error output."""


def measure(spec: dict, advance: Callable[[int], None] = lambda n: None,
            cancel: threading.Event | None = None) -> dict:
    """The measurements of one model, as JSON-able values (``sets``: scored rows per set;
    ``test_loss``/``test_ppl`` when there is a test split; ``samples`` and ``generative``: the
    generated texts)."""
    from components.training import lora, scoring

    cancel = cancel or threading.Event()

    def check() -> None:
        if cancel.is_set():
            raise Stopped

    def step(n: int) -> None:
        check()
        advance(n)

    mx = lora.import_mlx()
    model, tok = lora.load(spec["model_dir"])
    if spec["dtype"] != "float32":
        model.set_dtype(getattr(mx, spec["dtype"]))
    if spec.get("adapters"):
        from mlx_lm.tuner.utils import load_adapters

        load_adapters(model, spec["adapters"])
    model.eval()
    mx.random.seed(spec["seed"])
    system = spec["system"]
    out: dict = {"sets": {}}
    for name, qs in spec["sets"].items():
        check()
        out["sets"][name] = scoring.score(model, tok, [_question(q) for q in qs], system, on_question=step)
    ds = lora.dataset(Path(spec["test_path"]), tok, spec["mask_prompt"])
    if len(ds):
        out["test_loss"] = lora.loss(model, ds, spec["batch_size"], spec["max_seq_length"])
        out["test_ppl"] = lora.perplexity(out["test_loss"])
    for key, prompts, max_tokens in (("samples", spec["samples"], spec["max_tokens"]),
                                     ("generative", [_question(q).messages() for q in spec["generative"]],
                                      spec["mcq_max_tokens"])):
        check()
        out[key] = lora.generate_answers(model, tok, prompts, max_tokens)
        advance(len(prompts))
    return out


def stored(spec: dict, cache_dir: Path, code: dict[str, str]) -> Path:
    """Where the measurements ``spec`` asks for are kept: a name made of everything they depend
    on (the spec, the test split's content, the model's files, ``code``: the hashes of the
    modules that measure, and MLX's version), so that a sweep's jobs measure the base model once
    and any change measures it again."""
    model = Path(spec["model_dir"])
    test = Path(spec["test_path"])
    key = json_sha256({
        "spec": {k: v for k, v in spec.items() if k not in ("name", "test_path")},
        "test": file_sha256(test) if test.is_file() else None,
        "model": [(str(f.relative_to(model)), size, mtime_ns)
                  for f, size, mtime_ns in (stat_listing(model) if model.is_dir() else [])],
        "code": code,
        "libraries": [installed(d) for d in ("mlx", "mlx-lm")],
    })[:24]
    return cache_dir / "measured" / f"{key}.json"


def spec_questions(questions) -> list[dict]:
    """MCQs as a spec holds them."""
    return [{**asdict(q), "options": list(q.options)} for q in questions]


def _question(q: dict):
    from components.mcq import MCQ

    return MCQ(**{**q, "options": tuple(q["options"])})


def measure_both(specs: list[dict], advance: Callable[[int], None], cancel: threading.Event,
                 threads: int = 1) -> list[dict]:
    """``measure`` of each spec, each in its own process of ``threads`` threads, all at once.
    Raises ``Stopped`` when ``cancel`` is set first (the processes are told to stop, then ended)
    and ``MeasureError`` when one fails."""
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="measure-") as tmp:
        procs, outs, errs = [], [], []
        for i, spec in enumerate(specs):
            path, out = Path(tmp) / f"spec{i}.json", Path(tmp) / f"out{i}.json"
            path.write_text(json.dumps(spec))
            err = open(Path(tmp) / f"err{i}.txt", "w+")
            procs.append(child.start("components.training.measure", [str(path), str(out)], threads, stderr=err))
            outs.append(out)
            errs.append(err)

        def follow(p: subprocess.Popen) -> None:
            for line in p.stdout:
                if line.startswith("advance "):
                    with lock:
                        advance(int(line.split()[1]))

        readers = [threading.Thread(target=follow, args=(p,), daemon=True) for p in procs]
        for r in readers:
            r.start()
        try:
            while any(p.poll() is None for p in procs):
                if cancel.wait(0.2):
                    child.ask_to_stop(procs)
                    for p in procs:
                        try:
                            p.wait(timeout=10)
                        except subprocess.TimeoutExpired:
                            p.kill()
                    raise Stopped
                if any(p.poll() not in (None, 0) for p in procs):
                    break  # one failed: the other's work is of no use
            for r in readers:
                r.join(timeout=5)
            for i, p in enumerate(procs):
                if p.poll() is not None and (p.returncode != 0 or not outs[i].is_file()):
                    errs[i].seek(0)
                    tail = errs[i].read()[-3000:].strip()
                    raise MeasureError(f"the process measuring {specs[i]['name']} exited with {p.returncode}: {tail}")
            return [json.loads(o.read_text()) for o in outs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for e in errs:
                e.close()


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out_path = Path(sys.argv[2])
    channel = child.channel()
    cancel = threading.Event()
    child.stop_on_stdin(cancel)

    def advance(n: int) -> None:
        channel.write(f"advance {n}\n")
        channel.flush()

    try:
        result = measure(spec, advance, cancel)
    except Stopped:
        return 3
    from components.files import write_json

    write_json(out_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
