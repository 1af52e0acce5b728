"""The package structure holds: no import cycles between ckptkit's modules (function-level imports
included: a cycle hidden in a function is still a cycle), and the engine and the readers know no
model family. docs/ARCHITECTURE.md "Packages and imports"."""

from __future__ import annotations

import ast
from pathlib import Path

import ckptkit

ROOT = Path(ckptkit.__file__).parent
# Leaves the engine and the readers may use: ggml's type table and kernels, llama.cpp's T5, LLM and
# mmproj names, errors, units.
LEAVES = ("ckptkit.errors", "ckptkit.units", "ckptkit.quant.types", "ckptkit.quant.ggml", "ckptkit.quant.t5_names",
          "ckptkit.quant.llm_names", "ckptkit.quant.mmproj_names")


def module_graph() -> dict[str, set[str]]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = path
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in mods:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    graph[name].add(sub if sub in mods else node.module)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in mods)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1
        stack.append(root); on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]; counter[0] += 1
                    stack.append(child); on.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop(); on.discard(m); comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles():
    assert cycles(module_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_engine_and_readers_know_no_family():
    graph = module_graph()
    for name, deps in graph.items():
        if not name.startswith(("ckptkit.engine", "ckptkit.formats")):
            continue
        foreign = sorted(d for d in deps if d != "ckptkit"  # the version
                         and not d.startswith(("ckptkit.engine", "ckptkit.formats", *LEAVES)))
        assert foreign == [], f"{name} imports {foreign}"
