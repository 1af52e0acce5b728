"""SD3 / SD3.5 MMDiT: original (Stability-AI/sd3.5 `sd3_impls`, ComfyUI) <-> diffusers
`SD3Transformer2DModel`. Names are component-local (no `model.diffusion_model.`).

`to_original` is the reverse of diffusers' `convert_sd3_transformer_checkpoint_to_diffusers`, which
`to_diffusers` calls. Differences between the two layouts:
  * q, k, v are fused: `joint_blocks.N.x_block.attn.qkv` = cat(attn.to_q, to_k, to_v);
    `context_block.attn.qkv` = cat(attn.add_q_proj, add_k_proj, add_v_proj);
    SD3.5-medium's `x_block.attn2.qkv` = cat(attn2.to_q, to_k, to_v).
  * The last joint block's context block is `pre_only`: it has only qkv (+ ln_q/ln_k) and an
    adaLN_modulation with two chunks, and so has `final_layer.adaLN_modulation`. Both store
    (shift, scale) where diffusers' `AdaLayerNormContinuous` wants (scale, shift): the halves swap.
    Swapping halves is its own inverse, so the same Expr serves both directions.
Which optional parts exist (qk-norm `ln_q/ln_k`, `attn2`) is read from the names, not the config.
"""

from __future__ import annotations

import math
import re

import torch

from ckptkit.engine.expr import Expr, cat, chunks, src
from ckptkit.convert.layouts import register
from ckptkit.convert.layouts.hf_text import head_count, layer_indices, read_dims
from ckptkit.errors import CkptError

WB = ("weight", "bias")

TOP_LEVEL = {  # original: diffusers
    "pos_embed": "pos_embed.pos_embed",
    "x_embedder.proj.weight": "pos_embed.proj.weight",
    "x_embedder.proj.bias": "pos_embed.proj.bias",
    **{f"t_embedder.mlp.{i}.{p}": f"time_text_embed.timestep_embedder.linear_{j}.{p}"
       for i, j in ((0, 1), (2, 2)) for p in WB},
    **{f"y_embedder.mlp.{i}.{p}": f"time_text_embed.text_embedder.linear_{j}.{p}"
       for i, j in ((0, 1), (2, 2)) for p in WB},
    **{f"context_embedder.{p}": f"context_embedder.{p}" for p in WB},
    **{f"final_layer.linear.{p}": f"proj_out.{p}" for p in WB},
}
SWAPPED_TOP_LEVEL = {f"final_layer.adaLN_modulation.1.{p}": f"norm_out.linear.{p}" for p in WB}

BLOCK = {  # joint_blocks.N.<original>: transformer_blocks.N.<diffusers>; absent ones are skipped
    **{f"x_block.attn.proj.{p}": f"attn.to_out.0.{p}" for p in WB},
    "x_block.attn.ln_q.weight": "attn.norm_q.weight",
    "x_block.attn.ln_k.weight": "attn.norm_k.weight",
    **{f"x_block.attn2.proj.{p}": f"attn2.to_out.0.{p}" for p in WB},
    "x_block.attn2.ln_q.weight": "attn2.norm_q.weight",
    "x_block.attn2.ln_k.weight": "attn2.norm_k.weight",
    **{f"x_block.adaLN_modulation.1.{p}": f"norm1.linear.{p}" for p in WB},
    **{f"x_block.mlp.fc1.{p}": f"ff.net.0.proj.{p}" for p in WB},
    **{f"x_block.mlp.fc2.{p}": f"ff.net.2.{p}" for p in WB},
    **{f"context_block.attn.proj.{p}": f"attn.to_add_out.{p}" for p in WB},
    "context_block.attn.ln_q.weight": "attn.norm_added_q.weight",
    "context_block.attn.ln_k.weight": "attn.norm_added_k.weight",
    **{f"context_block.mlp.fc1.{p}": f"ff_context.net.0.proj.{p}" for p in WB},
    **{f"context_block.mlp.fc2.{p}": f"ff_context.net.2.{p}" for p in WB},
}
# Swapped (shift, scale) <-> (scale, shift) in the last (pre_only) block only.
CONTEXT_MODULATION = {f"context_block.adaLN_modulation.1.{p}": f"norm1_context.linear.{p}" for p in WB}
QKV = {  # fused original: the diffusers q, k, v modules
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}

DIFFUSERS_BLOCK = re.compile(r"transformer_blocks\.(\d+)\.")
ORIGINAL_BLOCK = re.compile(r"joint_blocks\.(\d+)\.")

