"""mlx-lm LoRA training, through mlx-lm's Python API.

Kept to what mlx-lm does not already do: choosing the fast BLAS before mlx loads, tokenising our
split files ahead of the loop, fitting batch and rank to the memory available
(``preflight``), and an adapter directory that records what made it (``provenance``) and is
published atomically. Around mlx-lm's steps (``loop.TrainingLoop``): step-aligned reports,
validation that picks the weights kept (``selection``), checkpoints a rerun resumes from with the
optimizer's step count (``checkpoint``), and a stop on request between steps. The loss is
``objective``'s.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, field_validator

from components.files import build_dir, hash_path, json_sha256, read_jsonl, write_json
from components.settings import Settings
from components.training import objective, preflight
from components.training.checkpoint import Checkpoint
from components.training.selection import Selection

log = logging.getLogger(__name__)


class LoraConfig(Settings):
    """``lora`` group: mlx-lm LoRA hyperparameters. Defaults for rank, batch, accumulation and
    dtype come from the hardware profile (``${hw.*}`` in conf/lora)."""

    rank: int = Field(8, ge=1)
    alpha: float | None = Field(None, gt=0)  # scale = alpha / rank; null: alpha = 2 x rank
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = None  # keys inside a block; null: every linear layer
    num_layers: int = Field(8, ge=-1)  # LoRA on the last N blocks; -1: all
    iters: int = Field(30, ge=1)
    epochs: float | None = Field(None, gt=0)  # set: overrides iters (passes over train.jsonl)
    max_iters: int | None = Field(None, ge=1)  # a ceiling on the iterations epochs ask for
    batch_size: int = Field(4, ge=1)
    workers: int = Field(1, ge=1)  # data-parallel processes on this machine (``parallel``)
    grad_accumulation_steps: int = Field(1, ge=1)
    grad_checkpoint: bool = False
    learning_rate: float = Field(5e-4, gt=0)
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = Field(0, ge=0)  # optimizer updates of linear warm-up from 0
    warmup_fraction: float = Field(0.0, ge=0, lt=1)  # of the updates, when warmup_steps is 0
    min_learning_rate: float = Field(0.0, ge=0)  # where cosine and linear decay end
    max_grad_norm: float | None = Field(None, gt=0)  # clip the global gradient norm; null: no clipping
    max_seq_length: int = Field(512, ge=16)
    steps_per_report: int = Field(5, ge=1)
    steps_per_eval: int | None = Field(15, ge=1)  # validation on the first report step at or
    # after; null: four validations over the run
    select_best: bool = True  # keep the checkpoint with the best validation probe score
    val_probes: int = Field(64, ge=1)  # validation probes asked at each validation (a seeded subset)
    early_stopping_patience: int | None = Field(None, ge=1)  # validations without a better score
    steps_per_save: int = Field(10, ge=1)  # checkpoint a rerun resumes from
    val_batches: int = Field(-1, ge=-1)  # the shortest val_batches x batch_size of valid; -1: all
    mask_prompt: bool = True
    seed: int = 0
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # weights and compute
    preflight: bool = True  # fit batch, then rank, to the memory available
    memory_fraction: float = Field(0.85, gt=0, le=1)  # of the available memory a run may plan for

    @field_validator("num_layers")
    @classmethod
    def _layers(cls, v: int) -> int:
        if v == 0:
            raise ValueError("must be -1 (all) or at least 1")
        return v

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else 2.0 * self.rank) / self.rank


class TrainingStopped(BaseException):
    """Training stopped on request; the last checkpoint is kept for a rerun to resume from."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        self.step, self.checkpoint = step, checkpoint
        where = f"checkpoint at step {step} kept in {checkpoint}" if checkpoint else "no checkpoint yet"
        super().__init__(f"training stopped at step {step}; {where}; a rerun resumes from it")


