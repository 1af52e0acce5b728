"""LTX-Video 0.9.x transformer (2B: 0.9.0 / 0.9.1 / 0.9.5 / 0.9.6; 13B: 0.9.7 / 0.9.8): diffusers
`LTXVideoTransformer3DModel` <-> the original names of Lightricks' releases (LTX-Video
`ltx_video/models/transformers/transformer3d.py`), which the single files and ComfyUI's carry under
`model.diffusion_model.` (bare in split files). Four renames, the table of diffusers'
scripts/convert_ltx_to_diffusers.py and single_file_utils.convert_ltx_transformer_checkpoint_to_diffusers
(TRANSFORMER_KEYS_RENAME_DICT, huggingface/diffusers@58eb52c0): `patchify_proj` -> `proj_in`,
`adaln_single` -> `time_embed`, `q_norm` -> `norm_q`, `k_norm` -> `norm_k`; every other name is the
same on both sides (passthrough), no tensor is split or fused, every shape is kept.

What the shapes tell: the width (proj_in rows), the latent channels in and out (proj_in columns,
proj_out rows: the patch embedding is a Linear over already-packed tokens), the depth, the text
width (attn2's k/v columns) and the caption width (caption_projection.linear_1 columns), the
attention biases and whether the block norms carry weights. What they do not: the head split (the
q/k RMS norms span the whole width; ComfyUI assumes 32 heads, attention_head_dim = attn2.to_k rows //
32) and the patch sizes (`patch_size`, `patch_size_t` only scale the rotary grid).

LTX's own single files ship their true config in safetensors metadata `"config"` (JSON with a
"transformer" object; LTX-Video transformer3d.py from_pretrained and ComfyUI's model_detection read
it). ckptkit reads only its own `ckptkit.config` metadata (convert/configs.py), not this one: a
non-released LTX file needs --config (not built here).
"""

from __future__ import annotations

from ckptkit.convert.layouts import num_blocks, register
from ckptkit.convert.layouts.tables import Blocks, TableLayout, heads, size
from ckptkit.errors import CkptError

TITLE = "LTX-Video transformer"
PATCH = "patchify_proj.weight"

TOP = {
    "patchify_proj.": "proj_in.",
    "adaln_single.emb.timestep_embedder.linear_1.": "time_embed.emb.timestep_embedder.linear_1.",
    "adaln_single.emb.timestep_embedder.linear_2.": "time_embed.emb.timestep_embedder.linear_2.",
    "adaln_single.linear.": "time_embed.linear.",
}
BLOCK = {f"{attn}.{o}_norm.": f"{attn}.norm_{o}." for attn in ("attn1", "attn2") for o in ("q", "k")}


def _patch(base: dict, key: str) -> int:
    value = base.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CkptError(f"{TITLE}: {key} must be a positive integer, not {value!r}")
    return value


def _config(shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
    width = size(shapes, PATCH, 0, TITLE)
    head_dim = base.get("attention_head_dim")
    return {
        "in_channels": size(shapes, PATCH, 1, TITLE),
        "out_channels": size(shapes, "proj_out.weight", 0, TITLE),
        "num_layers": num_blocks(shapes, "transformer_blocks."),
        "cross_attention_dim": size(shapes, "transformer_blocks.0.attn2.to_k.weight", 1, TITLE),
        "caption_channels": size(shapes, "caption_projection.linear_1.weight", 1, TITLE),
        # the heads follow from the width and the head width the base gives; a shape key, so that a
        # width no release has never takes a released head width by matching the other sizes
        "num_attention_heads": heads(width, head_dim, TITLE),
        "attention_head_dim": head_dim,
        "attention_bias": "transformer_blocks.0.attn1.to_q.bias" in shapes,
        "attention_out_bias": "transformer_blocks.0.attn1.to_out.0.bias" in shapes,
        "norm_elementwise_affine": "transformer_blocks.0.norm1.weight" in shapes,
        "patch_size": _patch(base, "patch_size"),
        "patch_size_t": _patch(base, "patch_size_t"),
    }


def _placeholders(shapes: dict[str, tuple[int, ...]]) -> dict:
    return {"attention_head_dim": size(shapes, PATCH, 0, TITLE), "patch_size": 1, "patch_size_t": 1}


LAYOUT = register(TableLayout(
    kind="ltxv", title=TITLE, config_rule=_config, placeholder_rule=_placeholders, top=TOP,
    blocks=(Blocks("transformer_blocks.", "transformer_blocks.", BLOCK),), passthrough=True,
    shape_keys=("in_channels", "out_channels", "num_layers", "cross_attention_dim", "caption_channels",
                "num_attention_heads", "attention_bias", "attention_out_bias", "norm_elementwise_affine"),
    undetermined={
        "attention_head_dim": "head width: the q/k RMS norms span the whole width, q/k/v are [width, width] "
                              "whatever the split",
        "patch_size": "patchify_proj is a Linear over packed tokens: the patch only scales the rotary grid",
        "patch_size_t": "patchify_proj is a Linear over packed tokens: the patch only scales the rotary grid",
    },
))
