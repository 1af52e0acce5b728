"""Table-driven layout maps for diffusion transformers whose original names differ from diffusers'
by renames, dim-0 concatenations (fused qkv) and swapped halves: the newer DiT families are data
here (one `TableLayout` each), with only their config rule written out.

A table maps an original name (or a module prefix ending in ".", for its weight and bias) to the
diffusers name. `Blocks` repeats a table over numbered blocks (`double_blocks.N.` <->
`transformer_blocks.N.`). `fused` concatenates diffusers modules on dim 0 into one original module
(q|k|v -> qkv); `split` says how to cut it back: "equal" pieces, or `width` rows each but the last,
which takes the rest (FLUX's single-block linear1 = q|k|v|mlp), or "gqa": `width` rows for the first
(the queries), the rest in equal pieces (grouped-query keys and values: Lumina 2's qkv, k = v =
kv_heads x head_dim). `swapped` stores the two halves of
a tensor the other way round (BFL's final (shift, scale) against diffusers' (scale, shift)).
`passthrough`: names in no table are the same on both sides (Qwen-Image, HiDream: ComfyUI loads the
diffusers names); otherwise a name no table covers is an error, never silently dropped.
`dropped`: original tensors the original model holds but never uses, with no diffusers counterpart
(NextDiT's `norm_final.weight`): accepted on the way to diffusers and left out, never made back.
`config_renames`: renames that depend on the config (Z-Image's `all_x_embedder.{patch}-{f_patch}.`).

Both directions are Expr maps from the same tables, so they are exact inverses and stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ckptkit.convert.layouts import num_blocks
from ckptkit.engine.expr import Expr, apply, cat, chunks, src
from ckptkit.errors import CkptError

PARAMS = ("weight", "bias")


@dataclass(frozen=True)
class Blocks:
    original: str  # numbered block prefix in original names ("double_blocks.")
    diffusers: str  # the same blocks in diffusers names ("transformer_blocks.")
    renames: dict = field(default_factory=dict)  # original -> diffusers, inside one block
    fused: dict = field(default_factory=dict)  # original module -> diffusers modules, cat on dim 0
    split: str = "equal"  # "equal" | "width": `width` rows each, the last piece takes the rest | "gqa" (see above)
    swapped: dict = field(default_factory=dict)  # original -> diffusers, halves swapped


def pairs(table: dict[str, str], o_pre: str = "", d_pre: str = ""):
    """Full (original, diffusers) name pairs of a rename table: weight and bias for module prefixes."""
    for o, d in table.items():
        if o.endswith("."):
            for p in PARAMS:
                yield o_pre + o + p, d_pre + d + p
        else:
            yield o_pre + o, d_pre + d


def swap_halves(e: Expr | str, rows: int) -> Expr:
    first, second = chunks(e, [rows // 2, rows // 2])
    return cat([second, first])


@dataclass(frozen=True)
class TableLayout:
    kind: str
    title: str  # "Qwen-Image transformer", for messages
    config_rule: Callable[[dict, dict], dict]  # (original shapes, base config) -> diffusers config
    top: dict = field(default_factory=dict)
    blocks: tuple[Blocks, ...] = ()
    swapped: dict = field(default_factory=dict)  # top level, halves swapped
    width: tuple[str, int] | None = None  # (original tensor, dim) giving the model width, for split="width"
    passthrough: bool = False
    shape_keys: tuple[str, ...] = ()
    undetermined: dict = field(default_factory=dict)
    placeholder_rule: Callable[[dict], dict] | None = None
    dropped: dict = field(default_factory=dict)  # original name -> why it has no diffusers counterpart
    config_renames: Callable[[dict], dict] | None = None  # config -> more top-level renames

    def _scopes(self, names, side: str, config: dict):
        """(original prefix, diffusers prefix, renames, fused, swapped, split) for the top and every block."""
        top = {**self.top, **self.config_renames(config)} if self.config_renames else self.top
        yield "", "", top, {}, self.swapped, "equal"
        for b in self.blocks:
            for i in range(num_blocks(names, b.original if side == "original" else b.diffusers)):
                yield f"{b.original}{i}.", f"{b.diffusers}{i}.", b.renames, b.fused, b.swapped, b.split

    def to_original(self, shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, Expr]:
        out: dict[str, Expr] = {}
        for o_pre, d_pre, renames, fused, swapped, _ in self._scopes(shapes, "diffusers", config):
            out.update({o: src(d) for o, d in pairs(renames, o_pre, d_pre) if d in shapes})
            for o_mod, parts in fused.items():
                for p in PARAMS:
                    if d_pre + parts[0] + p in shapes:
                        out[o_pre + o_mod + p] = cat([d_pre + part + p for part in parts])
            out.update({o: swap_halves(d, shapes[d][0]) for o, d in pairs(swapped, o_pre, d_pre) if d in shapes})
        return self._finish(out, shapes, "diffusers")

    def to_diffusers_map(self, shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, Expr]:
        """The inverse of `to_original`, as Exprs over original names."""
        out: dict[str, Expr] = {}
        for o_pre, d_pre, renames, fused, swapped, split in self._scopes(shapes, "original", config):
            out.update({d: src(o) for o, d in pairs(renames, o_pre, d_pre) if o in shapes})
            for o_mod, parts in fused.items():
                for p in PARAMS:
                    o = o_pre + o_mod + p
                    if o in shapes:
                        out.update(zip([d_pre + part + p for part in parts], chunks(o, self._sizes(shapes, o, parts, split))))
            out.update({d: swap_halves(o, shapes[o][0]) for o, d in pairs(swapped, o_pre, d_pre) if o in shapes})
        return self._finish(out, shapes, "original")

    def to_diffusers(self, state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
        shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
        return apply(self.to_diffusers_map(shapes, config), state_dict.__getitem__)

    def _sizes(self, shapes, name: str, parts, split: str) -> list[int]:
        rows = shapes[name][0]
        if split == "width":
            width = shapes[self.width[0]][self.width[1]]
            return [width] * (len(parts) - 1) + [rows - width * (len(parts) - 1)]
        if split == "gqa":
            width = shapes[self.width[0]][self.width[1]]
            rest = rows - width
            if rest <= 0 or rest % (len(parts) - 1):
                raise CkptError(f"{self.title}: {name} has {rows} rows, not {width} query rows and "
                                f"{len(parts) - 1} equal key/value parts")
            return [width] + [rest // (len(parts) - 1)] * (len(parts) - 1)
        if rows % len(parts):
            raise CkptError(f"{self.title}: {name} has {rows} rows, not {len(parts)} equal parts")
        return [rows // len(parts)] * len(parts)

    def _finish(self, out: dict[str, Expr], shapes, side: str) -> dict[str, Expr]:
        used = {s for e in out.values() for s in e.sources()}
        left = sorted(set(shapes) - used - (set(self.dropped) if side == "original" else set()))
        if self.passthrough:
            clash = sorted(n for n in left if n in out)
            if clash:
                raise CkptError(f"{self.title}: {clash[0]} is both kept and made by a rename")
            out.update({n: src(n) for n in left})
        elif left:
            raise CkptError(f"{self.title}: {side} tensors with no known counterpart: {', '.join(left[:8])}"
                            + (f" (+{len(left) - 8} more)" if len(left) > 8 else ""))
        return out

    def config_from_original(self, shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
        return self.config_rule(shapes, base)

    def placeholders(self, shapes: dict[str, tuple[int, ...]]) -> dict:
        return self.placeholder_rule(shapes) if self.placeholder_rule else {}


def size(shapes: dict[str, tuple[int, ...]], name: str, dim: int, title: str) -> int:
    if name not in shapes:
        raise CkptError(f"not a {title} in original layout: no {name}")
    return shapes[name][dim]


def patch_size(base: dict, title: str) -> int:
    """The base config's patch size (never in these models' weights: their patchify layers hold
    patch^2 x channels as one number), checked."""
    patch = base.get("patch_size")
    if not isinstance(patch, int) or isinstance(patch, bool) or patch < 1:
        raise CkptError(f"{title}: patch_size must be a positive integer, not {patch!r}")
    return patch


def per_patch(shapes: dict[str, tuple[int, ...]], name: str, dim: int, patch: int, title: str) -> int:
    """Channels of a patchify / unpatchify layer: its `dim` size over patch^2, which must divide it."""
    return _per_cells(shapes, name, dim, patch * patch, f"patch_size^2 = {patch * patch}", title)


def per_volume(shapes: dict[str, tuple[int, ...]], name: str, kernel: tuple[int, ...], title: str) -> int:
    """Channels of a video model's unpatchify layer: its rows over the volume of the Conv3d patch
    `kernel` (t, h, w), which must divide them."""
    volume = kernel[0] * kernel[1] * kernel[2]
    return _per_cells(shapes, name, 0, volume, f"the patch volume {volume}", title)


def _per_cells(shapes: dict[str, tuple[int, ...]], name: str, dim: int, cells: int, what: str, title: str) -> int:
    n = size(shapes, name, dim, title)
    if n % cells:
        raise CkptError(f"{title}: {name} has {n} {'rows' if dim == 0 else 'columns'}, not a multiple of {what}")
    return n // cells


def conv3d_patch(shapes: dict[str, tuple[int, ...]], name: str, title: str) -> tuple[int, ...]:
    """The shape (width, in channels, t, h, w) of a video model's Conv3d patch embedding, checked 5-D."""
    shape = tuple(shapes[name]) if name in shapes else (size(shapes, name, 0, title),)
    if len(shape) != 5:
        raise CkptError(f"{title}: {name} is {len(shape)}-D, not the 5-D Conv3d patch embedding")
    return shape


