"""Lumina 2 transformer (Alpha-VLLM's Lumina-Image-2.0 NextDiT, 2.6B): diffusers
`Lumina2Transformer2DModel` <-> the original names (Alpha-VLLM's release and ComfyUI's NextDiT,
comfy/ldm/lumina/model.py, `lumina_2_model_bf16.safetensors`), which Z-Image shares (z_image.py).

    original                                diffusers
    cap_embedder.{0,1}                      time_caption_embed.caption_embedder.{0,1}
    t_embedder.mlp.{0,2}                    time_caption_embed.timestep_embedder.linear_{1,2}
    final_layer.adaLN_modulation.1          norm_out.linear_1
    final_layer.linear                      norm_out.linear_2      (no (shift, scale) swap: a scale only)
    N.attention.qkv.weight                  cat(N.attn.to_q, to_k, to_v): q = width rows, k = v = kv_heads x head_dim
    N.attention.out / q_norm / k_norm       N.attn.to_out.0 / norm_q / norm_k
    N.feed_forward.w{1,2,3}                 N.feed_forward.linear_{1,2,3}
    N.adaLN_modulation.1                    N.norm1.linear
    N.attention_norm1                       N.norm1.norm  (context_refiner: N.norm1, an RMSNorm)
    N.attention_norm2 / ffn_norm1 / 2       N.norm2 / ffn_norm1 / ffn_norm2
    norm_final.weight                       (none: unused; dropped)

for N in `layers.i`, `noise_refiner.i` (modulated) and `context_refiner.i`. diffusers' converter
(convert_lumina2_to_diffusers) hard-codes q = 2304 and k = v = 768 rows for the qkv split and the
context refiner indices 0 and 1; ours takes the widths from the tensors.

What the shapes tell: the width (`x_embedder` rows), the head width (the `q_norm` length, hence
heads), kv heads (qkv rows), the text width (`cap_embedder.1` columns), the depths, patch^2 x
channels in and out, and the FFN width, which diffusers' class computes from `multiple_of` and
`ffn_dim_multiplier` (round_up(int(multiplier x 4 x width), multiple_of)): the base config's pair
when it gives the weights' FFN width, else a pair that does (every such pair builds the same
network). What they do not: the patch size, the rotary split and table lengths, norm_eps, and the
two values the forward never reads (sample_size, scaling_factor).
"""

from __future__ import annotations

import math

from ckptkit.convert.layouts import num_blocks, register
from ckptkit.convert.layouts.tables import (Blocks, TableLayout, gqa_kv_heads, heads, patch_size, per_patch, rope_axes,
                                            rope_lens, rope_placeholder, size)
from ckptkit.errors import CkptError

TITLE = "Lumina 2 transformer"
HEAD_NORM = "layers.0.attention.q_norm.weight"
QKV = "layers.0.attention.qkv.weight"
FFN = "layers.0.feed_forward.w1.weight"

TOP = {
    "x_embedder.": "x_embedder.",
    "cap_embedder.0.": "time_caption_embed.caption_embedder.0.",
    "cap_embedder.1.": "time_caption_embed.caption_embedder.1.",
    "t_embedder.mlp.0.": "time_caption_embed.timestep_embedder.linear_1.",
    "t_embedder.mlp.2.": "time_caption_embed.timestep_embedder.linear_2.",
    "final_layer.adaLN_modulation.1.": "norm_out.linear_1.",
    "final_layer.linear.": "norm_out.linear_2.",
}
_COMMON = {
    "attention.out.": "attn.to_out.0.",
    "attention.q_norm.": "attn.norm_q.",
    "attention.k_norm.": "attn.norm_k.",
    "attention_norm2.": "norm2.",
    "ffn_norm1.": "ffn_norm1.",
    "ffn_norm2.": "ffn_norm2.",
    "feed_forward.w1.": "feed_forward.linear_1.",
    "feed_forward.w2.": "feed_forward.linear_2.",
    "feed_forward.w3.": "feed_forward.linear_3.",
}
MODULATED = {**_COMMON, "attention_norm1.": "norm1.norm.", "adaLN_modulation.1.": "norm1.linear."}
CONTEXT = {**_COMMON, "attention_norm1.": "norm1."}
FUSED = {"attention.qkv.": ("attn.to_q.", "attn.to_k.", "attn.to_v.")}
BLOCKS = (Blocks("layers.", "layers.", MODULATED, FUSED, split="gqa"),
          Blocks("noise_refiner.", "noise_refiner.", MODULATED, FUSED, split="gqa"),
          Blocks("context_refiner.", "context_refiner.", CONTEXT, FUSED, split="gqa"))
DROPPED = {"norm_final.weight": "NextDiT's unused final RMSNorm (diffusers' converter drops it too)"}


