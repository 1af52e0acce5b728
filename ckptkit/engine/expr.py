"""Tensor expressions: how one output tensor is made from source tensors.

A layout conversion is a dict {output name: Expr}. Exprs are data (they print, compare and
serialise for `--dry-run`) and are evaluated lazily: with a fetch that loads real tensors they
give bytes, with a fetch that returns meta tensors they give shapes at no memory cost.
Every operation but `zeros` preserves bytes, so a layout change is bit-exact; `zeros` stands in
for a buffer an original file must carry but the diffusers model does not hold (Sana's pos_embed).
`fn` applies a transform another layer registered (FUNCTIONS; ComfyUI's fp8 quantization); `part`
picks one tensor of a transform that makes several (a library's quantized layer: data, scales, state),
and the executor evaluates such a transform once for all its parts (engine/produce.py).
`full` and `randn` (INIT_OPS with `zeros`) make new tensors from nothing but their arguments, for
layers a transform adds (the TrigFlow guidance embedder): `randn` is seeded and generated on the CPU,
so the same plan gives the same bytes on every machine. A fetch with a `device` attribute (e.g. one
that returns meta tensors) places them there. `shapes` needs no torch at all: it applies each op's
shape rule in Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch


@dataclass(frozen=True)
class Expr:
    op: str  # "src" | "cat" | "slice" | "reshape" | "t" | "zeros" | "arange" | "full" | "randn" | "eye"
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
        if op == "arange":  # rebuilt CLIP position_ids: int64 [1, n]
            return torch.arange(a[0], dtype=torch.int64)[None]
        if op == "zeros":  # dtype and device of the `like` tensor (meta stays meta)
            like = a[1].evaluate(fetch)
            return torch.zeros(a[0], dtype=like.dtype, device=like.device)
        if op in ("full", "randn", "eye"):
            return _init(op, a, getattr(fetch, "device", None))
        if op == "fn":  # a registered transform of one tensor (FUNCTIONS): name, input, parameters
            return FUNCTIONS[a[0]][0](a[1].evaluate(fetch), *a[2:])
        if op == "part":  # one tensor of a transform that makes a dict of them
            return a[0].evaluate(fetch)[a[1]]
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
        if op == "arange":
            return f"arange({a[0]})"
        if op == "full":
            return f"full({list(a[0])}, {a[1]!r}, {a[2]})"
        if op == "randn":
            return f"randn({list(a[0])}, seed {a[1]}, std {a[2]!r}, {a[3]})"
        if op == "eye":
            return f"eye({a[0][0]}, {a[1]})"
        if op == "fn":
            return f"{a[0]}({', '.join(map(str, a[1:]))})"
        if op == "part":
            return f"{a[0]}[{a[1]}]"
        return f"t({a[0]})"

    def to_json(self):
        if self.op == "src":
            return self.args[0]
        return {"op": self.op, "args": [x.to_json() if isinstance(x, Expr) else x for x in self.args]}


# name -> (evaluate(tensor, *params) -> tensor, shape(input shape, *params) -> shape): value transforms that
# other layers register (quant/comfy.py: ComfyUI's fp8 data and scale), so that a plan can name
# them as data while the engine stays free of their code. Not byte-preserving.
FUNCTIONS: dict[str, tuple[Callable, Callable]] = {}


def register(name: str, evaluate: Callable, shape: Callable) -> None:
    FUNCTIONS[name] = (evaluate, shape)


def fn(name: str, e: Expr, *params) -> Expr:
    """`name` (registered in FUNCTIONS) applied to `e`."""
    if name not in FUNCTIONS:
        raise ValueError(f"unknown function {name}")
    return Expr("fn", (name, e, *params))


def part(group: Expr, key: str) -> Expr:
    """The tensor `key` of `group`, an `fn` whose function returns a dict of tensors (and whose shape
    rule a dict of shapes)."""
    if group.op != "fn":
        raise ValueError(f"part of {group}: not a function")
    return Expr("part", (group, key))


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


def arange(n: int) -> Expr:
    return Expr("arange", (n,))


INIT_OPS = frozenset({"zeros", "full", "randn", "eye"})  # make data instead of moving it; `invert` skips them


def full(shape, value: float, dtype: str) -> Expr:
    """A tensor of `shape` filled with `value`; `dtype` a safetensors code ("F32", "BF16", ...)."""
    return Expr("full", (tuple(shape), float(value), dtype))


def eye(n: int, dtype: str) -> Expr:
    """An n x n identity matrix (the text_projection diffusers' SD3 CLIP-L carries and bundles lack)."""
    return Expr("eye", ((int(n), int(n)), dtype))


def randn(shape, seed: int, std: float, dtype: str) -> Expr:
    """Seeded normal values * `std` (drawn in float32 on the CPU, then cast to `dtype`)."""
    return Expr("randn", (tuple(shape), int(seed), float(std), dtype))


def _init(op: str, a: tuple, device) -> torch.Tensor:
    from ckptkit.formats.dtypes import to_torch

    shape, dtype = a[0], to_torch(a[-1])
    if str(device) == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    if op == "full":
        return torch.full(shape, a[1], dtype=dtype, device=device)
    if op == "eye":
        return torch.eye(shape[0], dtype=dtype, device=device)
    gen = torch.Generator().manual_seed(a[1])
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * a[2]).to(dtype=dtype, device=device)