def heads(width: int, head_dim, title: str) -> int:
    """Attention heads of a `width`-wide model with `head_dim`-wide heads, checked."""
    if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim < 1 or width % head_dim:
        raise CkptError(f"{title}: width {width} is not a whole number of {head_dim!r}-wide heads")
    return width // head_dim


def gqa_kv_heads(shapes: dict[str, tuple[int, ...]], qkv: str, width: int, head_dim: int, title: str) -> int:
    """Key/value heads of a fused q|k|v (the "gqa" split): `width` query rows, then two equal parts."""
    kv_rows = size(shapes, qkv, 0, title) - width
    if kv_rows <= 0 or kv_rows % (2 * head_dim):
        raise CkptError(f"{title}: {qkv} has {kv_rows + width} rows, not {width} query rows and two equal "
                        f"key/value parts of {head_dim}-wide heads")
    return kv_rows // (2 * head_dim)


def rope_lens(base: dict, axes: list[int], title: str) -> list[int]:
    """The positions per rotary axis (`axes_lens`): not in the weights, so from `base`, one per axis."""
    lens = base.get("axes_lens")
    if not isinstance(lens, (list, tuple)) or len(lens) != len(axes) or not all(isinstance(n, int) and n > 0 for n in lens):
        raise CkptError(f"{title}: axes_lens must be {len(axes)} positive integers (one per rotary axis), not {lens!r}")
    return list(lens)


def rope_axes(base: dict, head_dim: int, title: str, key: str = "axes_dims_rope") -> list[int]:
    """Rotary dims per position axis: not in the weights, so from `base`; they must add up to the head
    dim, or the rotary split of this model is unknown (never adapted by guessing)."""
    axes = base.get(key)
    if not isinstance(axes, (list, tuple)) or not all(isinstance(a, int) and a > 0 for a in axes):
        raise CkptError(f"{title} {key} must be a list of positive integers, not {axes!r}")
    if sum(axes) != head_dim:
        raise CkptError(f"{title} head dim {head_dim} but the base config's {key} {list(axes)} add up to "
                        f"{sum(axes)}: the rotary split of this model is unknown")
    return list(axes)


def rope_placeholder(head_dim: int, n_axes: int = 3) -> list[int]:
    """Axes that add up to `head_dim` (even sizes), for reading names and shapes only."""
    if n_axes == 3:
        k = head_dim // 6 * 2
        return [head_dim - 2 * k, k, k] if k else [head_dim]
    k = head_dim // (2 * n_axes) * 2
    return [head_dim - (n_axes - 1) * k] + [k] * (n_axes - 1)
