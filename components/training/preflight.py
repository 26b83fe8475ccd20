"""Will a LoRA run fit? A peak-memory estimate made before training, and the batch and rank that
fit the memory *available* now.

The estimate counts what mlx keeps alive at the peak of a training step: the base weights, the
LoRA parameters with their gradients and Adam moments, the activations the backward pass needs for
``batch x sequence`` tokens through the LoRA layers, and the float32 logits of the loss. It is a
model, not a measurement; the trainer logs mlx's measured peak beside it (``estimate_error``).
``plan_run`` is what a run trains with: the batch, rank and accumulation that fit, the padded
sequence length, and the iterations its epochs ask for.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)

GB = 1e9  # as mlx reports memory (get_peak_memory() / 1e9)
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Adam over float32 LoRA parameters: the value, its gradient and two moments.
LORA_BYTES_PER_PARAM = 4 * 4
# Saved per token and LoRA layer, in units of the hidden / MLP width: the norms, q/k/v/o and the
# residuals (~12 x hidden), the MLP's gate, up, product and input to down (~4 x intermediate).
HIDDEN_SAVED, INTERMEDIATE_SAVED = 12, 4
# The loss: logits, their log-softmax and its gradient, in float32.
LOGIT_COPIES = 3
# Allocator slack and the framework's own buffers.
OVERHEAD = 1.15
FIXED_BYTES = 64 * 2**20


class PreflightError(ValueError):
    """The run cannot fit this machine; the message names the key to lower."""


@dataclass(frozen=True)
class ModelShape:
    params: int            # base model parameters
    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int
    lora_dims: tuple[int, ...] = ()  # in + out of each targeted linear in one LoRA layer


@dataclass(frozen=True)
class Estimate:
    weights: float
    lora: float
    activations: float
    logits: float
    total: float

    def gb(self) -> dict[str, float]:
        return {k: round(v / GB, 3) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Plan:
    batch_size: int
    rank: int
    grad_accumulation_steps: int
    estimate: Estimate
    budget_bytes: float
    changes: tuple[str, ...] = field(default_factory=tuple)


def estimate(shape: ModelShape, *, batch: int, seq: int, rank: int, num_layers: int,
             dtype: str, grad_checkpoint: bool = False) -> Estimate:
    act = DTYPE_BYTES[dtype]
    lora_layers = shape.layers if num_layers < 0 else min(num_layers, shape.layers)
    tokens = batch * seq
    weights = shape.params * act
    lora = lora_layers * rank * sum(shape.lora_dims) * LORA_BYTES_PER_PARAM
    per_layer = tokens * (HIDDEN_SAVED * shape.hidden + INTERMEDIATE_SAVED * shape.intermediate
                          + 2 * shape.heads * seq) * act
    if grad_checkpoint:  # only each layer's input is kept; one layer is recomputed at a time
        activations = lora_layers * tokens * shape.hidden * act + per_layer
    else:
        activations = lora_layers * per_layer
    logits = tokens * shape.vocab * 4 * LOGIT_COPIES
    total = (weights + lora + activations + logits) * OVERHEAD + FIXED_BYTES
    return Estimate(weights, lora, activations, logits, total)


def fit(shape: ModelShape, *, batch: int, rank: int, grad_accumulation_steps: int, seq: int,
        num_layers: int, dtype: str, grad_checkpoint: bool, budget_bytes: float) -> Plan:
    """Halve the batch (doubling gradient accumulation, so the effective batch is kept), then the
    rank, until the estimate fits ``budget_bytes``; raise PreflightError naming the key to lower
    when even batch 1 at rank 1 does not fit."""
    changes: list[str] = []

    def est() -> Estimate:
        return estimate(shape, batch=batch, seq=seq, rank=rank, num_layers=num_layers, dtype=dtype,
                        grad_checkpoint=grad_checkpoint)

    e = est()
    while e.total > budget_bytes and batch > 1:
        new = max(1, batch // 2)
        grad_accumulation_steps *= batch // new
        changes.append(f"lora.batch_size {batch} -> {new} (grad_accumulation_steps -> "
                       f"{grad_accumulation_steps}, same effective batch)")
        batch = new
        e = est()
    while e.total > budget_bytes and rank > 1:
        new = max(1, rank // 2)
        changes.append(f"lora.rank {rank} -> {new}")
        rank = new
        e = est()
    if e.total > budget_bytes:
        need, have = e.total / GB, budget_bytes / GB
        if e.weights * OVERHEAD > budget_bytes:
            hint = ("the base model's weights alone do not fit: choose a smaller model "
                    "(model=smollm2-135m) or free memory")
        elif not grad_checkpoint:
            hint = f"set lora.grad_checkpoint=true or lower lora.max_seq_length (now {seq} tokens)"
        else:
            hint = f"lower lora.max_seq_length (now {seq} tokens) or lora.num_layers"
        raise PreflightError(f"lora: training needs about {need:.1f} GB at batch 1, rank 1, but "
                             f"only {have:.1f} GB is available; {hint}")
    return Plan(batch, rank, grad_accumulation_steps, e, budget_bytes, tuple(changes))


def shape_of(model, config: dict, keys: list[str] | None, num_layers: int) -> ModelShape:
    """The shape of an mlx-lm model (loaded lazily: only array shapes are read)."""
    from mlx.utils import tree_flatten

    text = config.get("text_config") or config
    params = sum(v.size for _, v in tree_flatten(model.parameters()))
    layers = list(model.layers)
    dims: list[int] = []
    if layers:
        last = layers[-1]
        for name, module in last.named_modules():
            w = getattr(module, "weight", None)
            if w is None or w.ndim != 2 or "norm" in name or "embed" in name:
                continue
            if keys is None or name in keys:
                out_dim, in_dim = w.shape
                if hasattr(module, "bits"):  # quantized: packed input columns
                    in_dim = in_dim * 32 // module.bits
                dims.append(in_dim + out_dim)
    hidden = int(text.get("hidden_size", 0))
    return ModelShape(
        params=params, hidden=hidden,
        intermediate=int(text.get("intermediate_size", 4 * hidden)),
        layers=len(layers), heads=int(text.get("num_attention_heads", 1)),
        vocab=int(text.get("vocab_size", config.get("vocab_size", 32000))),
        lora_dims=tuple(dims))


def padded_length(longest: int, max_seq_length: int) -> int:
    """The sequence length mlx-lm's batches have: one plus a multiple of 32, at most the maximum."""
    return min(1 + 32 * math.ceil(longest / 32), max_seq_length)