def _infer_shape(e: Expr, source_shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The shape `e` evaluates to, by torch's rules for each op, in plain Python: evaluating on
    the meta device gave the same answers but its first torch.cat imports torch._dynamo (~1.2 s
    of every split's planning). A shape torch would refuse is a ValueError."""
    op, a = e.op, e.args
    if op == "src":
        return tuple(source_shapes[a[0]])
    if op == "fn":
        return tuple(FUNCTIONS[a[0]][1](_infer_shape(a[1], source_shapes), *a[2:]))
    if op == "part":
        g = a[0].args
        return tuple(FUNCTIONS[g[0]][1](_infer_shape(g[1], source_shapes), *g[2:])[a[1]])
    if op in ("zeros", "full", "randn", "eye"):
        return tuple(a[0])
    if op == "arange":
        return (1, a[0])
    inner = _infer_shape(a[0], source_shapes) if op != "cat" else None
    if op == "slice":
        dim, start, stop = a[1] % len(inner) if inner else a[1], a[2], a[3]
        if not inner or not 0 <= start <= stop <= inner[dim]:
            raise ValueError(f"{e}: slice [{start}:{stop}] of dim {a[1]} outside {list(inner)}")
        return inner[:dim] + (stop - start,) + inner[dim + 1:]
    if op == "reshape":
        shape, numel = list(a[1]), math.prod(inner)
        if shape.count(-1) == 1:
            rest = math.prod(x for x in shape if x != -1)
            shape[shape.index(-1)] = numel // rest if rest and numel % rest == 0 else -1
        if -1 in shape or math.prod(shape) != numel:
            raise ValueError(f"{e}: cannot reshape {list(inner)} to {list(a[1])}")
        return tuple(shape)
    if op == "t":
        if len(inner) > 2:
            raise ValueError(f"{e}: t() of a {len(inner)}-d tensor")
        return inner[::-1]
    if op == "cat":
        parts = [_infer_shape(p, source_shapes) for p in a[1:]]
        rank = len(parts[0])
        dim = a[0] % rank if rank else a[0]
        if not rank or any(len(p) != rank or p[:dim] + p[dim + 1:] != parts[0][:dim] + parts[0][dim + 1:]
                           for p in parts):
            raise ValueError(f"{e}: cannot concatenate {[list(p) for p in parts]} along dim {a[0]}")
        return parts[0][:dim] + (sum(p[dim] for p in parts),) + parts[0][dim + 1:]
    raise ValueError(f"unknown op {op}")


def rename(e: Expr, fn) -> Expr:
    """The same expression over renamed sources (e.g. with a bundle prefix added)."""
    if e.op == "src":
        return src(fn(e.args[0]))
    return Expr(e.op, tuple(rename(x, fn) if isinstance(x, Expr) else x for x in e.args))


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
    """Output shapes without data."""
    return {name: _infer_shape(e, source_shapes) for name, e in mapping.items()}


def identity(names, prefix_from: str = "", prefix_to: str = "") -> dict[str, Expr]:
    """Rename by prefix only."""
    return {prefix_to + n[len(prefix_from):]: src(n) for n in names if n.startswith(prefix_from)}


def shape_of(e: Expr, source_shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    return _infer_shape(e, source_shapes)


def invert(mapping: Mapping[str, Expr], source_shapes: Mapping[str, tuple[int, ...]],
           optional: frozenset[str] | set[str] = frozenset()) -> dict[str, Expr]:
    """The reverse of a layout map: {source name: Expr over the mapping's output names}.

    `mapping` gives each output as an Expr over sources (names with shapes `source_shapes`); the
    result rebuilds every source from the outputs. This lets one hand-written direction (ours,
    original <- diffusers) serve both ways, streaming. `zeros` outputs are simply not used; a
    source that no output covers completely is an error unless it is in `optional` (tied copies
    such as T5's `encoder.embed_tokens.weight`), which is then left out. Outputs made by INIT_OPS
    (`zeros`, `full`, `randn`) come from no source and are not used.
    """
    whole: dict[str, Expr] = {}
    pieces: dict[str, list[tuple[int, int, int, Expr]]] = {}

    def place(e: Expr, target: Expr) -> None:
        op, a = e.op, e.args
        if op == "src":
            whole[a[0]] = target
        elif op == "slice" and a[0].op == "src":
            pieces.setdefault(a[0].args[0], []).append((a[1], a[2], a[3], target))
        elif op == "reshape":
            place(a[0], reshape(target, shape_of(a[0], source_shapes)))
        elif op == "t":
            place(a[0], transpose(target))
        elif op == "cat":
            offset = 0
            for part in a[1:]:
                size = shape_of(part, source_shapes)[a[0]]
                place(part, narrow(target, a[0], offset, offset + size))
                offset += size
        elif op not in INIT_OPS:
            raise ValueError(f"cannot invert {e}")

    for name, e in mapping.items():
        place(e, src(name))
    for name, parts in pieces.items():
        if name in whole:
            continue
        dims = {p[0] for p in parts}
        parts.sort(key=lambda p: p[1])
        ends = [p[1] for p in parts[1:]] + [source_shapes[name][parts[0][0]]]
        if len(dims) != 1 or parts[0][1] != 0 or any(p[2] != end for p, end in zip(parts, ends)):
            raise ValueError(f"{name}: pieces {[(p[1], p[2]) for p in parts]} do not cover it")
        whole[name] = parts[0][3] if len(parts) == 1 else cat([p[3] for p in parts], dim=parts[0][0])
    missing = [n for n in source_shapes if n not in whole and n not in optional]
    if missing:
        raise ValueError(f"no output covers {missing[:3]}")
    return {name: whole[name] for name in source_shapes if name in whole}
