"""Z-Image transformer (Tongyi-MAI's single-stream DiT, 6B; Z-Image-Turbo): diffusers
`ZImageTransformer2DModel` <-> the original names of ComfyUI's NextDiT (comfy/ldm/lumina/model.py,
`z_image_turbo_bf16.safetensors`), which Lumina 2 shares (lumina2.py) except where Z-Image differs
in structure: pad tokens (`x_pad_token`, `cap_pad_token`), modulation without a SiLU in front
(`adaLN_modulation.0`, Lumina 2's is `.1`), a 256-wide time embedding.

    original                                diffusers
    x_embedder.*                            all_x_embedder.{patch}-{f_patch}.*
    final_layer.{linear,adaLN_modulation.1} all_final_layer.{patch}-{f_patch}.*
    N.attention.qkv.weight                  cat(N.attention.to_q, to_k, to_v)   (dim 0)
    N.attention.out / q_norm / k_norm       N.attention.to_out.0 / norm_q / norm_k
    norm_final.weight                       (none: unused by both models; dropped)
    everything else                         the same name

for N in `layers.i`, `noise_refiner.i`, `context_refiner.i`. diffusers' own converter
(convert_z_image_transformer_checkpoint_to_diffusers) hard-codes the `2-1` embedder and cuts qkv
in three equal parts; ours takes the patch key from the config and cuts qkv as `dim` query rows and
two equal key/value parts, which is the same for every Z-Image (diffusers' class has no
grouped-query attention: it ignores `n_kv_heads`, so a file whose qkv says kv heads != heads is
refused by the config rule instead of being cut wrongly).

What the shapes tell: the width (`x_embedder` rows), the head width (the per-head RMSNorm length of
`attention.q_norm`, hence heads), kv heads (qkv rows), the text width (`cap_embedder.1` columns),
the depths, `qk_norm`, and patch^2 x f_patch x channels (`x_embedder` columns). The FFN width is
no config value in diffusers (int(dim / 3 * 8), checked). What they do not: the patch sizes, the
rotary split and table lengths, rope_theta, t_scale, norm_eps.
"""

from __future__ import annotations

from ckptkit.convert.layouts import num_blocks, register
from ckptkit.convert.layouts.tables import (Blocks, TableLayout, gqa_kv_heads, heads, rope_axes, rope_lens,
                                            rope_placeholder, size)
from ckptkit.errors import CkptError

TITLE = "Z-Image transformer"
HEAD_NORM = "layers.0.attention.q_norm.weight"
QKV = "layers.0.attention.qkv.weight"

TOP = {
    "x_pad_token": "x_pad_token",
    "cap_pad_token": "cap_pad_token",
    "cap_embedder.0.": "cap_embedder.0.",
    "cap_embedder.1.": "cap_embedder.1.",
    "t_embedder.mlp.0.": "t_embedder.mlp.0.",
    "t_embedder.mlp.2.": "t_embedder.mlp.2.",
}
BLOCK = {
    "attention.out.": "attention.to_out.0.",
    "attention.q_norm.": "attention.norm_q.",
    "attention.k_norm.": "attention.norm_k.",
    "attention_norm1.": "attention_norm1.",
    "attention_norm2.": "attention_norm2.",
    "ffn_norm1.": "ffn_norm1.",
    "ffn_norm2.": "ffn_norm2.",
    "feed_forward.w1.": "feed_forward.w1.",
    "feed_forward.w2.": "feed_forward.w2.",
    "feed_forward.w3.": "feed_forward.w3.",
    "adaLN_modulation.0.": "adaLN_modulation.0.",  # none in context_refiner
}
FUSED = {"attention.qkv.": ("attention.to_q.", "attention.to_k.", "attention.to_v.")}
BLOCKS = tuple(Blocks(name, name, BLOCK, FUSED, split="gqa") for name in ("layers.", "noise_refiner.", "context_refiner."))
DROPPED = {"norm_final.weight": "NextDiT's unused final RMSNorm (diffusers' converter drops it too)"}


def _patches(config: dict) -> tuple[int, int]:
    """The one (patch, frame patch) pair the original layout's single x_embedder / final_layer holds."""
    p, f = config.get("all_patch_size"), config.get("all_f_patch_size")
    if (not isinstance(p, (list, tuple)) or not isinstance(f, (list, tuple)) or len(p) != 1 or len(f) != 1
            or not all(isinstance(v, int) and v > 0 for v in (*p, *f))):
        raise CkptError(f"{TITLE}: all_patch_size / all_f_patch_size must be one positive integer each (the "
                        f"original layout holds one x_embedder), not {p!r} / {f!r}")
    return p[0], f[0]


