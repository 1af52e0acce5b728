"""Sana / Sana-1.5 / Sana-Sprint transformer: diffusers `SanaTransformer2DModel` <-> NVlabs original names.

`to_original` is an Expr map: renames, `attn.qkv` = cat(to_q, to_k, to_v), `cross_attn.kv_linear` =
cat(to_k, to_v), plus two buffers that NVlabs' model always saves and diffusers does not keep:
  * `pos_embed` [1, (sample_size/patch)^2, width]: zeros unless the model uses absolute positions, and even
    then SanaMS recomputes it from its shape, never reading the values;
  * `y_embedder.y_embedding` [300, caption_channels]: the null caption used for caption dropout in training.
We write zeros for both (bit-exact for the 512/1024px releases, whose `pos_embed` is zeros). They must be
there: diffusers' converter pops both unconditionally, so a file without them does not load.

`to_diffusers` runs diffusers' own `convert_sana_transformer_to_diffusers` (single_file_utils; the rest of
its logic lives in scripts/convert_sana_to_diffusers.py, which is not importable), on a copy because it
pops from its input, and extends it for what it ignores (SANA 1.5 / Sprint): `attn.q_norm/k_norm` and
`cross_attn.q_norm/k_norm`, `cfg_embedder.*`, and Sprint's `time_embed.timestep_embedder.*` name (diffusers
always writes flow Sana's `time_embed.emb.timestep_embedder.*`). `logvar_linear.*` (training only) is dropped.

`config_from_original` reads the diffusers config back from original-layout shapes. Head widths are not in
the shapes (fused qkv / kv are width x width whatever the heads): the self-attention head dim (32 in every
released Sana, NVlabs' `linear_head_dim`) and the cross-attention head dim (72 in the 600M and Sprint 0.6B,
112 in the 1600M, 1.5 and Sprint 1.6B) come from the resolved config (convert/configs.py), heads = width // it.
"""

from __future__ import annotations

import math

import torch

from ckptkit.engine.expr import Expr, cat, src, zeros
from ckptkit.convert.layouts import num_blocks, register
from ckptkit.convert.layouts.tables import PARAMS, pairs as _pairs
from ckptkit.errors import CkptError

# original name (or module prefix ending in ".") -> diffusers name (or prefix); handled by diffusers too
TOP = {
    "x_embedder.proj.": "patch_embed.proj.",
    "t_block.1.": "time_embed.linear.",
    "y_embedder.y_proj.fc1.": "caption_projection.linear_1.",
    "y_embedder.y_proj.fc2.": "caption_projection.linear_2.",
    "attention_y_norm.weight": "caption_norm.weight",
    "final_layer.linear.": "proj_out.",
    "final_layer.scale_shift_table": "scale_shift_table",
}
TIME_FLOW = {"t_embedder.mlp.0.": "time_embed.emb.timestep_embedder.linear_1.",
             "t_embedder.mlp.2.": "time_embed.emb.timestep_embedder.linear_2."}
TIME_SPRINT = {"t_embedder.mlp.0.": "time_embed.timestep_embedder.linear_1.",
               "t_embedder.mlp.2.": "time_embed.timestep_embedder.linear_2."}
BLOCK = {
    "scale_shift_table": "scale_shift_table",
    "attn.proj.": "attn1.to_out.0.",
    "cross_attn.q_linear.": "attn2.to_q.",
    "cross_attn.proj.": "attn2.to_out.0.",
    "mlp.inverted_conv.conv.": "ff.conv_inverted.",
    "mlp.depth_conv.conv.": "ff.conv_depth.",
    "mlp.point_conv.conv.": "ff.conv_point.",
}
# original module -> diffusers modules, concatenated on dim 0 in equal parts
BLOCK_FUSED = {
    "attn.qkv.": ("attn1.to_q.", "attn1.to_k.", "attn1.to_v."),
    "cross_attn.kv_linear.": ("attn2.to_k.", "attn2.to_v."),
}
# SANA 1.5 / Sprint names that diffusers' single-file converter ignores
TOP_EXTRA = {"cfg_embedder.mlp.0.": "time_embed.guidance_embedder.linear_1.",
             "cfg_embedder.mlp.2.": "time_embed.guidance_embedder.linear_2."}
