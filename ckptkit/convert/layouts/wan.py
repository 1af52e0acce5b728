"""Wan transformer (Wan 2.1 / 2.2: T2V, I2V, FLF2V, TI2V): diffusers `WanTransformer3DModel` <-> the
original names of Wan-Video's releases (Wan2.1/Wan2.2 `wan/modules/model.py`), which ComfyUI's split
files carry bare or under `model.diffusion_model.`. Renames only, the tables of diffusers'
scripts/convert_wan_to_diffusers.py (TRANSFORMER_KEYS_RENAME_DICT, huggingface/diffusers@58eb52c0);
no tensor is split or fused and every shape is kept, the 5-D patch embedding (Conv3d) and the
(1, 6, width) / (1, 2, width) modulation tables included.

What the shapes tell: the width and input channels (the Conv3d patch embedding), the patch itself
(its kernel: (1, 2, 2) as released), the output channels (head rows over the patch volume), the FFN
and text widths, the timestep frequency width, the depth, the 2.1 image branch (its CLIP width, the
added k/v projection) and FLF2V's two-image position table. What they do not: the head split (q/k
norms span the whole width), the norms' epsilon and the rotary table length.
"""

from __future__ import annotations

from ckptkit.convert.layouts import num_blocks, register
from ckptkit.convert.layouts.tables import Blocks, TableLayout, conv3d_patch, heads, per_volume, size

TITLE = "Wan transformer"
PATCH = "patch_embedding.weight"

TOP = {
    "patch_embedding.": "patch_embedding.",
    "text_embedding.0.": "condition_embedder.text_embedder.linear_1.",
    "text_embedding.2.": "condition_embedder.text_embedder.linear_2.",
    "time_embedding.0.": "condition_embedder.time_embedder.linear_1.",
    "time_embedding.2.": "condition_embedder.time_embedder.linear_2.",
    "time_projection.1.": "condition_embedder.time_proj.",
    "head.modulation": "scale_shift_table",
    "head.head.": "proj_out.",
    # Wan 2.1 I2V / FLF2V: the CLIP image embedding (LayerNorm, MLP, LayerNorm) and FLF2V's positions
    "img_emb.proj.0.": "condition_embedder.image_embedder.norm1.",
    "img_emb.proj.1.": "condition_embedder.image_embedder.ff.net.0.proj.",
    "img_emb.proj.3.": "condition_embedder.image_embedder.ff.net.2.",
    "img_emb.proj.4.": "condition_embedder.image_embedder.norm2.",
    "img_emb.emb_pos": "condition_embedder.image_embedder.pos_embed",
}
_ATTN = (("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("o.", "to_out.0."), ("norm_q.", "norm_q."),
         ("norm_k.", "norm_k."))
BLOCK = {
    "modulation": "scale_shift_table",
    **{f"self_attn.{o}": f"attn1.{d}" for o, d in _ATTN},
    **{f"cross_attn.{o}": f"attn2.{d}" for o, d in _ATTN},
    "cross_attn.k_img.": "attn2.add_k_proj.",
    "cross_attn.v_img.": "attn2.add_v_proj.",
    "cross_attn.norm_k_img.": "attn2.norm_added_k.",
    "norm3.": "norm2.",  # the cross-attention LayerNorm (Wan's norm1 / norm2 hold no weights)
    "ffn.0.": "ffn.net.0.proj.",
    "ffn.2.": "ffn.net.2.",
}


def _config(shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
    kernel = conv3d_patch(shapes, PATCH, TITLE)
    width, patch = kernel[0], list(kernel[2:])
    head_dim = base.get("attention_head_dim")
    config = {
        "patch_size": patch,
        "num_attention_heads": heads(width, head_dim, TITLE),
        "attention_head_dim": head_dim,
        "in_channels": kernel[1],
        "out_channels": per_volume(shapes, "head.head.weight", kernel[2:], TITLE),
        "text_dim": size(shapes, "text_embedding.0.weight", 1, TITLE),
        "freq_dim": size(shapes, "time_embedding.0.weight", 1, TITLE),
        "ffn_dim": size(shapes, "blocks.0.ffn.0.weight", 0, TITLE),
        "num_layers": num_blocks(shapes, "blocks."),
        "cross_attn_norm": "blocks.0.norm3.weight" in shapes,
        "qk_norm": "rms_norm_across_heads" if "blocks.0.self_attn.norm_q.weight" in shapes else None,
        "image_dim": shapes["img_emb.proj.1.weight"][1] if "img_emb.proj.1.weight" in shapes else None,
        "added_kv_proj_dim": (shapes["blocks.0.cross_attn.k_img.weight"][1]
                              if "blocks.0.cross_attn.k_img.weight" in shapes else None),
        "pos_embed_seq_len": shapes["img_emb.emb_pos"][1] if "img_emb.emb_pos" in shapes else None,
    }
    for key in ("eps", "rope_max_seq_len"):
        if key in base:
            config[key] = base[key]
    return config


def _placeholders(shapes: dict[str, tuple[int, ...]]) -> dict:
    return {"attention_head_dim": size(shapes, PATCH, 0, TITLE), "eps": 1e-6, "rope_max_seq_len": 1024}


LAYOUT = register(TableLayout(
    kind="wan", title=TITLE, config_rule=_config, placeholder_rule=_placeholders, top=TOP,
    blocks=(Blocks("blocks.", "blocks.", BLOCK),),
    shape_keys=("patch_size", "in_channels", "out_channels", "text_dim", "freq_dim", "ffn_dim", "num_layers",
                "cross_attn_norm", "qk_norm", "image_dim", "added_kv_proj_dim", "pos_embed_seq_len"),
    undetermined={
        "attention_head_dim": "head width: the q/k norms span the whole width, q/k/v are [width, width] whatever "
                              "the split",
        "eps": "the norms' epsilon is not in the weights",
        "rope_max_seq_len": "the rotary table's length is not in the weights",
    },
))
