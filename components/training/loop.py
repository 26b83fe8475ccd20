"""What happens between and around mlx-lm's training steps: step-aligned reports, validation
(loss and probes, which pick the weights kept and may stop the run early), checkpoints, a
resumed run skipping what it already trained, and a stop on request.

mlx-lm's ``train`` gives two hooks: its callback (``on_train_loss_report``, every report step)
and the batch iterator it asks before every step. ``TrainingLoop`` is both: reports and
validation in the callback; checkpoints, early stopping and the stop request in
``between_steps``, which the iterator calls before handing out the next batch.

In a data-parallel run (``parallel``) the processes validate together, each on its share of the
examples and probes; the first reports and saves; all of them agree at each step whether to go
on, so that they stop at the same step.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from mlx_lm.tuner.callbacks import TrainingCallback

from components.training import objective
from components.training.checkpoint import Checkpoint
from components.training.selection import Selection


def validates(step: int, last: int, every: int, iters: int) -> bool:
    """Whether report step ``step`` validates, the last one having been at ``last``. The final
    step always does; one due less than half an interval before it would score nearly the same
    weights again (at 220 of 224, say) for the price of a whole validation."""
    return step == iters or (step - last >= every and iters - step >= every / 2)


class TrainingLoop(TrainingCallback):
    def __init__(self, *, model, optimizer, ckpt: Checkpoint, run_key: str, selection: Selection,
                 val_subset, val_batch: int, max_seq_length: int, iters: int, start: int,
                 validate_every: int, accum: int, steps_per_save: int, seed: int,
                 log_metrics: Callable[[dict, int], None], cancel: threading.Event, world=None) -> None:
        self.model, self.optimizer, self.ckpt, self.run_key = model, optimizer, ckpt, run_key
        self.selection, self.val_subset, self.val_batch = selection, val_subset, val_batch
        self.max_seq_length, self.iters, self.start = max_seq_length, iters, start
        self.every, self.accum, self.steps_per_save, self.seed = validate_every, accum, steps_per_save, seed
        self._log_metrics, self.cancel, self.world = log_metrics, cancel, world
        self.primary = world is None or world.rank() == 0
        self.tight = objective.batches_for(model)
        self.last: dict[str, float] = {}  # the latest value of every series
        self.val_by_step: dict[int, float] = {}
        self.saved = start  # the step of the latest checkpoint
        self.last_val: int = start  # the step of the latest validation
        self.stopped: int | None = None  # a stop request ended training at this step
        self.early: int | None = None  # early stopping ended training at this step

    def log(self, metrics: dict, step: int) -> None:
        self.last.update(metrics)
        if self.primary:
            self._log_metrics({k: float(v) for k, v in metrics.items()}, step)

    # -- validation ------------------------------------------------------------------------
    def validate(self, step: int) -> None:
        """Validation loss on the same shortest examples every time (so they compare), and the
        validation probes, which score the weights of this step."""
        val = objective.mean_loss(self.model, self.val_subset, self.val_batch, self.max_seq_length, world=self.world)
        self.val_by_step[step] = val
        found = self.selection.measure(self.model, step, val)
        self.model.train()
        self.last_val = step
        self.log({"finetune/val_loss": val, **found}, step)

    def on_train_loss_report(self, info: dict[str, Any]) -> None:
        step = self.start + int(info["iteration"])
        self.log({"finetune/train_loss": info["train_loss"],
                  "finetune/learning_rate": info["learning_rate"],
                  "finetune/iterations_per_second": info["iterations_per_second"],
                  "finetune/tokens_per_second": info["tokens_per_second"],
                  "finetune/trained_tokens": info["trained_tokens"],
                  "finetune/peak_memory_gb": info["peak_memory"]}, step)
        # Validation on report steps, so both curves share their steps.
        if validates(step, self.last_val, self.every, self.iters):
            self.validate(step)
            if self.selection.stop and step < self.iters:
                self.early = step

    # -- between steps ---------------------------------------------------------------------
    def _save(self, step: int) -> None:
        self.ckpt.save(step, self.model, self.optimizer, self.run_key, self.selection)
        self.saved = step

    def _agreed(self, stop: bool) -> bool:
        """Whether any process stops here (each asks at every step, so they stop together)."""
        if self.world is None or self.world.size() == 1:
            return stop
        import mlx.core as mx

        return mx.distributed.all_sum(mx.array(int(stop)), group=self.world, stream=mx.cpu).item() > 0

    def between_steps(self, done: int) -> bool:
        """Step ``done`` is trained (and reported, validated); may the next one run? Saves a
        checkpoint every ``steps_per_save`` steps (at an optimizer update) and on a stop request."""
        at_update = done % self.accum == 0
        if self.primary and done > self.start and at_update and done - self.saved >= self.steps_per_save:
            self._save(done)
        early = self.early is not None
        if not self._agreed(early or self.cancel.is_set()):
            return True
        if not early:
            if self.primary and done > self.saved and at_update:
                self._save(done)
            self.stopped = done
        return False

    def batches(self, dataset, batch_size, max_seq_length, loop=False, seed=None, comm_group=None):
        """mlx-lm's batch iterator (tight batches), in the same order as an uninterrupted run:
        a resumed one skips those already trained on."""
        inner = self.tight(dataset, batch_size, max_seq_length, loop=loop,
                           seed=self.seed if loop else seed, comm_group=comm_group)
        if not loop:  # validation
            yield from inner
            return
        for done, b in enumerate(inner):
            if done < self.start:
                continue
            if not self.between_steps(done):
                return
            yield b