# `config_from_original`. Heads are not in the shapes (fused qkv is [3 * hidden, hidden] whatever the
# split): the head width comes from the resolved config (convert/configs.py; 64 in every released
# SD3 / SD3.5, sd3_impls: heads = depth, hidden = 64 * depth), heads = hidden // it.
CONFIG_DIMS = {  # SD3Transformer2DModel key: (original name, dim)
    "in_channels": ("x_embedder.proj.weight", 1),
    "patch_size": ("x_embedder.proj.weight", 2),
    "caption_projection_dim": ("context_embedder.weight", 0),
    "joint_attention_dim": ("context_embedder.weight", 1),
    "pooled_projection_dim": ("y_embedder.mlp.0.weight", 1),
}
MEASURES = {  # shapes that give keys by arithmetic (see config_from_original)
    "hidden": ("x_embedder.proj.weight", 0),
    "out_features": ("final_layer.linear.weight", 0),  # patch_size**2 * out_channels
    "positions": ("pos_embed", 1),  # [1, max_size**2, hidden]
}
QK_NORM = "joint_blocks.0.x_block.attn.ln_q.weight"  # present: qk_norm="rms_norm"


class MMDiT:
    kind = "mmdit"
    shape_keys = ("in_channels", "patch_size", "caption_projection_dim", "joint_attention_dim", "pooled_projection_dim",
                  "num_layers", "out_channels", "pos_embed_max_size", "qk_norm", "dual_attention_layers")
    undetermined = {"attention_head_dim": "head width: the fused qkv is [3 * hidden, hidden] whatever the split"}

    def placeholders(self, shapes: dict[str, tuple[int, ...]]) -> dict:
        """Stand-ins for `undetermined` that give the right names and shapes whatever the real values
        are (one head): only for reading names and shapes (convert/configs.py, not strict)."""
        return {"attention_head_dim": read_dims(shapes, MEASURES, self.kind)["hidden"]}

    def to_original(self, shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, Expr]:
        out = {orig: src(name) for orig, name in TOP_LEVEL.items()}
        out.update({orig: _swap_halves(name, shapes) for orig, name in SWAPPED_TOP_LEVEL.items()})
        blocks = sorted({int(m.group(1)) for n in shapes if (m := DIFFUSERS_BLOCK.match(n))})
        for i in blocks:
            orig_block, block = f"joint_blocks.{i}.", f"transformer_blocks.{i}."
            for orig, name in BLOCK.items():
                if block + name in shapes:
                    out[orig_block + orig] = src(block + name)
            pre_only = i == blocks[-1]
            for orig, name in CONTEXT_MODULATION.items():
                out[orig_block + orig] = _swap_halves(block + name, shapes) if pre_only else src(block + name)
            for orig, parts in QKV.items():
                for p in WB:
                    if f"{block}{parts[0]}.{p}" in shapes:
                        out[f"{orig_block}{orig}.{p}"] = cat([f"{block}{part}.{p}" for part in parts])

        missing = sorted({s for e in out.values() for s in e.sources()} - set(shapes))
        if missing:
            raise CkptError(f"mmdit layout: the transformer has no {missing[:3]}")
        left = sorted(set(shapes) - {s for e in out.values() for s in e.sources()})
        if left:
            raise CkptError(f"mmdit layout: {len(left)} tensor(s) have no original name, e.g. {left[:3]}")
        return out

    def to_diffusers(self, state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
        remaining = dict(state_dict)  # the converter pops what it uses; what stays was not converted
        from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers  # late: importing diffusers costs ~3 s
        out = convert_sd3_transformer_checkpoint_to_diffusers(remaining)
        if remaining:
            raise CkptError(f"mmdit layout: {len(remaining)} tensor(s) not converted, e.g. {sorted(remaining)[:3]}")
        return out

    def config_from_original(self, shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
        """The config of a component from its original-layout (prefix-stripped) shapes. `base` is the
        resolved config (convert/configs.py): used only for what shapes cannot tell (head width, sample_size)."""
        config = read_dims(shapes, CONFIG_DIMS, self.kind)
        m = read_dims(shapes, MEASURES, self.kind)
        blocks = layer_indices(shapes, ORIGINAL_BLOCK)
        return {
            **base, **config,
            "num_layers": len(blocks),
            "attention_head_dim": base.get("attention_head_dim"),
            "num_attention_heads": head_count(m["hidden"], base.get("attention_head_dim"), self.kind),
            "out_channels": m["out_features"] // config["patch_size"] ** 2,
            "pos_embed_max_size": _square_side(m["positions"]),
            "qk_norm": "rms_norm" if QK_NORM in shapes else None,
            "dual_attention_layers": tuple(i for i in blocks if f"joint_blocks.{i}.x_block.attn2.qkv.weight" in shapes),
        }


def _square_side(n: int) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise CkptError(f"mmdit layout: pos_embed has {n} positions, not a square grid")
    return side


def _swap_halves(name: str, shapes: dict[str, tuple[int, ...]]) -> Expr:
    if name not in shapes:
        raise CkptError(f"mmdit layout: the transformer has no {name!r}")
    half = shapes[name][0] // 2
    shift, scale = chunks(name, [half, half])
    return cat([scale, shift])


register(MMDiT())
