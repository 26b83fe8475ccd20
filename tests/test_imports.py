"""The import graph of the project's own modules has no circle anywhere: imports inside
functions count too, since they only hide one. (That ``components`` never imports ``runner`` is
tests/test_architecture.py's.)"""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGES = ("components", "runner")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # ``from pkg import mod`` imports the module pkg.mod when there is one.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def _cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            # A package's __init__ importing its own modules is not a circle through them.
            if n.startswith(m + "."):
                continue
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    assert _cycle(graph()) is None, " -> ".join(_cycle(graph()) or [])


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_function_level_imports():
    g = graph()
    assert "components.llm.resilience" in g["runner.stages.extract"]


def test_the_wire_adapters_know_nothing_of_the_chain():
    """services.py (the HTTP clients) imports no part of the chain around them; the chain gets
    its settings from the group's ChainConfig, passed to it explicitly."""
    g = graph()
    chain = {f"components.llm.{m}" for m in
             ("resilience", "middleware", "breaker", "telemetry", "cache", "audit", "alerts", "routing")}
    assert not g["components.llm.services"] & chain, g["components.llm.services"] & chain
    import re

    text = (REPO / "components" / "llm" / "resilience.py").read_text(encoding="utf-8")
    assert not re.search(r"getattr\(primary, \"(routing|cache|privacy|audit|alerts|on_unavailable)\"", text)