def import_mlx():
    """Import mlx after pointing it at OpenBLAS (Linux), and pin it to the CPU there."""
    from components.training.blas import use_fast_blas

    use_fast_blas()
    import mlx.core as mx

    if not mx.metal.is_available():
        mx.set_default_device(mx.cpu)
    return mx


def load(model_dir: str | os.PathLike, adapter_dir: str | os.PathLike | None = None, lazy: bool = False):
    import_mlx()
    from mlx_lm import load as mlx_load

    from components.training import fastmath

    model, tokenizer = mlx_load(str(model_dir), adapter_path=str(adapter_dir) if adapter_dir else None, lazy=lazy)
    fastmath.install(model)
    return model, tokenizer


def _cache_dataset_class():
    from mlx_lm.tuner.datasets import CacheDataset

    class TokenizedDataset(CacheDataset):
        """Tokenised once, ahead of the training loop; ``itemlen`` is the token count (mlx-lm's
        counts the keys of the raw row), so batches group examples of similar length."""

        def __init__(self, data) -> None:
            super().__init__(data)
            self._lengths = [len(self[i][0]) for i in range(len(data))]

        def itemlen(self, idx: int) -> int:
            return self._lengths[idx]

        @property
        def longest(self) -> int:
            return max(self._lengths, default=0)

        @property
        def tokens(self) -> int:
            return sum(self._lengths)

    return TokenizedDataset


def dataset(path: Path, tokenizer, mask_prompt: bool):
    from types import SimpleNamespace

    from mlx_lm.tuner.datasets import create_dataset

    rows = read_jsonl(path)
    # dataset.format picks mlx-lm's chat, completions or text rows; mlx-lm tells them apart.
    return _cache_dataset_class()(create_dataset(rows, tokenizer, SimpleNamespace(mask_prompt=mask_prompt)))


def loss(model, data, batch_size: int, max_seq_length: int, num_batches: int = -1) -> float:
    return objective.mean_loss(model, data, max(1, min(batch_size, len(data))), max_seq_length, num_batches)


def perplexity(loss_value: float) -> float:
    return math.exp(loss_value) if loss_value < 50 else float("inf")


# --- provenance ---------------------------------------------------------------------------------

def provenance(lora_cfg: dict, model_cfg: dict, dataset_dir: Path) -> dict:
    """What made an adapter directory: the declared ``lora`` and ``model`` config and the dataset's
    content hash. A consumer recomputes it from its own config and compares ``key``."""
    body = {"lora": lora_cfg, "model": model_cfg, "dataset": hash_path(dataset_dir)}
    key = json_sha256(body)
    return {**body, "key": key}


def provenance_mismatch(adapter_dir: Path, expected: dict) -> str | None:
    """None when ``adapter_dir`` was made by ``expected``; else what differs, for the message."""
    cfg_path = adapter_dir / "adapter_config.json"
    if not (adapter_dir / "adapters.safetensors").is_file() or not cfg_path.is_file():
        return f"{adapter_dir} holds no finished adapters"
    try:
        have = json.loads(cfg_path.read_text(encoding="utf-8")).get("provenance") or {}
    except (OSError, json.JSONDecodeError) as exc:
        return f"{cfg_path} is unreadable ({exc})"
    if have.get("key") == expected["key"]:
        return None
    diffs = []
    for group in ("lora", "model"):
        a, b = have.get(group) or {}, expected[group]
        diffs += [f"{group}.{k}: adapters {a.get(k)!r}, config {b.get(k)!r}"
                  for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if have.get("dataset") != expected["dataset"]:
        diffs.append("dataset: the adapters were trained on another dataset/")
    return "; ".join(diffs) or "the adapters record no provenance (made by an older version)"


# --- training ---------------------------------------------------------------------------------------

def _schedule(lora: LoraConfig, updates: int):
    from mlx_lm.tuner.utils import build_schedule

    lr, end = lora.learning_rate, lora.min_learning_rate
    warmup = lora.warmup_steps or int(lora.warmup_fraction * updates)
    if lora.lr_schedule == "cosine":
        spec = {"name": "cosine_decay", "arguments": [lr, max(1, updates - warmup), end]}
    elif lora.lr_schedule == "linear":
        spec = {"name": "linear_schedule", "arguments": [lr, end, max(1, updates - warmup)]}
    elif warmup:
        spec = {"name": "linear_schedule", "arguments": [lr, lr, 1]}  # constant after warm-up
    else:
        return lr
    return build_schedule({**spec, "warmup": warmup})


def _optimizer(lora: LoraConfig, updates: int):
    """Adam on the schedule, the gradient's global norm clipped at ``lora.max_grad_norm``."""
    import mlx.optimizers as optim

    limit = lora.max_grad_norm

    class ClippedAdam(optim.Adam):
        # mlx-lm's train calls optimizer.update, which applies these: clipping here covers
        # accumulated gradients too.
        def apply_gradients(self, gradients: dict, parameters: dict):
            if limit is not None:
                gradients, _ = optim.clip_grad_norm(gradients, limit)
            return super().apply_gradients(gradients, parameters)

    return ClippedAdam(learning_rate=_schedule(lora, updates))


def _model_config(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))