def _config_renames(config: dict) -> dict:
    key = "{}-{}".format(*_patches(config))
    return {"x_embedder.": f"all_x_embedder.{key}.", "final_layer.linear.": f"all_final_layer.{key}.linear.",
            "final_layer.adaLN_modulation.1.": f"all_final_layer.{key}.adaLN_modulation.1."}


def _config(shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
    dim = size(shapes, "x_embedder.weight", 0, TITLE)
    if HEAD_NORM not in shapes:
        raise CkptError(f"{TITLE}: no {HEAD_NORM}: without the per-head q norm the head width is not in the weights")
    head_dim = size(shapes, HEAD_NORM, 0, TITLE)
    n_heads = heads(dim, head_dim, TITLE)
    kv_heads = gqa_kv_heads(shapes, QKV, dim, head_dim, TITLE)
    if kv_heads != n_heads:
        raise CkptError(f"{TITLE}: {kv_heads} key/value heads for {n_heads} query heads: diffusers' "
                        "ZImageTransformer2DModel has no grouped-query attention (it ignores n_kv_heads)")
    ffn = size(shapes, "layers.0.feed_forward.w1.weight", 0, TITLE)
    if ffn != int(dim / 3 * 8):
        raise CkptError(f"{TITLE}: FFN width {ffn}, but ZImageTransformer2DModel fixes it at int(dim / 3 * 8) "
                        f"= {int(dim / 3 * 8)}")
    refiners = num_blocks(shapes, "noise_refiner.")
    if num_blocks(shapes, "context_refiner.") != refiners:
        raise CkptError(f"{TITLE}: {refiners} noise refiner blocks but {num_blocks(shapes, 'context_refiner.')} "
                        "context refiner blocks; the class has n_refiner_layers of each")
    siglip = sorted(n for n in shapes if n.startswith("siglip_"))
    if siglip:
        raise CkptError(f"{TITLE}: {siglip[0]}: Z-Image Omni's SigLIP branch is not supported")
    p, f = _patches(base)
    cols = size(shapes, "x_embedder.weight", 1, TITLE)
    per_token = p * p * f
    if cols % per_token or size(shapes, "final_layer.linear.weight", 0, TITLE) != cols:
        raise CkptError(f"{TITLE}: x_embedder has {cols} columns and final_layer {shapes['final_layer.linear.weight'][0]}"
                        f" rows: not the same patch ({p}x{p}x{f}) x channels")
    axes = rope_axes(base, head_dim, TITLE, key="axes_dims")
    lens = rope_lens(base, axes, TITLE)
    return {
        "all_patch_size": [p],
        "all_f_patch_size": [f],
        "in_channels": cols // per_token,
        "dim": dim,
        "n_layers": num_blocks(shapes, "layers."),
        "n_refiner_layers": refiners,
        "n_heads": n_heads,
        "n_kv_heads": kv_heads,
        "qk_norm": True,
        "cap_feat_dim": size(shapes, "cap_embedder.1.weight", 1, TITLE),
        "siglip_feat_dim": None,
        "axes_dims": axes,
        "axes_lens": lens,
        **{k: base[k] for k in ("norm_eps", "rope_theta", "t_scale") if k in base},
    }


def _placeholders(shapes: dict[str, tuple[int, ...]]) -> dict:
    cols = size(shapes, "x_embedder.weight", 1, TITLE)
    head_dim = size(shapes, HEAD_NORM, 0, TITLE)
    return {"all_patch_size": [2] if cols % 4 == 0 else [1], "all_f_patch_size": [1],
            "axes_dims": rope_placeholder(head_dim), "axes_lens": [1024, 512, 512], "rope_theta": 256.0,
            "t_scale": 1000.0, "norm_eps": 1e-5}


LAYOUT = register(TableLayout(
    kind="z_image", title=TITLE, config_rule=_config, top=TOP, blocks=BLOCKS, width=("x_embedder.weight", 0),
    dropped=DROPPED, config_renames=_config_renames, placeholder_rule=_placeholders,
    shape_keys=("in_channels", "dim", "n_layers", "n_refiner_layers", "n_heads", "n_kv_heads", "qk_norm",
                "cap_feat_dim"),
    undetermined={
        "all_patch_size": "how many latent pixels one token packs: x_embedder holds patch^2 x frame patch x channels",
        "all_f_patch_size": "the frame patch: x_embedder holds patch^2 x frame patch x channels",
        "axes_dims": "the rotary split of a head over the position axes is not in the weights",
        "axes_lens": "the rotary tables' lengths (largest positions) are not in the weights",
        "rope_theta": "the rotary base frequency is not in the weights",
        "t_scale": "the timestep scale applied before the time embedding is not in the weights",
        "norm_eps": "the RMSNorm epsilon is not in the weights",
    },
))
