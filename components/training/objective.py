"""The training objective, computed where it counts.

mlx-lm pads every batch to a multiple of 32 tokens and projects every position onto the
vocabulary, though with ``mask_prompt`` only the answer's tokens carry loss. For the short fact
rows this project trains on (about 65 tokens, the answer a dozen) that is most of a step's work
on a CPU: the vocabulary projection of a 135M model costs as much as a third of its blocks. Here
batches are padded to a multiple of 8, and the projection is applied only at the positions whose
targets the loss counts. The loss and its token count are mlx-lm's ``default_loss`` exactly
(``tests/test_finetune.py`` compares them); ``benchmarks/finetune.py`` measures the gain against
the bare ``mlx_lm lora`` command.
"""
from __future__ import annotations

from typing import Callable, Iterator

PAD_TO = 8


def head(model) -> Callable | None:
    """The final projection to the vocabulary, for models whose body returns hidden states
    (llama, Qwen, Mistral in mlx-lm), so that logits can be computed at chosen positions only;
    None for a model built otherwise, which then gets its full forward pass."""
    body = getattr(model, "model", None)
    if body is None or not callable(body) or not hasattr(body, "embed_tokens"):
        return None
    if getattr(model, "lm_head", None) is not None:
        return model.lm_head
    if getattr(getattr(model, "args", None), "tie_word_embeddings", False):
        return body.embed_tokens.as_linear
    return None


def _round_up(n: int, to: int) -> int:
    return to * ((n + to - 1) // to)


def tighten(batches: Iterator, head_of_model: Callable | None) -> Iterator[tuple]:
    """mlx-lm's ``(tokens, lengths)`` batches, cut to the longest row (rounded up to ``PAD_TO``)
    and, when the model's head can be applied alone, given the positions the loss counts:
    ``(tokens, lengths, positions, valid)``, ``positions`` (rows x K) indexing the model's inputs,
    ``valid`` masking a row's repeats of its last position."""
    import mlx.core as mx
    import numpy as np

    for tokens, lengths in batches:
        span = np.array(lengths)  # (offset, length) per row
        # One pad column past the longest row, as mlx-lm pads: its last step is counted there.
        width = min(tokens.shape[1], 1 + _round_up(int(span[:, 1].max()), PAD_TO))
        tokens = tokens[:, :width]
        if head_of_model is None:
            yield tokens, lengths
            continue
        # default_loss counts target steps s (1-based over targets = tokens[:, 1:]) with
        # offset <= s <= length: the logits at input positions s - 1.
        inputs = width - 1
        first = np.clip(span[:, 0] - 1, 0, inputs - 1)
        stop = np.clip(span[:, 1] - 1, 0, inputs - 1)
        k = min(inputs, _round_up(int((stop - first).max()) + 1, PAD_TO))
        pos = first[:, None] + np.arange(k)[None, :]
        valid = pos <= stop[:, None]
        pos = np.minimum(pos, stop[:, None])
        yield tokens, lengths, mx.array(pos.astype(np.int32)), mx.array(valid)


def loss(model, tokens, lengths, positions=None, valid=None):
    """mlx-lm's default loss (mean cross-entropy over the counted targets, and their count),
    projecting onto the vocabulary only at ``positions`` when they are given."""
    import mlx.core as mx
    from mlx_lm.tuner.trainer import default_loss

    from components.training import fastmath

    if positions is None:
        return default_loss(model, tokens, lengths)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    hidden = mx.take_along_axis(model.model(inputs), positions[..., None], axis=1)
    logits = head(model)(hidden)
    picked = mx.take_along_axis(targets, positions, axis=1)
    steps = positions + 1
    mask = valid & (steps >= lengths[:, 0:1]) & (steps <= lengths[:, 1:])
    ce = fastmath.cross_entropy(logits, picked) * mask
    ntoks = mask.sum()
    return ce.astype(mx.float32).sum() / ntoks, ntoks


class _Rows:
    """Some rows of a dataset, in mlx-lm's dataset protocol."""

    def __init__(self, data, rows) -> None:
        self.data, self.rows = data, list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.data[self.rows[i]]


def mean_loss(model, data, batch_size: int, max_seq_length: int, num_batches: int = -1, world=None) -> float:
    """The loss per counted token over ``data`` (its first ``num_batches`` batches; -1: all).
    With a distributed group ``world``, each of its processes computes its share of the rows."""
    import itertools

    import mlx.core as mx
    from mlx_lm.tuner.trainer import iterate_batches

    rank, size = (world.rank(), world.size()) if world is not None else (0, 1)
    if size > 1:
        data = _Rows(data, range(rank, len(data), size))
        batch_size = max(1, batch_size // size)
    model.eval()
    total, count = mx.array(0.0), mx.array(0)
    if len(data):
        batches = tighten(iterate_batches(data, min(batch_size, len(data)), max_seq_length), head(model))
        for batch in itertools.islice(batches, None if num_batches < 0 else num_batches):
            value, toks = loss(model, *batch)
            total, count = total + value * toks, count + toks
            mx.eval(total, count)
    if size > 1:
        total = mx.distributed.all_sum(total, group=world, stream=mx.cpu)
        count = mx.distributed.all_sum(count, group=world, stream=mx.cpu)
    return (total / mx.maximum(count, 1)).item()


def batches_for(model) -> Callable:
    """mlx-lm's ``iterate_batches``, tightened for ``model`` (pass it with ``loss`` to mlx-lm's
    ``train`` or ``evaluate``)."""
    from mlx_lm.tuner.trainer import iterate_batches

    out = head(model)

    def batches(dataset, batch_size, max_seq_length, loop=False, seed=None, comm_group=None):
        yield from tighten(iterate_batches(dataset, batch_size, max_seq_length, loop=loop, seed=seed,
                                           comm_group=comm_group), out)

    return batches
