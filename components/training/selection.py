"""Which weights a training run keeps, and when it stops for want of better ones."""
from __future__ import annotations

import threading


class _Stopped(Exception):
    pass


class Selection:
    """The checkpoint a run keeps: the best validation score so far and the adapter weights that
    made it, and when to stop for want of a better one.

    The score is the accuracy on the validation probes (never-trained wordings of the facts),
    the trained and the unseen ones together, so a checkpoint that learned by forgetting scores
    no better than one that learned less. Without probes, the validation loss decides.

    In a data-parallel run (``world``, MLX's distributed group) each process scores its share of
    the probes and they add up what they found, so every process keeps the same weights and
    stops at the same step.
    """

    def __init__(self, probes: list[dict], tokenizer, system: str | None, patience: int | None,
                 limit: int = 32, seed: int = 0, cancel: threading.Event | None = None, world=None) -> None:
        import random

        from components.mcq import MCQ

        valid = [p for p in probes if p["split"] == "valid"]
        # A validation asks at most ``limit`` probes, each set in its share.
        random.Random(seed).shuffle(valid)
        keep = min(limit, len(valid))
        share = {s: round(keep * sum(p["set"] == s for p in valid) / max(1, len(valid))) for s in ("trained", "unseen")}
        self.sets = {s: [MCQ.from_probe(p) for p in valid if p["set"] == s][: max(1, share[s])]
                     for s in ("trained", "unseen")}
        self.tokenizer, self.system, self.patience = tokenizer, system, patience
        self.cancel = cancel or threading.Event()
        self.rank, self.size = (world.rank(), world.size()) if world is not None else (0, 1)
        self.world = world
        self.best: tuple[float, int] | None = None  # (score, step)
        self.weights: dict | None = None
        self.since_best = 0

    @property
    def uses_probes(self) -> bool:
        return bool(self.sets["trained"])

    def measure(self, model, step: int, val_loss: float) -> dict[str, float]:
        """The step's validation score (step 0, the base model, gives its loss alone)."""
        from components.training import scoring

        if step == 0:
            return {}
        out: dict[str, float] = {}
        if not self.uses_probes:
            score = -val_loss
        else:
            def stop_soon(_):
                if self.cancel.is_set():
                    raise _Stopped

            # One flag per probe (this process's share scored, the others' left at 0), and
            # whether a stop cut this process's share short.
            flags = {name: [0] * len(qs) for name, qs in self.sets.items()}
            stopped = 0
            try:
                for name, qs in self.sets.items():
                    mine = list(range(self.rank, len(qs), self.size))
                    stop_soon(None)
                    if mine:
                        # Batches of 8 questions: a stop asked for mid-validation waits a second or two.
                        rows = scoring.score(model, self.tokenizer, [qs[i] for i in mine], self.system,
                                             on_question=stop_soon, batch=8)
                        for i, r in zip(mine, rows):
                            flags[name][i] = int(r["correct"])
            except _Stopped:
                stopped = 1
            if self.size > 1:
                import mlx.core as mx

                both = [v for name in self.sets for v in flags[name]] + [stopped]
                both = mx.distributed.all_sum(mx.array(both), group=self.world, stream=mx.cpu).tolist()
                stopped, at = both[-1], 0
                for name in self.sets:
                    flags[name], at = both[at: at + len(flags[name])], at + len(flags[name])
            if stopped:  # a stop was asked for: this validation counts for nothing
                return {}
            right = asked = 0
            for name, got in flags.items():
                if got:
                    out[f"finetune/probe_{name}_accuracy"] = sum(got) / len(got)
                    right, asked = right + sum(got), asked + len(got)
            score = right / asked
        out["finetune/selection_score"] = score
        # A tie goes to the later weights: as good on the probes, further through the schedule.
        # A default run that kept step 255 of 336 on a tie (0.69) gained +27 points; the same run
        # keeping step 336, +33 (docs/recipe.md).
        if self.best is None or score >= self.best[0]:
            from mlx.utils import tree_flatten

            self.best, self.since_best = (score, step), 0
            # mlx arrays are values: the optimizer's next update makes new ones, so holding
            # these is a copy of the weights at this step.
            self.weights = dict(tree_flatten(model.trainable_parameters()))
        else:
            self.since_best += 1
        return out

    @property
    def stop(self) -> bool:
        return self.patience is not None and self.since_best >= self.patience

    def restore(self, model) -> int | None:
        """Put the best weights back; return their step (None when there were none)."""
        if self.best is None or self.weights is None:
            return None
        model.load_weights(list(self.weights.items()), strict=False)
        return self.best[1]
