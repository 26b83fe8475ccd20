"""The base model to fine-tune, resolved to a local mlx-lm model directory.

Resolution is cheap and happens before any expensive stage, so a model that cannot be had
(offline, not cached) fails the run at once with the command that downloads it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    pass


class BaseModel:
    def __init__(self, name: str, source: str = "hf", hf_repo: str | None = None,
                 gguf: str | None = None, path: str | None = None, dtype: str = "float32") -> None:
        if source not in ("hf", "gguf"):
            raise ValueError(f"model '{name}': source must be 'hf' or 'gguf', not {source!r}")
        self.name = name
        self.source = source
        self.hf_repo = hf_repo
        self.gguf = gguf
        self.path = path
        self.dtype = dtype  # of the weights converted from a GGUF

    def check(self) -> str:
        """Raise ModelUnavailable unless the model can be had offline; say where it comes from."""
        if self.path:
            p = Path(self.path).expanduser()
            if not (p / "config.json").is_file():
                raise ModelUnavailable(f"model '{self.name}': {p} is not a model directory "
                                       "(no config.json)")
            return str(p)
        if self.source == "gguf":
            from components.training.gguf import embedded_gguf_path

            g = Path(self.gguf).expanduser() if self.gguf else embedded_gguf_path()
            if not g.is_file():
                raise ModelUnavailable(f"model '{self.name}': GGUF file {g} not found")
            return str(g)
        return self._hf_snapshot()

    def _hf_snapshot(self) -> str:
        from huggingface_hub import snapshot_download

        try:
            return snapshot_download(self.hf_repo, local_files_only=True)
        except Exception as exc:  # LocalEntryNotFoundError and friends
            raise ModelUnavailable(
                f"model '{self.name}' ({self.hf_repo}) is not in the local Hugging Face cache "
                f"and cannot be downloaded offline ({type(exc).__name__}). Download it once "
                f"with network access:\n    hf download {self.hf_repo}\n"
                f"(or set model.path to a local mlx-lm model directory; for gated models run "
                f"`hf auth login` first)") from None

    def local_dir(self, cache_dir: str | os.PathLike) -> Path:
        """An mlx-lm loadable directory (converting the GGUF once, cached)."""
        where = self.check()
        if self.path or self.source == "hf":
            return Path(where)
        from components.training.gguf import ensure_mlx_model

        return ensure_mlx_model(Path(where), Path(cache_dir) / "models", dtype=self.dtype)
