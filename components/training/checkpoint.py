"""A training run's checkpoint, which an interrupted run resumes from."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from components.files import build_dir, file_sha256, recover_dir, write_json

if TYPE_CHECKING:
    from components.training.selection import Selection

CHECKPOINT_FORMAT = 1


@dataclass
class Checkpoint:
    """``<adapters>.checkpoint/``: adapter weights, optimizer state and ``checkpoint.json``, which
    is written last and names the step and the hashes of the other two, so a half-written
    checkpoint is never resumed from."""

    root: Path

    def save(self, step: int, model, optimizer, key: str, selection: "Selection | None" = None) -> None:
        import mlx.core as mx
        from mlx.utils import tree_flatten

        with build_dir(self.root) as tmp:
            mx.save_safetensors(str(tmp / "adapters.safetensors"),
                                dict(tree_flatten(model.trainable_parameters())))
            opt_state = {k: v for k, v in tree_flatten(optimizer.state) if k not in ("step", "learning_rate")}
            mx.save_safetensors(str(tmp / "optimizer.safetensors"), opt_state)
            files = ["adapters.safetensors", "optimizer.safetensors"]
            kept = None
            if selection is not None and selection.weights is not None:
                # The best weights so far: a resumed run keeps choosing among the same checkpoints.
                mx.save_safetensors(str(tmp / "best.safetensors"), selection.weights)
                files.append("best.safetensors")
                kept = {"score": selection.best[0], "step": selection.best[1], "since_best": selection.since_best}
            write_json(tmp / "checkpoint.json", {
                "format": CHECKPOINT_FORMAT, "step": step, "optimizer_step": int(optimizer.step.item()),
                "key": key, "selection": kept, "sha256": {f: file_sha256(tmp / f) for f in files}})

    def load_info(self, key: str) -> dict | None:
        """The checkpoint's record when it is complete and was made under ``key``."""
        recover_dir(self.root)  # a crash mid-swap
        try:
            info = json.loads((self.root / "checkpoint.json").read_text(encoding="utf-8"))
            if info.get("format") != CHECKPOINT_FORMAT or info.get("key") != key:
                return None
            if all(file_sha256(self.root / f) == h for f, h in info["sha256"].items()):
                return {**info, "root": self.root}
        except (OSError, ValueError, KeyError):
            pass
        return None

    def restore(self, info: dict, model, optimizer, selection: "Selection | None" = None) -> None:
        import mlx.core as mx
        from mlx.utils import tree_unflatten

        kept = info.get("selection")
        if selection is not None and kept:
            selection.best, selection.since_best = (kept["score"], kept["step"]), kept["since_best"]
            selection.weights = dict(mx.load(str(info["root"] / "best.safetensors")))

        model.load_weights(str(info["root"] / "adapters.safetensors"), strict=False)
        optimizer.init(model.trainable_parameters())
        state = dict(optimizer.state)
        state.update(tree_unflatten(list(mx.load(str(info["root"] / "optimizer.safetensors")).items())))
        state["step"] = mx.array(info["optimizer_step"], mx.uint64)
        optimizer.state = state

    def remove(self) -> None:
        for suffix in ("", ".old", ".partial"):
            shutil.rmtree(self.root.with_name(self.root.name + suffix), ignore_errors=True)