def available_bytes_now() -> float:
    import psutil

    return float(psutil.virtual_memory().available)


@dataclass(frozen=True)
class Run:
    """What a run trains with, once the memory available has had its say."""

    batch: int  # examples per optimizer step, over every process
    plan: Plan  # this process's batch, the rank and the accumulation that fit
    seq: int  # padded tokens per example
    num_layers: int
    iters: int
    every: int  # steps between validations
    available: float  # bytes


def plan_run(model, config: dict, train_set, valid_set, lora, size: int, available_bytes: float | None) -> Run:
    """Batch, rank and accumulation fitted to the memory available, and the iterations, for
    ``lora`` (a ``lora.LoraConfig``: not imported, lora imports this module) in each of ``size``
    data-parallel processes."""
    batch = max(1, min(lora.batch_size, len(train_set), len(valid_set)))
    if batch % size:
        raise PreflightError(f"lora.batch_size {batch} cannot be split between "
                             f"lora.workers={size} processes; use a multiple of it")
    num_layers = len(model.layers) if lora.num_layers < 0 else min(lora.num_layers, len(model.layers))
    seq = padded_length(max(train_set.longest, valid_set.longest), lora.max_seq_length)
    shape = shape_of(model, config, lora.target_modules, num_layers)
    available = available_bytes_now() if available_bytes is None else available_bytes
    budget = available * lora.memory_fraction
    # This process's share of the batch is what must fit its share of the memory.
    fit_args = dict(batch=batch // size, rank=lora.rank, grad_accumulation_steps=lora.grad_accumulation_steps,
                    seq=seq, num_layers=num_layers, dtype=lora.dtype, grad_checkpoint=lora.grad_checkpoint)
    plan = (fit(shape, budget_bytes=budget, **fit_args) if lora.preflight
            else Plan(batch // size, lora.rank, lora.grad_accumulation_steps,
                      estimate(shape, batch=batch // size, seq=seq, rank=lora.rank, num_layers=num_layers,
                               dtype=lora.dtype, grad_checkpoint=lora.grad_checkpoint), budget))
    batch = plan.batch_size * size  # the batch of an optimizer step, over every process
    for change in plan.changes:
        log.warning("preflight: %s to fit %.1f GB available", change, available / GB)
    est_gb = plan.estimate.gb()
    log.info("preflight: estimated peak %.2f GB (weights %.2f, LoRA+Adam %.3f, activations %.2f, "
             "logits %.2f) for batch %d x %d tokens%s, rank %d; %.1f GB available",
             est_gb["total"], est_gb["weights"], est_gb["lora"], est_gb["activations"],
             est_gb["logits"], plan.batch_size, seq, f" in each of {size} processes" if size > 1 else "",
             plan.rank, available / GB)

    iters = lora.iters
    if lora.epochs is not None:
        iters = max(1, math.ceil(lora.epochs * len(train_set) / batch))
        if lora.max_iters is not None and iters > lora.max_iters:
            log.warning("finetune: %g epochs of %d examples are %d iterations; lora.max_iters caps "
                        "them at %d", lora.epochs, len(train_set), iters, lora.max_iters)
            iters = lora.max_iters
    every = lora.steps_per_eval or max(lora.steps_per_report,
                                       lora.steps_per_report * round(iters / 4 / lora.steps_per_report))
    return Run(batch, plan, seq, num_layers, iters, every, available)