BLOCK_EXTRA = {
    "attn.q_norm.weight": "attn1.norm_q.weight",
    "attn.k_norm.weight": "attn1.norm_k.weight",
    "cross_attn.q_norm.weight": "attn2.norm_q.weight",
    "cross_attn.k_norm.weight": "attn2.norm_k.weight",
}
BUFFERS = ("pos_embed", "y_embedder.y_embedding")  # saved by NVlabs, not kept by diffusers
TRAINING_ONLY = ("logvar_linear.weight", "logvar_linear.bias")
MODEL_MAX_LENGTH = 300  # caption tokens: the rows of y_embedding in every released Sana

# what shapes cannot tell: copied from the base config when it sets them (else diffusers' defaults);
# guidance_embeds_scale (Sprint's cfg input scale) and timestep_scale are read by the pipelines
FROM_BASE = ("dropout", "norm_elementwise_affine", "norm_eps", "interpolation_scale", "guidance_embeds_scale",
             "timestep_scale")


def _unknown(names, side: str) -> CkptError:
    names = sorted(names)
    more = f" (+{len(names) - 8} more)" if len(names) > 8 else ""
    return CkptError(f"Sana {side} tensors with no known counterpart: {', '.join(names[:8])}{more}")


def _shape(shapes: dict[str, tuple[int, ...]], name: str) -> tuple[int, ...]:
    if name not in shapes:
        raise CkptError(f"not a Sana transformer in original layout: no {name}")
    return shapes[name]


def _size(shapes: dict[str, tuple[int, ...]], name: str, dim: int) -> int:
    return _shape(shapes, name)[dim]


def _heads(width: int, base: dict, key: str) -> int:
    head_dim = base.get(key)
    if not isinstance(head_dim, int) or head_dim <= 0:
        raise CkptError(f"Sana {key} {head_dim!r} is not a positive integer")
    if width % head_dim:
        raise CkptError(f"Sana width {width} is not a whole number of {key} {head_dim}")
    return width // head_dim


def _mlp_ratio(shapes: dict[str, tuple[int, ...]], width: int) -> float:
    """GLUMBConv: `inverted_conv` has 2 * int(mlp_ratio * width) rows."""
    hidden = _size(shapes, "blocks.0.mlp.inverted_conv.conv.weight", 0) // 2
    ratio = hidden / width
    if int(ratio * width) != hidden:
        raise CkptError(f"Sana MLP width {hidden} is no mlp_ratio of width {width} that diffusers reproduces")
    return ratio


def _sample_size(shapes: dict[str, tuple[int, ...]], patch: int, base: dict) -> int:
    """pos_embed is [1, (sample_size / patch)^2, width]; a file stripped of it keeps the base's."""
    if "pos_embed" not in shapes:
        return base.get("sample_size", 32)
    tokens = shapes["pos_embed"][1]
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise CkptError(f"Sana pos_embed has {tokens} positions, not a square grid")
    return grid * patch


def _qk_norm(shapes: dict[str, tuple[int, ...]], width: int) -> str | None:
    """NVlabs' q/k RMSNorm spans all heads (SANA 1.5, Sprint): its length is the width."""
    if "blocks.0.attn.q_norm.weight" not in shapes:
        return None
    return "rms_norm_across_heads" if shapes["blocks.0.attn.q_norm.weight"][0] == width else "rms_norm"


