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

`config_from_original` reads the diffusers config back from original-layout shapes (what a split or a
conversion has before any diffusers model exists). Everything but the patch size and the rotary split is
in the shapes; the head rule: the head dim is the length of the QK-norm scale (RMSNorm over one head;
128 in FLUX.1 and every derivative released: 3072 = 24 heads x 128), heads = width // head dim.
"""

from __future__ import annotations

import torch

from ckptkit.engine.expr import Expr, apply, cat, chunks, src
from ckptkit.convert.layouts import num_blocks, register
from ckptkit.convert.layouts.tables import (PARAMS, heads, pairs as _pairs, patch_size, per_patch, rope_axes, size,
                                            swap_halves as _swap_halves)
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

FLUX1_HEAD_DIM = 128  # only used when a file has no double block to read the QK-norm length from
HEAD_DIM_FROM = ("double_blocks.0.img_attn.norm.query_norm.scale", "single_blocks.0.norm.query_norm.scale")
# diffusers config key -> (original tensor, dim): the size that key is
FROM_SHAPES = {
    "in_channels": ("img_in.weight", 1),
    "joint_attention_dim": ("txt_in.weight", 1),
    "pooled_projection_dim": ("vector_in.in_layer.weight", 1),
}


def _scopes(names, double_prefix: str, single_prefix: str):
    """(original prefix, diffusers prefix, renames, fused) for the top level and every block."""
    yield "", "", TOP, {}
    for i in range(num_blocks(names, double_prefix)):
        yield f"double_blocks.{i}.", f"transformer_blocks.{i}.", DOUBLE, DOUBLE_FUSED
    for i in range(num_blocks(names, single_prefix)):
        yield f"single_blocks.{i}.", f"single_transformer_blocks.{i}.", SINGLE, SINGLE_FUSED


def _size(shapes: dict[str, tuple[int, ...]], name: str, dim: int) -> int:
    if name not in shapes:
        raise CkptError(f"not a Flux transformer in original layout: no {name}")
    return shapes[name][dim]


def _head_dim(shapes: dict[str, tuple[int, ...]]) -> int:
    return next((shapes[n][0] for n in HEAD_DIM_FROM if n in shapes), FLUX1_HEAD_DIM)


def bfl_head_dim(shapes: dict[str, tuple[int, ...]], title: str) -> int:
    """The head width of a BFL-named transformer (FLUX.1's descendants): its QK-norm length."""
    return size(shapes, next((n for n in HEAD_DIM_FROM if n in shapes), HEAD_DIM_FROM[0]), 0, title)


def bfl_sizes(shapes: dict[str, tuple[int, ...]], base: dict, title: str) -> dict:
    """The config values Chroma and FLUX.2 read from their BFL names the same way (the patch size
    from `base`): widths, depths, heads, input/output and text channels."""
    head_dim = bfl_head_dim(shapes, title)
    patch = patch_size(base, title)
    in_channels = size(shapes, "img_in.weight", 1, title)
    out_channels = per_patch(shapes, "final_layer.linear.weight", 0, patch, title)
    return {
        "patch_size": patch,
        "in_channels": in_channels,
        # released configs say None for "same as in_channels"
        "out_channels": None if out_channels == in_channels else out_channels,
        "num_layers": num_blocks(shapes, "double_blocks."),
        "num_single_layers": num_blocks(shapes, "single_blocks."),
        "attention_head_dim": head_dim,
        "num_attention_heads": heads(size(shapes, "img_in.weight", 0, title), head_dim, title),
        "joint_attention_dim": size(shapes, "txt_in.weight", 1, title),
    }


def _check_consumed(mapping: dict[str, Expr], names, side: str) -> None:
    used = {s for e in mapping.values() for s in e.sources()}
    left = sorted(set(names) - used)
    if left:
        raise CkptError(f"Flux {side} tensors with no known counterpart: {', '.join(left[:8])}"
                        + (f" (+{len(left) - 8} more)" if len(left) > 8 else ""))


class Flux:
    kind = "flux"
    shape_keys = ("in_channels", "joint_attention_dim", "pooled_projection_dim", "out_channels", "num_layers",
                  "num_single_layers", "attention_head_dim", "num_attention_heads", "guidance_embeds")
    undetermined = {"axes_dims_rope": "the rotary split of a head over the position axes is not in the weights"}

    def placeholders(self, shapes: dict[str, tuple[int, ...]]) -> dict:
        """Stand-ins for `undetermined` that give the right names and shapes whatever the real values
        are (one head): only for reading names and shapes (convert/configs.py, not strict)."""
        head_dim = _head_dim(shapes)
        k = head_dim // 6 * 2
        return {"axes_dims_rope": [head_dim - 2 * k, k, k] if k else [head_dim]}

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

    def config_from_original(self, shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
        """The diffusers config of a component from its original-layout (prefix-stripped) shapes.
        `base` is the resolved config (convert/configs.py): used only for what shapes cannot tell
        (`patch_size`, `axes_dims_rope`)."""
        width = _size(shapes, "img_in.weight", 0)
        head_dim = _head_dim(shapes)
        if width % head_dim:
            raise CkptError(f"Flux width {width} is not a whole number of {head_dim}-wide heads")
        patch = base.get("patch_size", 1)
        out_channels = _size(shapes, "final_layer.linear.weight", 0) // (patch * patch)
        config = {key: _size(shapes, name, dim) for key, (name, dim) in FROM_SHAPES.items()}
        return {
            "patch_size": patch,
            **config,
            # diffusers' released configs say None for "same as in_channels" (Fill/Depth/Canny differ)
            "out_channels": None if out_channels == config["in_channels"] else out_channels,
            "num_layers": num_blocks(shapes, "double_blocks."),
            "num_single_layers": num_blocks(shapes, "single_blocks."),
            "attention_head_dim": head_dim,
            "num_attention_heads": width // head_dim,
            "guidance_embeds": "guidance_in.in_layer.weight" in shapes,
            "axes_dims_rope": rope_axes(base, head_dim, "Flux"),
        }


register(Flux())
