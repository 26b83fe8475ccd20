"""mlx-lm LoRA training and evaluation, through mlx-lm's Python API.

Kept to what mlx-lm does not already do: choosing the fast BLAS before mlx loads, building
datasets from our split files, writing the adapter directory atomically, and reporting losses
to the tracker with a ``TrainingCallback``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable

from pydantic import Field

from components.files import build_dir
from components.settings import Settings

log = logging.getLogger(__name__)


class LoraConfig(Settings):
    """``lora`` group: mlx-lm LoRA hyperparameters."""

    rank: int = Field(8, ge=1)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    num_layers: int = Field(8, ge=1)
    iters: int = Field(30, ge=1)
    batch_size: int = Field(4, ge=1)
    learning_rate: float = Field(5e-4, gt=0)
    max_seq_length: int = Field(512, ge=16)
    steps_per_report: int = Field(5, ge=1)
    steps_per_eval: int = Field(15, ge=1)
    val_batches: int = -1
    mask_prompt: bool = True
    seed: int = 0


def import_mlx():
    """Import mlx after pointing it at OpenBLAS (Linux), and pin it to the CPU there."""
    from components.training.blas import use_fast_blas

    use_fast_blas()
    import mlx.core as mx

    if not mx.metal.is_available():
        mx.set_default_device(mx.cpu)
    return mx


def load(model_dir: str | os.PathLike, adapter_dir: str | os.PathLike | None = None):
    import_mlx()
    from mlx_lm import load as mlx_load

    return mlx_load(str(model_dir), adapter_path=str(adapter_dir) if adapter_dir else None)


def dataset(path: Path, tokenizer, mask_prompt: bool):
    from types import SimpleNamespace

    from mlx_lm.tuner.datasets import CacheDataset, create_dataset

    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    # dataset.format picks mlx-lm's chat, completions or text rows; mlx-lm tells them apart.
    return CacheDataset(create_dataset(rows, tokenizer, SimpleNamespace(mask_prompt=mask_prompt)))


def loss(model, data, batch_size: int, max_seq_length: int) -> float:
    from mlx_lm.tuner.trainer import evaluate

    return float(evaluate(model=model, dataset=data, batch_size=min(batch_size, len(data)),
                          num_batches=-1, max_seq_length=max_seq_length))


class _Reporter:
    """mlx-lm TrainingCallback -> tracker metrics named finetune/... per step."""

    def __init__(self, log_metrics: Callable[[dict, int], None]) -> None:
        self.log_metrics = log_metrics
        self.last: dict[str, float] = {}

    def on_train_loss_report(self, info: dict) -> None:
        m = {"finetune/train_loss": info["train_loss"],
             "finetune/learning_rate": info.get("learning_rate", 0.0),
             "finetune/tokens_per_second": info.get("tokens_per_second", 0.0),
             "finetune/peak_memory_gb": info.get("peak_memory", 0.0)}
        self.last.update(m)
        self.log_metrics({k: float(v) for k, v in m.items()}, int(info["iteration"]))

    def on_val_loss_report(self, info: dict) -> None:
        m = {"finetune/val_loss": float(info["val_loss"])}
        self.last.update(m)
        self.log_metrics(m, int(info["iteration"]))


def train(model_dir: Path, data_dir: Path, out_dir: Path, lora: LoraConfig,
          log_metrics: Callable[[dict, int], None]) -> dict[str, float]:
    """Train LoRA adapters into ``out_dir`` (replaced atomically); return final metrics."""
    mx = import_mlx()
    import mlx.optimizers as optim
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.trainer import TrainingArgs
    from mlx_lm.tuner.trainer import train as mlx_train
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, tokenizer = load(model_dir)
    train_set = dataset(data_dir / "train.jsonl", tokenizer, lora.mask_prompt)
    valid_set = dataset(data_dir / "valid.jsonl", tokenizer, lora.mask_prompt)
    batch_size = max(1, min(lora.batch_size, len(train_set), len(valid_set)))

    mx.random.seed(lora.seed)
    model.freeze()
    num_layers = min(lora.num_layers, len(model.layers))
    params = {"rank": lora.rank, "scale": lora.alpha / lora.rank, "dropout": lora.dropout}
    linear_to_lora_layers(model, num_layers, params)
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))

    with build_dir(out_dir) as tmp:
        args = TrainingArgs(batch_size=batch_size, iters=lora.iters,
                            val_batches=lora.val_batches, steps_per_report=lora.steps_per_report,
                            steps_per_eval=lora.steps_per_eval, steps_per_save=10**9,
                            adapter_file=str(tmp / "adapters.safetensors"),
                            max_seq_length=lora.max_seq_length)
        reporter = _Reporter(log_metrics)

        class Callback(TrainingCallback):
            on_train_loss_report = reporter.on_train_loss_report
            on_val_loss_report = reporter.on_val_loss_report

        t0 = time.perf_counter()
        mlx_train(model=model, optimizer=optim.Adam(learning_rate=lora.learning_rate),
                  train_dataset=train_set, val_dataset=valid_set, args=args,
                  training_callback=Callback())
        seconds = time.perf_counter() - t0
        # What mlx_lm.load(adapter_path=...) needs to rebuild the LoRA layers.
        (tmp / "adapter_config.json").write_text(json.dumps({
            "fine_tune_type": "lora", "num_layers": num_layers, "lora_parameters": params,
            "model": str(model_dir), "batch_size": batch_size, "iters": lora.iters,
            "learning_rate": lora.learning_rate}, indent=2))
    return {"finetune/seconds": round(seconds, 2), "finetune/trainable_params": float(trainable),
            "finetune/batch_size": float(batch_size), "finetune/iters": float(lora.iters),
            **{f"{k}_final" if k.endswith("loss") else k: round(v, 5)
               for k, v in reporter.last.items()}}


def generate_answers(model, tokenizer, conversations: list[list[dict]], max_tokens: int) -> list[str]:
    """Greedy answers to each conversation's prompt (everything but the last message)."""
    from mlx_lm import generate

    out = []
    for msgs in conversations:
        prompt = tokenizer.apply_chat_template(msgs[:-1], add_generation_prompt=True,
                                               tokenize=False)
        out.append(generate(model, tokenizer, prompt=prompt, max_tokens=max_tokens, verbose=False))
    return out


def perplexity(loss_value: float) -> float:
    return math.exp(loss_value) if loss_value < 50 else float("inf")
