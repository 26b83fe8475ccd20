"""The `process` config schema, shared with the Rust binary (rust/src/config.rs).

Both sides reject unknown keys and apply the same rules, so a config that one engine accepts
the other accepts too.
"""
from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator

from components.processing.errors import ProcessingError
from components.settings import Settings


class _Strict(Settings):
    # Strict types as well: the Rust side (serde) converts nothing either.
    model_config = ConfigDict(strict=True)


class NormalizeConfig(_Strict):
    nfc: bool
    strip_page_furniture: bool
    strip_toc: bool
    strip_toc_block: bool
    reflow: bool


class ChunkConfig(_Strict):
    max_chars: int = Field(ge=1)
    overlap_chars: int = Field(ge=0)
    min_chars: int = Field(ge=0)
    clause_headings: bool
    mark_boilerplate: bool

    @model_validator(mode="after")
    def _budget(self) -> "ChunkConfig":
        if self.overlap_chars >= self.max_chars:
            raise ValueError("chunk.overlap_chars must be < chunk.max_chars")
        if self.min_chars > self.max_chars:
            raise ValueError("chunk.min_chars must be <= chunk.max_chars")
        return self


class DedupConfig(_Strict):
    exact: bool
    near: bool
    shingle_size: int = Field(ge=1)
    num_perm: int = Field(ge=1)
    bands: int = Field(ge=1)
    threshold: float = Field(gt=0.0, le=1.0)
    seed: int = Field(ge=0, lt=2**64)

    @model_validator(mode="after")
    def _bands(self) -> "DedupConfig":
        if self.num_perm % self.bands:
            raise ValueError("dedup.num_perm must be a multiple of dedup.bands")
        return self


class FilterConfig(_Strict):
    min_chars: int = Field(ge=0)
    min_words: int = Field(ge=0)
    min_alpha_ratio: float = Field(ge=0.0, le=1.0)
    max_table_density: float = Field(ge=0.0, le=1.0)


class ProcessConfig(_Strict):
    engine: Literal["auto", "rust", "python"]
    timeout_s: float = Field(gt=0.0)
    threads: int = Field(ge=0)
    input_dir: str
    output_path: str
    normalize: NormalizeConfig
    chunk: ChunkConfig
    dedup: DedupConfig
    filters: FilterConfig

    @property
    def clusters_path(self) -> str:
        """The duplicate clusters' file: ``output_path`` with its extension replaced by
        ``clusters.jsonl`` (rust/SPEC.md, "Output")."""
        return str(Path(self.output_path).with_suffix(".clusters.jsonl"))


def process_config(group: Mapping[str, Any], input_dir: str | PathLike | None = None,
                   output_path: str | PathLike | None = None, source: str = "process config") -> ProcessConfig:
    """Validates the `process` config group, adding the run's input and output paths."""
    raw = {k: v for k, v in group.items() if k != "_target_"}  # Hydra's, not the engines'
    if input_dir is not None:
        raw["input_dir"] = str(Path(input_dir).resolve())
    if output_path is not None:
        raw["output_path"] = str(Path(output_path).resolve())
    try:
        return ProcessConfig.model_validate(raw)
    except ValidationError as exc:
        raise ProcessingError("config", f"invalid config: {exc}", source) from exc


def write_config(cfg: ProcessConfig, path: str | PathLike) -> Path:
    """Writes the config the binary reads (atomically)."""
    from components.files import write_text

    write_text(path, yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    return Path(path)
