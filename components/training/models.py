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


class ModelSource:
    """``model`` group. ``source: hf`` models come from the Hugging Face cache, downloaded once
    into it (with a progress bar) unless ``offline`` or ``HF_HUB_OFFLINE`` is set; the token is
    huggingface_hub's own (``HF_TOKEN`` or ``hf auth login``), never part of the config."""

    def __init__(self, name: str, source: str = "hf", hf_repo: str | None = None,
                 gguf: str | None = None, path: str | None = None, dtype: str = "float32",
                 revision: str | None = None, offline: bool = False) -> None:
        if source not in ("hf", "gguf"):
            raise ValueError(f"model '{name}': source must be 'hf' or 'gguf', not {source!r}")
        if source == "hf" and not (hf_repo or path):
            raise ValueError(f"model '{name}': source 'hf' needs model.hf_repo (or model.path)")
        self.name = name
        self.source = source
        self.hf_repo = hf_repo
        self.gguf = gguf
        self.path = path
        self.dtype = dtype  # of the weights converted from a GGUF
        self.revision = revision
        self.offline = offline

    def check(self) -> str:
        """Make sure the model can be had (downloading it when allowed); say where it is."""
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

    def _offline(self) -> bool:
        return self.offline or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")

    def _download_hint(self) -> str:
        rev = f" --revision {self.revision}" if self.revision else ""
        return (f"Download it once with network access:\n    hf download {self.hf_repo}{rev}\n"
                f"(or set model.path to a local mlx-lm model directory; for gated models accept "
                f"the licence on huggingface.co and run `hf auth login` first)")

    def _hf_snapshot(self) -> str:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        # Read at call time: huggingface_hub reads these once, at import.
        where = {"cache_dir": os.environ.get("HF_HUB_CACHE") or None,
                 "endpoint": os.environ.get("HF_ENDPOINT") or None}
        try:
            return snapshot_download(self.hf_repo, revision=self.revision, local_files_only=True, **where)
        except Exception:  # not cached (LocalEntryNotFoundError and friends)
            pass
        if self._offline():
            raise ModelUnavailable(
                f"model '{self.name}' ({self.hf_repo}) is not in the local Hugging Face cache and "
                f"downloads are off (model.offline=true or HF_HUB_OFFLINE=1). {self._download_hint()}")
        log.info("model '%s': downloading %s into the Hugging Face cache (once)", self.name, self.hf_repo)
        try:
            return snapshot_download(self.hf_repo, revision=self.revision, **where)
        except GatedRepoError:
            raise ModelUnavailable(
                f"model '{self.name}' ({self.hf_repo}) is gated: accept its licence on its Hugging "
                f"Face page, then log in with `hf auth login` (or set HF_TOKEN)") from None
        except RepositoryNotFoundError:
            raise ModelUnavailable(
                f"model '{self.name}': {self.hf_repo} was not found on the Hub (or needs a login: "
                f"`hf auth login`)") from None
        except Exception as exc:  # connection, disk: say what, never the token
            raise ModelUnavailable(
                f"model '{self.name}' ({self.hf_repo}) could not be downloaded "
                f"({type(exc).__name__}). {self._download_hint()}") from None

    def local_dir(self, cache_dir: str | os.PathLike) -> Path:
        """An mlx-lm loadable directory (converting the GGUF once, cached)."""
        where = self.check()
        if self.path or self.source == "hf":
            return Path(where)
        from components.training.gguf import ensure_mlx_model

        return ensure_mlx_model(Path(where), Path(cache_dir) / "models", dtype=self.dtype)
