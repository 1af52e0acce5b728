"""HunyuanVideo transformer (Tencent HunyuanVideo 1.0: 20 dual-stream + 40 single-stream blocks of
3072, a 2-block token refiner): diffusers `HunyuanVideoTransformer3DModel` <-> the original names of
Tencent's `hyvideo/modules/models.py`, which ComfyUI's `hunyuan_video_*.safetensors` carry bare or
under `model.diffusion_model.`. The tables of diffusers' scripts/convert_hunyuan_video_to_diffusers.py
(= single_file_utils.convert_hunyuan_video_transformer_to_diffusers, huggingface/diffusers@58eb52c0):
renames, the fused q|k|v of the refiner and the double blocks cut in three equal parts, the single
blocks' linear1 = q|k|v|mlp cut at the model width (diffusers' converter hard-codes 3072; ours reads
the width from the patch embedding, so any width converts), and the final modulation's (shift, scale)
halves swapped to diffusers' (scale, shift).

What the shapes tell: the width, the patch kernel (the Conv3d patch embedding), input and output
channels, the head width (the per-head q/k norms), the depths, the MLP ratio, the text and pooled
widths, the guidance embedding. What they do not: the rotary split of a head, its theta, and how an
image conditions the I2V models (`image_condition_type`: the 16-channel I2V has the T2V's shapes).
"""

from __future__ import annotations

from ckptkit.convert.layouts import num_blocks, register
from ckptkit.convert.layouts.tables import (Blocks, TableLayout, conv3d_patch, heads, per_volume, rope_axes,
                                            rope_placeholder, size)
from ckptkit.errors import CkptError

TITLE = "HunyuanVideo transformer"
PATCH = "img_in.proj.weight"

TOP = {
    "img_in.proj.": "x_embedder.proj.",
    "txt_in.input_embedder.": "context_embedder.proj_in.",
    "txt_in.t_embedder.mlp.0.": "context_embedder.time_text_embed.timestep_embedder.linear_1.",
    "txt_in.t_embedder.mlp.2.": "context_embedder.time_text_embed.timestep_embedder.linear_2.",
    "txt_in.c_embedder.linear_1.": "context_embedder.time_text_embed.text_embedder.linear_1.",
    "txt_in.c_embedder.linear_2.": "context_embedder.time_text_embed.text_embedder.linear_2.",
    "time_in.mlp.0.": "time_text_embed.timestep_embedder.linear_1.",
    "time_in.mlp.2.": "time_text_embed.timestep_embedder.linear_2.",
    "vector_in.in_layer.": "time_text_embed.text_embedder.linear_1.",
    "vector_in.out_layer.": "time_text_embed.text_embedder.linear_2.",
    "guidance_in.mlp.0.": "time_text_embed.guidance_embedder.linear_1.",
    "guidance_in.mlp.2.": "time_text_embed.guidance_embedder.linear_2.",
    "final_layer.linear.": "proj_out.",
}
SWAPPED = {"final_layer.adaLN_modulation.1.": "norm_out.linear."}
REFINER = {
    "norm1.": "norm1.", "norm2.": "norm2.", "self_attn_proj.": "attn.to_out.0.",
    "mlp.fc1.": "ff.net.0.proj.", "mlp.fc2.": "ff.net.2.", "adaLN_modulation.1.": "norm_out.linear.",
}
DOUBLE = {
    "img_mod.linear.": "norm1.linear.", "txt_mod.linear.": "norm1_context.linear.",
    "img_attn_q_norm.": "attn.norm_q.", "img_attn_k_norm.": "attn.norm_k.",
    "txt_attn_q_norm.": "attn.norm_added_q.", "txt_attn_k_norm.": "attn.norm_added_k.",
    "img_attn_proj.": "attn.to_out.0.", "txt_attn_proj.": "attn.to_add_out.",
    "img_mlp.fc1.": "ff.net.0.proj.", "img_mlp.fc2.": "ff.net.2.",
    "txt_mlp.fc1.": "ff_context.net.0.proj.", "txt_mlp.fc2.": "ff_context.net.2.",
}
SINGLE = {"linear2.": "proj_out.", "q_norm.": "attn.norm_q.", "k_norm.": "attn.norm_k.",
          "modulation.linear.": "norm.linear."}