def ffn_width(dim: int, multiple_of: int, multiplier: float | None) -> int:
    """diffusers' LuminaFeedForward hidden width for a Lumina2TransformerBlock (inner_dim = 4 x dim)."""
    inner = 4 * dim
    if multiplier is not None:
        inner = int(multiplier * inner)
    return multiple_of * ((inner + multiple_of - 1) // multiple_of)


def _valid(multiple_of, multiplier) -> bool:
    return (isinstance(multiple_of, int) and not isinstance(multiple_of, bool) and multiple_of > 0
            and (multiplier is None or (isinstance(multiplier, (int, float)) and multiplier > 0)))


def ffn_pair(dim: int, ffn: int, base: dict) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) that give the FFN width `ffn`: the base config's when they do,
    else multiple_of halved from the base's (256 in the release) down to 1 with no multiplier, else the
    smallest multiplier with such a multiple_of dividing `ffn`. The pair only sizes the FFN, so any pair
    that gives the weights' width builds the same network."""
    k0, m0 = base.get("multiple_of", 256), base.get("ffn_dim_multiplier")
    if _valid(k0, m0) and ffn_width(dim, k0, m0) == ffn:
        return k0, m0
    start = k0 if isinstance(k0, int) and not isinstance(k0, bool) and k0 > 0 else 256
    candidates = []
    while start >= 1:
        candidates.append(start)
        start //= 2
    for k in candidates:
        if ffn_width(dim, k, None) == ffn:
            return k, None
    k = next(k for k in candidates if ffn % k == 0)  # 1 always divides
    m = ffn / (4 * dim)
    while int(m * 4 * dim) < ffn:  # float rounding: the smallest multiplier whose int() reaches ffn
        m = math.nextafter(m, math.inf)
    if ffn_width(dim, k, m) != ffn:
        raise CkptError(f"{TITLE}: no multiple_of / ffn_dim_multiplier gives FFN width {ffn} at width {dim}")
    return k, m


def _config(shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
    width = size(shapes, "x_embedder.weight", 0, TITLE)
    head_dim = size(shapes, HEAD_NORM, 0, TITLE)
    n_heads = heads(width, head_dim, TITLE)
    kv_heads = gqa_kv_heads(shapes, QKV, width, head_dim, TITLE)
    refiners = num_blocks(shapes, "noise_refiner.")
    if num_blocks(shapes, "context_refiner.") != refiners:
        raise CkptError(f"{TITLE}: {refiners} noise refiner blocks but {num_blocks(shapes, 'context_refiner.')} "
                        "context refiner blocks; the class has num_refiner_layers of each")
    patch = patch_size(base, TITLE)
    in_channels = per_patch(shapes, "x_embedder.weight", 1, patch, TITLE)
    out_channels = per_patch(shapes, "final_layer.linear.weight", 0, patch, TITLE)
    multiple_of, multiplier = ffn_pair(width, size(shapes, FFN, 0, TITLE), base)
    axes = rope_axes(base, head_dim, TITLE, key="axes_dim_rope")
    lens = rope_lens(base, axes, TITLE)
    return {
        "patch_size": patch,
        "in_channels": in_channels,
        # diffusers' released config says None for "same as in_channels"
        "out_channels": None if out_channels == in_channels else out_channels,
        "hidden_size": width,
        "num_layers": num_blocks(shapes, "layers."),
        "num_refiner_layers": refiners,
        "num_attention_heads": n_heads,
        "num_kv_heads": kv_heads,
        "multiple_of": multiple_of,
        "ffn_dim_multiplier": multiplier,
        "cap_feat_dim": size(shapes, "cap_embedder.1.weight", 1, TITLE),
        "axes_dim_rope": axes,
        "axes_lens": lens,
        **{k: base[k] for k in ("sample_size", "norm_eps", "scaling_factor") if k in base},
    }


def _placeholders(shapes: dict[str, tuple[int, ...]]) -> dict:
    cols = size(shapes, "x_embedder.weight", 1, TITLE)
    out_rows = size(shapes, "final_layer.linear.weight", 0, TITLE)
    return {"patch_size": 2 if cols % 4 == 0 and out_rows % 4 == 0 else 1,
            "axes_dim_rope": rope_placeholder(size(shapes, HEAD_NORM, 0, TITLE)), "axes_lens": [300, 512, 512],
            "sample_size": 128, "norm_eps": 1e-5, "scaling_factor": 1.0}


LAYOUT = register(TableLayout(
    kind="lumina2", title=TITLE, config_rule=_config, top=TOP, blocks=BLOCKS, width=("x_embedder.weight", 0),
    dropped=DROPPED, placeholder_rule=_placeholders,
    shape_keys=("in_channels", "out_channels", "hidden_size", "num_layers", "num_refiner_layers",
                "num_attention_heads", "num_kv_heads", "multiple_of", "ffn_dim_multiplier", "cap_feat_dim"),
    undetermined={
        "patch_size": "how many latent pixels one token packs: x_embedder and final_layer hold patch^2 x channels",
        "axes_dim_rope": "the rotary split of a head over the position axes is not in the weights",
        "axes_lens": "the rotary tables' lengths (largest positions) are not in the weights",
        "norm_eps": "the RMSNorm epsilon is not in the weights",
        "sample_size": "the default latent side the pipeline uses is not in the weights",
        "scaling_factor": "a config value the forward never reads; not in the weights",
    },
))
