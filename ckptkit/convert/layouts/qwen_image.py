"""Qwen-Image transformer (MMDiT, 60 dual-stream blocks in the release). ComfyUI's model
(comfy/ldm/qwen_image/model.py) and the released `qwen_image*.safetensors` use diffusers'
`QwenImageTransformer2DModel` names, so the layout map is the identity; only the config rule
is this family's.

What the shapes tell: the width (`img_in` rows), the head width (the per-head RMSNorm length of
`attn.norm_q`), the packed input channels (`img_in` columns), the text width (`txt_in` columns),
the depth, and the Layered variant's extra time embedding. What they do not: how many latent
pixels a token packs (`patch_size`; `proj_out` rows are patch^2 x latent channels), the rotary
split of a head, and Edit-2511's `zero_cond_t` (a different forward, the same weights).
"""

from __future__ import annotations

from ckptkit.convert.layouts import num_blocks, register
from ckptkit.convert.layouts.tables import (TableLayout, heads, patch_size, per_patch, rope_axes, rope_placeholder,
                                            size)

TITLE = "Qwen-Image transformer"
HEAD_NORM = "transformer_blocks.0.attn.norm_q.weight"


def _config(shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
    head_dim = size(shapes, HEAD_NORM, 0, TITLE)
    patch = patch_size(base, TITLE)
    return {
        "patch_size": patch,
        "in_channels": size(shapes, "img_in.weight", 1, TITLE),
        "out_channels": per_patch(shapes, "proj_out.weight", 0, patch, TITLE),
        "num_layers": num_blocks(shapes, "transformer_blocks."),
        "attention_head_dim": head_dim,
        "num_attention_heads": heads(size(shapes, "img_in.weight", 0, TITLE), head_dim, TITLE),
        "joint_attention_dim": size(shapes, "txt_in.weight", 1, TITLE),
        "use_additional_t_cond": "time_text_embed.addition_t_embedding.weight" in shapes,
        "axes_dims_rope": rope_axes(base, head_dim, TITLE),
        **{k: base[k] for k in ("guidance_embeds", "zero_cond_t", "use_layer3d_rope") if k in base},
    }


def _placeholders(shapes: dict[str, tuple[int, ...]]) -> dict:
    return {"axes_dims_rope": rope_placeholder(size(shapes, HEAD_NORM, 0, TITLE)), "patch_size": 2,
            "zero_cond_t": False, "use_layer3d_rope": False}


LAYOUT = register(TableLayout(
    kind="qwen_image", title=TITLE, config_rule=_config, passthrough=True, placeholder_rule=_placeholders,
    shape_keys=("in_channels", "num_layers", "attention_head_dim", "num_attention_heads", "joint_attention_dim",
                "use_additional_t_cond"),
    undetermined={
        "patch_size": "how many latent pixels one token packs: img_in and proj_out hold patch^2 x channels",
        "axes_dims_rope": "the rotary split of a head over the position axes is not in the weights",
        "zero_cond_t": "Qwen-Image-Edit-2511 runs its reference-image tokens at t = 0; the weights are the same",
        "use_layer3d_rope": "Qwen-Image-Layered's 3-D rotary positions; not in the weights",
    },
))