QKV = ("attn.to_q.", "attn.to_k.", "attn.to_v.")


def _config(shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
    kernel = conv3d_patch(shapes, PATCH, TITLE)
    if kernel[3] != kernel[4]:
        raise CkptError(f"{TITLE}: {PATCH} of shape {list(kernel)} is not a Conv3d patch embedding with square patches")
    width = kernel[0]
    head_dim = size(shapes, "double_blocks.0.img_attn_q_norm.weight", 0, TITLE)
    mlp = size(shapes, "double_blocks.0.img_mlp.fc1.weight", 0, TITLE)
    config = {
        "in_channels": kernel[1],
        "out_channels": per_volume(shapes, "final_layer.linear.weight", kernel[2:], TITLE),
        "num_attention_heads": heads(width, head_dim, TITLE),
        "attention_head_dim": head_dim,
        "num_layers": num_blocks(shapes, "double_blocks."),
        "num_single_layers": num_blocks(shapes, "single_blocks."),
        "num_refiner_layers": num_blocks(shapes, "txt_in.individual_token_refiner.blocks."),
        "mlp_ratio": mlp / width,
        "patch_size": kernel[3],
        "patch_size_t": kernel[2],
        "guidance_embeds": "guidance_in.mlp.0.weight" in shapes,
        "text_embed_dim": size(shapes, "txt_in.input_embedder.weight", 1, TITLE),
        "pooled_projection_dim": size(shapes, "vector_in.in_layer.weight", 1, TITLE),
        "rope_axes_dim": rope_axes(base, head_dim, TITLE, key="rope_axes_dim"),
    }
    for key in ("qk_norm", "rope_theta", "image_condition_type"):
        if key in base:
            config[key] = base[key]
    return config


def _placeholders(shapes: dict[str, tuple[int, ...]]) -> dict:
    head_dim = size(shapes, "double_blocks.0.img_attn_q_norm.weight", 0, TITLE)
    return {"rope_axes_dim": rope_placeholder(head_dim), "rope_theta": 256.0, "image_condition_type": None,
            "qk_norm": "rms_norm"}


LAYOUT = register(TableLayout(
    kind="hunyuan_video", title=TITLE, config_rule=_config, placeholder_rule=_placeholders, top=TOP, swapped=SWAPPED,
    blocks=(Blocks("txt_in.individual_token_refiner.blocks.", "context_embedder.token_refiner.refiner_blocks.", REFINER,
                   {"self_attn_qkv.": QKV}),
            Blocks("double_blocks.", "transformer_blocks.", DOUBLE,
                   {"img_attn_qkv.": QKV, "txt_attn_qkv.": ("attn.add_q_proj.", "attn.add_k_proj.", "attn.add_v_proj.")}),
            Blocks("single_blocks.", "single_transformer_blocks.", SINGLE, {"linear1.": (*QKV, "proj_mlp.")},
                   split="width")),
    width=(PATCH, 0),
    shape_keys=("in_channels", "out_channels", "num_attention_heads", "attention_head_dim", "num_layers",
                "num_single_layers", "num_refiner_layers", "mlp_ratio", "patch_size", "patch_size_t",
                "guidance_embeds", "text_embed_dim", "pooled_projection_dim"),
    undetermined={
        "rope_axes_dim": "the rotary split of a head over the position axes is not in the weights",
        "rope_theta": "the rotary base is not in the weights",
        "image_condition_type": "how an image conditions the model (latent concat, token replace or none) is not "
                                "in the weights: the 16-channel I2V has the text-to-video model's shapes",
        "qk_norm": "the q/k norm kind is not in the weights",
    },
))
