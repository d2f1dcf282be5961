"""Imports point down, without cycles or private names taken across modules.

Read from the source (every import counts, at module level or inside a function). Layers, lowest first:
errors; store and config; encoders; ingest and indexes; query; search, evaluation and train; api; serve and
distributed; cli. A module may import its own layer or lower ones. ``KNOWN`` lists what the code still does
against these rules: it may only shrink (a test below fails when an entry is fixed, so the list stays true).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mmsearch",)
LAYERS = {
    "mmsearch": 0, "mmsearch.errors": 0,
    "mmsearch.store": 1, "mmsearch.config": 1,
    "mmsearch.encoders": 2,
    "mmsearch.ingest": 3, "mmsearch.indexes": 3,
    "mmsearch.query": 4,
    "mmsearch.search": 5, "mmsearch.evaluation": 5, "mmsearch.train": 5,
    "mmsearch.api": 6,
    "mmsearch.serve": 7, "mmsearch.distributed": 7,
    "mmsearch.cli": 8, "mmsearch.__main__": 8,
}

#: what the code still does against the rules: nothing since issue 17; a finding fails the test, not a new entry here
KNOWN: set[str] = set()


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def _resolve(module: str, is_pkg: bool, level: int, name: str | None) -> str:
    if not level:
        return name or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([name] if name else []))


def _layer(module: str) -> int | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    return None


def findings() -> set[str]:
    """Every cycle, private cross-module import and upward import in the source, one line each."""
    mods = _modules()
    trees = {m: ast.parse(p.read_text(encoding="utf-8"), str(p)) for m, (p, _) in mods.items()}
    reexport = {}
    for m, (_, is_pkg) in mods.items():
        for node in ast.walk(trees[m]) if is_pkg else ():
            if isinstance(node, ast.ImportFrom) and _resolve(m, True, node.level, node.module) in mods:
                for a in node.names:
                    reexport[(m, a.asname or a.name)] = _resolve(m, True, node.level, node.module)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    out: set[str] = set()
    for m, (_, is_pkg) in mods.items():
        for node in ast.walk(trees[m]):
            targets = []
            if isinstance(node, ast.ImportFrom):
                src = _resolve(m, is_pkg, node.level, node.module)
                for a in node.names:
                    if f"{src}.{a.name}" in mods:
                        targets.append(f"{src}.{a.name}")
                    elif src in mods:
                        target, seen = src, set()
                        while (target, a.name) in reexport and target not in seen and mods[target][1]:
                            seen.add(target)
                            target = reexport[(target, a.name)]
                        targets.append(target)
                        if a.name.startswith("_") and not a.name.startswith("__") and target != m:
                            out.add(f"private: {m} imports {a.name} from {target}")
            elif isinstance(node, ast.Import):
                targets += [a.name for a in node.names if a.name in mods]
            for t in targets:
                if t == m or (is_pkg and t.startswith(m + ".")) or (mods[t][1] and m.startswith(t + ".")):
                    continue
                edges[m].add(t)
                if not is_pkg and (_layer(t) or 0) > (_layer(m) or 0):
                    out.add(f"upward: {m} imports {t}")
    out.update(f"cycle: {' <-> '.join(c)}" for c in _cycles(edges))
    return out


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_new_cycles_private_imports_or_upward_imports() -> None:
    new = sorted(findings() - KNOWN)
    assert not new, "imports must point down, without cycles or private names:\n" + "\n".join(new)


def test_the_known_list_only_holds_what_is_still_there() -> None:
    fixed = sorted(KNOWN - findings())
    assert not fixed, "fixed: remove from KNOWN in tests/test_import_structure.py:\n" + "\n".join(fixed)
