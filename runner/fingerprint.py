"""What decides a stage's outputs, hashed: its code, its declared config and its inputs.

The code is found rather than listed, so it cannot go stale: the stage's module, the project
modules it imports (read from the source, so imports inside functions count), the modules its
config's ``_target_`` names, and so on transitively. Modules are looked up as files under the
project root, which lets a test point the walk at a copy of the tree.
"""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from components.files import hash_path, json_sha256

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("components", "runner")
# The contract types, not behaviour: editing them must not invalidate every output.
FRAMEWORK = {"runner.stage", "components.tracking"}
# Bump when outputs made by old code must be invalidated for a reason the code hash misses.
PIPELINE_VERSION = "2"


def module_file(name: str, root: Path = ROOT) -> Path | None:
    base = root.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


@lru_cache(maxsize=None)
def _imports(path: Path, mtime_ns: int, name: str) -> tuple[str, ...]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append(mod)
            # `from components.llm import extraction` imports a module, not a name.
            found += [f"{mod}.{a.name}" for a in node.names]
    return tuple(found)


def code_modules(roots: Iterable[str], root: Path = ROOT) -> dict[str, Path]:
    """The project modules reachable from ``roots`` by import, with their files."""
    seen: dict[str, Path] = {}
    todo = [r for r in roots]
    while todo:
        name = todo.pop()
        if name in seen or name.split(".")[0] not in PROJECT or name in FRAMEWORK:
            continue
        path = module_file(name, root)
        if path is None:
            continue
        seen[name] = path
        parts = name.split(".")
        # Importing a.b.c runs a/__init__ and a/b/__init__ first.
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += _imports(path, path.stat().st_mtime_ns, name)
    return seen


def targets(node: Any) -> list[str]:
    """Modules named by ``_target_`` anywhere in a config subtree."""
    out: list[str] = []
    if isinstance(node, dict):
        t = node.get("_target_")
        if isinstance(t, str):
            out.append(t)
            out.append(t.rpartition(".")[0])  # a class or function in that module
        for v in node.values():
            out += targets(v)
    elif isinstance(node, list):
        for v in node:
            out += targets(v)
    return out


def code_hash(stage_module: str, view: DictConfig, root: Path = ROOT) -> dict[str, str]:
    config = OmegaConf.to_container(view, resolve=True)
    mods = code_modules([stage_module, *targets(config)], root)
    return {name: hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            for name, path in sorted(mods.items())}


def _without(config: dict, keys: list[str]) -> dict:
    """``config`` less the dotted ``keys`` (settings that change how fast, not what)."""
    for key in keys:
        *path, last = key.split(".")
        node = config
        for k in path:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return config


def config_identity(stage, view) -> dict:
    """The part of a stage's config view that decides its outputs: all of it but the keys the
    stage lists in ``NOT_FINGERPRINTED``."""
    return _without(OmegaConf.to_container(view, resolve=True), getattr(stage, "NOT_FINGERPRINTED", []))


def fingerprint(stage, ctx, root: Path = ROOT) -> str:
    """``ctx``: the stage's ``StageContext`` (its config view and run directory)."""
    view, run_dir = ctx.cfg, ctx.run_dir
    parts: dict[str, Any] = {
        "v": PIPELINE_VERSION,
        "stage": stage.__name__,
        "code": code_hash(stage.__name__, view, root),
        "config": config_identity(stage, view),
        "inputs": {i: hash_path(run_dir / i) for i in stage.INPUTS},
        "optional": {i: hash_path(run_dir / i) if (run_dir / i).exists() else None
                     for i in getattr(stage, "OPTIONAL_INPUTS", [])},
    }
    extra = getattr(stage, "fingerprint_extra", None)
    if extra:
        parts["extra"] = extra(ctx)
    return json_sha256(parts)
