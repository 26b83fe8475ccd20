"""Config views and typed components.

``view`` gives a stage only the keys it declared, resolved and read-only; ``build`` turns a config
group into its typed component through ``_target_`` and names the key when a value is wrong.
"""
from __future__ import annotations

from typing import Any, Iterable

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pydantic import ValidationError

from runner.errors import StageError


class ConfigError(StageError):
    """A config value is missing or wrong; the message names the key."""


def view(cfg: DictConfig, keys: Iterable[str]) -> DictConfig:
    """A read-only config holding only ``keys`` (dotted paths), resolved against the full config."""
    out: dict[str, Any] = {}
    for key in keys:
        node = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False)
        if node is _MISSING:
            raise ConfigError(f"{key}: declared by a stage but not in the config")
        value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        parts = key.split(".")
        where = out
        for p in parts[:-1]:
            where = where.setdefault(p, {})
        where[parts[-1]] = value
    v = OmegaConf.create(out)
    OmegaConf.set_struct(v, True)
    OmegaConf.set_readonly(v, True)
    return v


_MISSING = object()


def build(node: DictConfig, key: str) -> Any:
    """Instantiate the component of config group ``key``; a bad value fails naming ``key.field``."""
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, ValidationError):
            raise ConfigError(validation_message(cause, key)) from None
        raise ConfigError(f"{key}: {cause or exc}") from cause
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, key)) from None


def validation_message(exc: ValidationError, key: str) -> str:
    lines = []
    for e in exc.errors():
        where = ".".join([key, *map(str, e["loc"])])
        got = f" (got {e['input']!r})" if e["type"] != "extra_forbidden" and "input" in e else ""
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{where}: {msg}{got}")
    return "; ".join(lines)


def resolve_hardware(cfg: DictConfig, jobs: int = 1):
    """Resolve the hardware profile for this machine once and publish its values as ``cfg.hw``,
    where components read them through interpolations (``${hw.convert_workers}``). With
    ``jobs`` > 1 (a parallel sweep) each job gets that share of the CPUs and memory."""
    from components.hardware import detect

    machine = detect()
    if jobs > 1:
        machine = {**machine, "cpus": max(1, machine["cpus"] // jobs),
                   "memory_gb": machine["memory_gb"] / jobs}
    hw = build(cfg.hardware, "hardware").resolve(machine)
    with open_dict(cfg):
        cfg.hw = hw.as_dict()
    return hw