def _add_adapters(model, lora: LoraConfig, rank: int, num_layers: int, world) -> tuple[dict, int]:
    """Freeze the model and put LoRA layers in; return their parameters and the trainable count."""
    mx = import_mlx()
    from mlx.utils import tree_flatten, tree_map
    from mlx_lm.tuner.utils import linear_to_lora_layers

    mx.eval(model.parameters())  # materialise the (lazily loaded) weights in the chosen dtype
    mx.random.seed(lora.seed)
    model.freeze()
    params = {"rank": rank, "scale": lora.scale, "dropout": lora.dropout}
    if lora.target_modules is not None:
        params["keys"] = list(lora.target_modules)
    linear_to_lora_layers(model, num_layers, params)
    if world.size() > 1:  # every process starts from the same adapters, whatever its RNG did
        model.update(tree_map(lambda p: mx.distributed.all_sum(p, stream=mx.cpu) / world.size(),
                              model.trainable_parameters()))
        # now: collectives must run in the same order in every process
        mx.eval(model.trainable_parameters())
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    if not trainable:
        raise preflight.PreflightError(f"lora.target_modules: none of {lora.target_modules} is a "
                                       "linear layer of this model's blocks")
    return params, trainable


def _resume(ckpt: Checkpoint, run_key: str, iters: int, model, optimizer, selection: Selection,
            primary: bool) -> int:
    """The step to start from: a checkpoint's of this very run, else 0 (and any other one goes)."""
    info = ckpt.load_info(run_key)
    if info and info["step"] < iters:
        ckpt.restore(info, model, optimizer, selection)
        log.info("finetune: resuming from the checkpoint at step %d of %d (optimizer step %d)",
                 info["step"], iters, info["optimizer_step"])
        return info["step"]
    if primary and (ckpt.root.exists() or ckpt.root.with_name(ckpt.root.name + ".old").exists()):
        log.info("finetune: ignoring %s (another config or incomplete); starting from step 0", ckpt.root)
        ckpt.remove()
    return 0


