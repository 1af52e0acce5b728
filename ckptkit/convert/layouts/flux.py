"""FLUX.1 transformer: diffusers `FluxTransformer2DModel` <-> Black Forest Labs' original names.

Both directions are Expr maps built from the same tables, so they are exact inverses:
  * renames        one tensor, new name (`img_in.*` <-> `x_embedder.*`)
  * fused          one original tensor = cat(diffusers tensors) on dim 0
                   (`img_attn.qkv` = to_q|to_k|to_v, single-block `linear1` = to_q|to_k|to_v|proj_mlp)
  * swapped        `final_layer.adaLN_modulation.1` stores (shift, scale); diffusers' AdaLayerNormContinuous
                   wants (scale, shift). Swapping the halves is its own inverse.

Why `to_diffusers` does not call diffusers' `convert_flux_transformer_checkpoint_to_diffusers`: that
converter hard-codes `inner_dim = 3072` (and mlp_ratio 4) for the `linear1` split, so it fails on any other
width (our tiny fixtures, any future Flux-like model), and it pops from the dict it is given. Ours takes
the width from the tensors and is an Expr map (streamable, dry-runnable). The tests check that both give
the same bytes (diffusers' split patched to the tiny width) and the same names and shapes at full size.
"""

from __future__ import annotations

import torch

from ckptkit.convert.expr import Expr, apply, cat, chunks, src
from ckptkit.convert.layouts import register
from ckptkit.errors import CkptError

# original name (or module prefix ending in ".") -> diffusers name (or prefix)
TOP = {
    "img_in.": "x_embedder.",
    "txt_in.": "context_embedder.",
    "time_in.in_layer.": "time_text_embed.timestep_embedder.linear_1.",
    "time_in.out_layer.": "time_text_embed.timestep_embedder.linear_2.",
    "vector_in.in_layer.": "time_text_embed.text_embedder.linear_1.",
    "vector_in.out_layer.": "time_text_embed.text_embedder.linear_2.",
    "guidance_in.in_layer.": "time_text_embed.guidance_embedder.linear_1.",  # dev only
    "guidance_in.out_layer.": "time_text_embed.guidance_embedder.linear_2.",
    "final_layer.linear.": "proj_out.",
}
DOUBLE = {
    "img_mod.lin.": "norm1.linear.",
    "txt_mod.lin.": "norm1_context.linear.",
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
    "img_attn.proj.": "attn.to_out.0.",
    "txt_attn.proj.": "attn.to_add_out.",
    "img_mlp.0.": "ff.net.0.proj.",
    "img_mlp.2.": "ff.net.2.",
    "txt_mlp.0.": "ff_context.net.0.proj.",
    "txt_mlp.2.": "ff_context.net.2.",
}
SINGLE = {
    "modulation.lin.": "norm.linear.",
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
    "linear2.": "proj_out.",
}
# original module -> diffusers modules, concatenated on dim 0. Every piece is `inner` rows wide except
# the last, which takes the rest (the MLP part of `linear1`; for qkv the rest is `inner` too).
DOUBLE_FUSED = {
    "img_attn.qkv.": ("attn.to_q.", "attn.to_k.", "attn.to_v."),
    "txt_attn.qkv.": ("attn.add_q_proj.", "attn.add_k_proj.", "attn.add_v_proj."),
}
SINGLE_FUSED = {"linear1.": ("attn.to_q.", "attn.to_k.", "attn.to_v.", "proj_mlp.")}
SWAPPED = {"final_layer.adaLN_modulation.1.": "norm_out.linear."}

PARAMS = ("weight", "bias")


def _num_blocks(names, prefix: str) -> int:
    return 1 + max((int(n[len(prefix):].split(".", 1)[0]) for n in names if n.startswith(prefix)), default=-1)


def _scopes(names, double_prefix: str, single_prefix: str):
    """(original prefix, diffusers prefix, renames, fused) for the top level and every block."""
    yield "", "", TOP, {}
    for i in range(_num_blocks(names, double_prefix)):
        yield f"double_blocks.{i}.", f"transformer_blocks.{i}.", DOUBLE, DOUBLE_FUSED
    for i in range(_num_blocks(names, single_prefix)):
        yield f"single_blocks.{i}.", f"single_transformer_blocks.{i}.", SINGLE, SINGLE_FUSED


def _pairs(table: dict[str, str], o_pre: str, d_pre: str):
    """Full (original, diffusers) name pairs of a rename table, weight and bias for module prefixes."""
    for o, d in table.items():
        if o.endswith("."):
            for p in PARAMS:
                yield o_pre + o + p, d_pre + d + p
        else:
            yield o_pre + o, d_pre + d


def _swap_halves(e: Expr | str, rows: int) -> Expr:
    first, second = chunks(e, [rows // 2, rows // 2])
    return cat([second, first])


def _check_consumed(mapping: dict[str, Expr], names, side: str) -> None:
    used = {s for e in mapping.values() for s in e.sources()}
    left = sorted(set(names) - used)
    if left:
        raise CkptError(f"Flux {side} tensors with no known counterpart: {', '.join(left[:8])}"
                        + (f" (+{len(left) - 8} more)" if len(left) > 8 else ""))


class Flux:
    kind = "flux"

    def to_original(self, shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, Expr]:
        out: dict[str, Expr] = {}
        for o_pre, d_pre, renames, fused in _scopes(shapes, "transformer_blocks.", "single_transformer_blocks."):
            for o, d in _pairs(renames, o_pre, d_pre):
                if d in shapes:
                    out[o] = src(d)
            for o_mod, parts in fused.items():
                for p in PARAMS:
                    if d_pre + parts[0] + p in shapes:
                        out[o_pre + o_mod + p] = cat([d_pre + part + p for part in parts])
        for o, d in _pairs(SWAPPED, "", ""):
            out[o] = _swap_halves(d, shapes[d][0])
        _check_consumed(out, shapes, "diffusers")
        return out

    def to_diffusers_map(self, shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, Expr]:
        """The inverse of `to_original`, as Exprs over original names."""
        inner = shapes["img_in.weight"][0]  # the model width; diffusers assumes 3072
        out: dict[str, Expr] = {}
        for o_pre, d_pre, renames, fused in _scopes(shapes, "double_blocks.", "single_blocks."):
            for o, d in _pairs(renames, o_pre, d_pre):
                if o in shapes:
                    out[d] = src(o)
            for o_mod, parts in fused.items():
                for p in PARAMS:
                    o = o_pre + o_mod + p
                    if o in shapes:
                        sizes = [inner] * (len(parts) - 1)
                        sizes.append(shapes[o][0] - sum(sizes))
                        out.update(zip([d_pre + part + p for part in parts], chunks(o, sizes)))
        for o, d in _pairs(SWAPPED, "", ""):
            out[d] = _swap_halves(o, shapes[o][0])
        _check_consumed(out, shapes, "original")
        return out

    def to_diffusers(self, state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
        shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
        return apply(self.to_diffusers_map(shapes, config), state_dict.__getitem__)


register(Flux())
