"""Tensor expressions: how one output tensor is made from source tensors.

A layout conversion is a dict {output name: Expr}. Exprs are data (they print, compare and
serialise for `--dry-run`) and are evaluated lazily: with a fetch that loads real tensors they
give bytes, with a fetch that returns meta tensors they give shapes at no memory cost.
Every operation but `zeros` preserves bytes, so a layout change is bit-exact; `zeros` stands in
for a buffer an original file must carry but the diffusers model does not hold (Sana's pos_embed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch


@dataclass(frozen=True)
class Expr:
    op: str  # "src" | "cat" | "slice" | "reshape" | "t" | "zeros"
    args: tuple

    def sources(self) -> list[str]:
        if self.op == "src":
            return [self.args[0]]
        out: list[str] = []
        for arg in self.args:
            if isinstance(arg, Expr):
                out.extend(arg.sources())
        return out

    def evaluate(self, fetch: Callable[[str], torch.Tensor]) -> torch.Tensor:
        op, a = self.op, self.args
        if op == "src":
            return fetch(a[0])
        if op == "cat":
            return torch.cat([e.evaluate(fetch) for e in a[1:]], dim=a[0])
        if op == "slice":
            return a[0].evaluate(fetch).narrow(a[1], a[2], a[3] - a[2])
        if op == "reshape":
            return a[0].evaluate(fetch).reshape(a[1])
        if op == "t":
            return a[0].evaluate(fetch).t()
        if op == "zeros":  # dtype and device of the `like` tensor (meta stays meta)
            like = a[1].evaluate(fetch)
            return torch.zeros(a[0], dtype=like.dtype, device=like.device)
        raise ValueError(f"unknown op {op}")

    def __str__(self) -> str:
        op, a = self.op, self.args
        if op == "src":
            return a[0]
        if op == "cat":
            return f"cat[{a[0]}]({', '.join(map(str, a[1:]))})"
        if op == "slice":
            return f"{a[0]}[{a[1]}:{a[2]}:{a[3]}]"
        if op == "reshape":
            return f"reshape({a[0]}, {list(a[1])})"
        if op == "zeros":
            return f"zeros({list(a[0])}, like {a[1]})"
        return f"t({a[0]})"

    def to_json(self):
        if self.op == "src":
            return self.args[0]
        return {"op": self.op, "args": [x.to_json() if isinstance(x, Expr) else x for x in self.args]}


def src(name: str) -> Expr:
    return Expr("src", (name,))


def cat(parts, dim: int = 0) -> Expr:
    parts = tuple(p if isinstance(p, Expr) else src(p) for p in parts)
    return Expr("cat", (dim, *parts))


def narrow(e: Expr | str, dim: int, start: int, stop: int) -> Expr:
    return Expr("slice", (e if isinstance(e, Expr) else src(e), dim, start, stop))


def reshape(e: Expr | str, shape) -> Expr:
    return Expr("reshape", (e if isinstance(e, Expr) else src(e), tuple(shape)))


def transpose(e: Expr | str) -> Expr:
    return Expr("t", (e if isinstance(e, Expr) else src(e),))


def zeros(shape, like: Expr | str) -> Expr:
    """A zero tensor of `shape` with the dtype of `like` (not byte-preserving: see module doc)."""
    return Expr("zeros", (tuple(shape), like if isinstance(like, Expr) else src(like)))


def chunks(e: Expr | str, sizes: list[int], dim: int = 0) -> list[Expr]:
    """Split along `dim` into consecutive pieces of the given sizes."""
    out, start = [], 0
    for size in sizes:
        out.append(narrow(e, dim, start, start + size))
        start += size
    return out


def apply(mapping: Mapping[str, Expr], fetch: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Evaluate a whole mapping (small models: tests, fixtures). Outputs never alias each other."""
    return {name: e.evaluate(fetch).contiguous().clone() if e.op != "src" else e.evaluate(fetch)
            for name, e in mapping.items()}


def shapes(mapping: Mapping[str, Expr], source_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Output shapes without data: evaluate on the meta device."""
    def fetch(name):
        return torch.empty(source_shapes[name], device="meta")

    return {name: tuple(e.evaluate(fetch).shape) for name, e in mapping.items()}


def identity(names, prefix_from: str = "", prefix_to: str = "") -> dict[str, Expr]:
    """Rename by prefix only."""
    return {prefix_to + n[len(prefix_from):]: src(n) for n in names if n.startswith(prefix_from)}