def train(model_dir: Path, data_dir: Path, out_dir: Path, lora: LoraConfig, *,
          log_metrics: Callable[[dict, int], None], prov: dict, system: str | None = None,
          cancel: threading.Event | None = None, available_bytes: float | None = None) -> dict[str, float]:
    """Train LoRA adapters into ``out_dir`` (published atomically); return final metrics.

    Validation (loss, and the validation probes of ``<data_dir>/probes.jsonl`` asked in the
    ``system`` prompt) picks the weights kept (``lora.select_best``) and may stop the run early
    (``lora.early_stopping_patience``). Resumes from ``<out_dir>.checkpoint`` when one was made
    under the same provenance. Raises
    ``TrainingStopped`` when ``cancel`` is set (after saving a checkpoint), and
    ``preflight.PreflightError`` when the run cannot fit the memory available.

    In a process of a data-parallel run (``parallel``, MLX's distributed group already set up),
    this process trains and validates its share of each batch and of the validation set; only
    the first process reports, saves and publishes, and the others return ``{}``.
    """
    mx = import_mlx()
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.trainer import TrainingArgs
    from mlx_lm.tuner.trainer import train as mlx_train

    from components.training.loop import TrainingLoop  # imports mlx_lm: after import_mlx()

    cancel = cancel or threading.Event()
    world = mx.distributed.init()
    primary = world.rank() == 0
    model, tokenizer = load(model_dir, lazy=True)
    config = _model_config(model_dir)
    if lora.dtype != "float32" or config.get("torch_dtype") not in (None, "float32"):
        model.set_dtype(getattr(mx, lora.dtype))
    train_set = dataset(data_dir / "train.jsonl", tokenizer, lora.mask_prompt)
    valid_set = dataset(data_dir / "valid.jsonl", tokenizer, lora.mask_prompt)
    if not len(train_set) or not len(valid_set):
        raise preflight.PreflightError(f"{data_dir}: train.jsonl and valid.jsonl must both hold examples")
    run = preflight.plan_run(model, config, train_set, valid_set, lora, world.size(), available_bytes)
    batch, iters, accum = run.batch, run.iters, run.plan.grad_accumulation_steps
    params, trainable = _add_adapters(model, lora, run.plan.rank, run.num_layers, world)
    optimizer = _optimizer(lora, max(1, iters // accum))

    probes_path = data_dir / "probes.jsonl"
    selection = Selection(read_jsonl(probes_path) if probes_path.is_file() else [], tokenizer, system,
                          lora.early_stopping_patience, lora.val_probes, lora.seed, cancel, world)
    # Effective values join the provenance of a checkpoint: a resumed run must continue the same
    # run, not one with another batch or rank.
    ckpt = Checkpoint(out_dir.with_name(out_dir.name + ".checkpoint"))
    run_key = json_sha256([prov["key"], batch, run.plan.rank, accum, iters])
    start = _resume(ckpt, run_key, iters, model, optimizer, selection, primary)

    # The same shortest examples at every validation, so the losses compare.
    val_rows = sorted(range(len(valid_set)), key=valid_set.itemlen)
    if lora.val_batches > 0:
        val_rows = val_rows[: lora.val_batches * batch]
    val_subset = objective._Rows(valid_set, val_rows)
    loop = TrainingLoop(model=model, optimizer=optimizer, ckpt=ckpt, run_key=run_key, selection=selection,
                        val_subset=val_subset, val_batch=min(batch, len(val_subset)),
                        max_seq_length=lora.max_seq_length, iters=iters, start=start, validate_every=run.every,
                        accum=accum, steps_per_save=lora.steps_per_save, seed=lora.seed,
                        log_metrics=log_metrics, cancel=cancel, world=world)
    if start == 0:
        loop.validate(0)  # the base model's validation loss, the curve's origin
    mx.reset_peak_memory()

    def fit(adapter_file: str) -> None:
        if iters - start > 0:
            args = TrainingArgs(batch_size=batch, iters=iters - start, val_batches=lora.val_batches,
                                steps_per_report=lora.steps_per_report, steps_per_eval=10**9,
                                steps_per_save=10**9, adapter_file=adapter_file,
                                max_seq_length=lora.max_seq_length, grad_checkpoint=lora.grad_checkpoint,
                                grad_accumulation_steps=accum)
            np.random.seed(lora.seed)
            mlx_train(model=model, optimizer=optimizer, train_dataset=train_set, val_dataset=None,
                      args=args, loss=objective.loss, iterate_batches=loop.batches, training_callback=loop)

    t0 = time.perf_counter()
    if not primary:  # mlx-lm writes adapter_file on the first process only
        fit(os.devnull)
        return {}
    with build_dir(out_dir) as tmp:
        fit(str(tmp / "adapters.safetensors"))
        if loop.stopped is not None:
            saved = ckpt.root if ckpt.load_info(run_key) else None
            raise TrainingStopped(loop.saved if saved else 0, saved)
        seconds = time.perf_counter() - t0
        peak = mx.get_peak_memory() / preflight.GB
        kept = selection.restore(model) if lora.select_best else None
        if kept is not None:
            log.info("finetune: keeping the weights of step %d (validation score %.4g)", kept, selection.best[0])
        mx.save_safetensors(str(tmp / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
        training = {
            "iters": iters, "resumed_from_step": start, "batch_size": batch,
            "rank": run.plan.rank, "grad_accumulation_steps": accum, "max_seq_tokens": run.seq,
            "dtype": lora.dtype, "workers": world.size(), "trainable_params": trainable, "seconds": round(seconds, 2),
            "estimate_gb": run.plan.estimate.gb(), "peak_memory_gb": round(peak, 3),
            "available_gb": round(run.available / preflight.GB, 2), "preflight_changes": list(run.plan.changes),
            "final": {k: round(v, 6) for k, v in loop.last.items()},
            "kept_step": kept if kept is not None else loop.early or iters,
            "stopped_early_at": loop.early,
            "selection": "validation probes" if selection.uses_probes else "validation loss",
            "best_score": round(selection.best[0], 6) if selection.best else None,
            "val_loss_base": loop.val_by_step.get(0),
            "val_loss_kept": loop.val_by_step.get(kept if kept is not None else max(loop.val_by_step, default=-1)),
        }
        # mlx_lm.load(adapter_path=...) reads fine_tune_type, num_layers and lora_parameters.
        write_json(tmp / "adapter_config.json", {
            "fine_tune_type": "lora", "num_layers": run.num_layers, "lora_parameters": params,
            "model": str(model_dir), "provenance": prov, "training": training})
    ckpt.remove()
    log.info("finetune: measured peak %.2f GB (estimate %.2f GB)", peak, training["estimate_gb"]["total"])
    return training_metrics(training)


def training_metrics(training: dict) -> dict[str, float]:
    """The stage's final metrics from an adapter directory's ``training`` record; the per-step
    series keep their names, finals are ``*_final`` (never re-logged at step 0)."""
    est = training["estimate_gb"]["total"]
    out = {f"{k}_final": float(v) for k, v in training["final"].items()}
    out.update({
        "finetune/seconds": float(training["seconds"]),
        "finetune/trainable_params": float(training["trainable_params"]),
        "finetune/batch_size": float(training["batch_size"]),
        "finetune/rank": float(training["rank"]),
        "finetune/grad_accumulation_steps": float(training["grad_accumulation_steps"]),
        "finetune/iters": float(training["iters"]),
        "finetune/resumed_from_step": float(training["resumed_from_step"]),
        "finetune/estimate_peak_gb": float(est),
        "finetune/measured_peak_gb": float(training["peak_memory_gb"]),
        "finetune/estimate_error": round(est / training["peak_memory_gb"] - 1, 4)
        if training["peak_memory_gb"] else 0.0,
        "finetune/available_gb": float(training["available_gb"]),
    })
    if training.get("kept_step") is not None:
        out["finetune/kept_step"] = float(training["kept_step"])
    if training.get("best_score") is not None:
        out["finetune/best_selection_score"] = float(training["best_score"])
    return out


def generate_answers(model, tokenizer, prompts: list[list[dict]], max_tokens: int) -> list[str]:
    """Greedy answers to chat prompts (message lists ending before the answer), all in one batch."""
    from mlx_lm import batch_generate

    if not prompts:
        return []
    tokens = [list(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False))
              for msgs in prompts]
    return list(batch_generate(model, tokenizer, tokens, max_tokens=max_tokens).texts)


def adapter_record(adapter_dir: Path) -> dict[str, Any]:
    return json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
