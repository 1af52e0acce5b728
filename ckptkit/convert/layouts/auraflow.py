"""AuraFlow transformer (fal's AuraFlow v0.1-v0.3: 4 MMDiT + 32 single DiT blocks of 3072):
diffusers `AuraFlowTransformer2DModel` <-> the original names of fal's single files (and ComfyUI's).
Renames only, plus the final modulation's halves swapped ((shift, scale) against diffusers'
(scale, shift), diffusers' `swap_scale_shift`). No tensor is fused.

What the shapes tell: the width, the patch x input channels of `init_x_linear`, the text width, the
caption projection width, the depths, the position table's length. What they do not: the head split
(no q/k norm holds a head's width), the patch size (patch^2 x channels is one number).
`sample_size` only sets the pipeline's default resolution and comes from the base config.
"""

from __future__ import annotations

from ckptkit.convert.layouts import num_blocks, register
from ckptkit.convert.layouts.tables import Blocks, TableLayout, heads, patch_size, per_patch, size

TITLE = "AuraFlow transformer"

TOP = {
    "register_tokens": "register_tokens",
    "positional_encoding": "pos_embed.pos_embed",
    "init_x_linear.": "pos_embed.proj.",
    "cond_seq_linear.weight": "context_embedder.weight",
    "t_embedder.mlp.0.": "time_step_proj.linear_1.",
    "t_embedder.mlp.2.": "time_step_proj.linear_2.",
    "final_linear.weight": "proj_out.weight",
}
_FF = {"c_fc1": "linear_1", "c_fc2": "linear_2", "c_proj": "out_projection"}
DOUBLE = {
    **{f"mlpX.{o}.weight": f"ff.{d}.weight" for o, d in _FF.items()},
    **{f"mlpC.{o}.weight": f"ff_context.{d}.weight" for o, d in _FF.items()},
    "modX.1.weight": "norm1.linear.weight",
    "modC.1.weight": "norm1_context.linear.weight",
    **{f"attn.w2{o}.weight": f"attn.{d}.weight" for o, d in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"),
                                                             ("o", "to_out.0"))},
    **{f"attn.w1{o}.weight": f"attn.{d}.weight" for o, d in (("q", "add_q_proj"), ("k", "add_k_proj"),
                                                             ("v", "add_v_proj"), ("o", "to_add_out"))},
}
SINGLE = {
    **{f"mlp.{o}.weight": f"ff.{d}.weight" for o, d in _FF.items()},
    "modCX.1.weight": "norm1.linear.weight",
    **{f"attn.w1{o}.weight": f"attn.{d}.weight" for o, d in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"),
                                                             ("o", "to_out.0"))},
}
SWAPPED = {"modF.1.weight": "norm_out.linear.weight"}


def _config(shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
    patch, head_dim = patch_size(base, TITLE), base.get("attention_head_dim")
    n_heads = heads(size(shapes, "init_x_linear.weight", 0, TITLE), head_dim, TITLE)
    return {
        "sample_size": base.get("sample_size", 64),
        "patch_size": patch,
        "in_channels": per_patch(shapes, "init_x_linear.weight", 1, patch, TITLE),
        "num_mmdit_layers": num_blocks(shapes, "double_layers."),
        "num_single_dit_layers": num_blocks(shapes, "single_layers."),
        "attention_head_dim": head_dim,
        "num_attention_heads": n_heads,
        "joint_attention_dim": size(shapes, "cond_seq_linear.weight", 1, TITLE),
        "caption_projection_dim": size(shapes, "cond_seq_linear.weight", 0, TITLE),
        "out_channels": per_patch(shapes, "final_linear.weight", 0, patch, TITLE),
        "pos_embed_max_size": size(shapes, "positional_encoding", 1, TITLE),
    }


def _placeholders(shapes: dict[str, tuple[int, ...]]) -> dict:
    return {"attention_head_dim": size(shapes, "init_x_linear.weight", 0, TITLE),
            "patch_size": 2 if size(shapes, "init_x_linear.weight", 1, TITLE) % 4 == 0 else 1}


LAYOUT = register(TableLayout(
    kind="auraflow", title=TITLE, config_rule=_config, placeholder_rule=_placeholders, top=TOP, swapped=SWAPPED,
    blocks=(Blocks("double_layers.", "joint_transformer_blocks.", DOUBLE),
            Blocks("single_layers.", "single_transformer_blocks.", SINGLE)),
    shape_keys=("in_channels", "num_mmdit_layers", "num_single_dit_layers", "joint_attention_dim",
                "caption_projection_dim", "out_channels", "pos_embed_max_size"),
    undetermined={
        "attention_head_dim": "head width: no q/k norm holds one head, q/k/v are [width, width] whatever the split",
        "patch_size": "init_x_linear takes patch^2 x channels and the split is not in the weights",
    },
))