class Sana:
    kind = "sana"
    shape_keys = ("in_channels", "out_channels", "num_layers", "cross_attention_dim", "caption_channels", "mlp_ratio",
                  "attention_bias", "patch_size", "qk_norm", "guidance_embeds")
    undetermined = {
        "attention_head_dim": "self-attention head width: the fused qkv is [3 * width, width] whatever the split",
        "cross_attention_head_dim": "cross-attention head width: q and the fused kv are width wide whatever the split",
    }

    def placeholders(self, shapes: dict[str, tuple[int, ...]]) -> dict:
        """Stand-ins for `undetermined` that give the right names and shapes whatever the real values
        are (one head): only for reading names and shapes (convert/configs.py, not strict)."""
        width = _size(shapes, "x_embedder.proj.weight", 0)
        return {"attention_head_dim": width, "cross_attention_head_dim": width}

    def to_original(self, shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, Expr]:
        out: dict[str, Expr] = {}
        pairs = [*_pairs(TOP), *_pairs(TIME_FLOW), *_pairs(TIME_SPRINT), *_pairs(TOP_EXTRA)]
        for i in range(num_blocks(shapes, "transformer_blocks.")):
            o_pre, d_pre = f"blocks.{i}.", f"transformer_blocks.{i}."
            pairs += [*_pairs(BLOCK, o_pre, d_pre), *_pairs(BLOCK_EXTRA, o_pre, d_pre)]
            for o_mod, parts in BLOCK_FUSED.items():
                for p in PARAMS:
                    if d_pre + parts[0] + p in shapes:
                        out[o_pre + o_mod + p] = cat([d_pre + part + p for part in parts])
        out.update({o: src(d) for o, d in pairs if d in shapes})

        width = shapes["patch_embed.proj.weight"][0]
        grid = config.get("sample_size", 32) // config.get("patch_size", 1)
        caption_channels = shapes["caption_projection.linear_1.weight"][1]
        out["pos_embed"] = zeros((1, grid * grid, width), like="patch_embed.proj.weight")
        out["y_embedder.y_embedding"] = zeros((config.get("model_max_length", MODEL_MAX_LENGTH), caption_channels),
                                              like="patch_embed.proj.weight")

        left = set(shapes) - {s for e in out.values() for s in e.sources()}
        if left:
            raise _unknown(left, "diffusers")
        return out

    def to_diffusers(self, state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
        sd = dict(state_dict)  # diffusers' converter pops what it converts
        extra = {}
        pairs = list(_pairs(TOP_EXTRA))
        for i in range(num_blocks(sd, "blocks.")):
            pairs += _pairs(BLOCK_EXTRA, f"blocks.{i}.", f"transformer_blocks.{i}.")
        for o, d in pairs:
            if o in sd:
                extra[d] = sd.pop(o)
        for name in TRAINING_ONLY:
            sd.pop(name, None)
        for name in BUFFERS:  # diffusers pops and discards these; a stripped file must not raise KeyError
            sd.setdefault(name, torch.empty(0))

        from diffusers.loaders.single_file_utils import convert_sana_transformer_to_diffusers  # late: importing diffusers costs ~3 s
        out = convert_sana_transformer_to_diffusers(sd)
        if sd:  # diffusers silently ignores what it does not know
            raise _unknown(sd, "original")
        if "time_embed.guidance_embedder.linear_1.weight" in extra:  # Sprint: no `emb.` level
            out = {k.replace("time_embed.emb.timestep_embedder.", "time_embed.timestep_embedder."): v
                   for k, v in out.items()}
        out.update(extra)
        return out

    def config_from_original(self, shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
        """The diffusers config of a component from its original-layout (prefix-stripped) shapes.
        `base` is the resolved config (convert/configs.py): used only for what shapes cannot tell (head
        widths, `FROM_BASE`, sample_size without pos_embed)."""
        width, in_channels, patch, _ = _shape(shapes, "x_embedder.proj.weight")  # a p x p conv
        return {
            "in_channels": in_channels,
            "out_channels": _size(shapes, "final_layer.linear.weight", 0) // (patch * patch),
            "num_attention_heads": _heads(width, base, "attention_head_dim"),
            "attention_head_dim": base.get("attention_head_dim"),
            "num_layers": num_blocks(shapes, "blocks."),
            "num_cross_attention_heads": _heads(width, base, "cross_attention_head_dim"),
            "cross_attention_head_dim": base.get("cross_attention_head_dim"),
            "cross_attention_dim": _size(shapes, "blocks.0.cross_attn.kv_linear.weight", 1),
            "caption_channels": _size(shapes, "y_embedder.y_proj.fc1.weight", 1),
            "mlp_ratio": _mlp_ratio(shapes, width),
            "attention_bias": "blocks.0.attn.qkv.bias" in shapes,
            "sample_size": _sample_size(shapes, patch, base),
            "patch_size": patch,
            "qk_norm": _qk_norm(shapes, width),
            "guidance_embeds": "cfg_embedder.mlp.0.weight" in shapes,
            **{key: base[key] for key in FROM_BASE if key in base},
        }


register(Sana())
