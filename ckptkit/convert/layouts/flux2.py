"""FLUX.2 transformer ([dev], [klein] 4B / 9B): diffusers `Flux2Transformer2DModel` <-> Black Forest
Labs' original names (the released `flux2-*.safetensors`, ComfyUI, stable-diffusion.cpp).

FLUX.1's block names (fused qkv, QK norms, attention projections: FLUX.1's tables) with no biases,
a SwiGLU MLP (`img_mlp.0` -> `ff.linear_in`, `img_mlp.2` -> `ff.linear_out`), modulations shared by
all blocks (`double_stream_modulation_{img,txt}.lin`, `single_stream_modulation.lin`), `time_in`
(+ `guidance_in` in [dev]) -> `time_guidance_embed.*`, and a single-block `linear1` diffusers keeps
fused (`attn.to_qkv_mlp_proj`). The final adaLN stores (shift, scale), diffusers (scale, shift).

What the shapes tell: the width, the head width (the QK-norm length), the input channels, the text
width (`txt_in` columns: 3 stacked text-encoder layers), both depths, the timestep embedding's
sinusoid channels, the MLP ratio (`img_mlp.2` columns / width) and whether a guidance embedding is
there ([dev]) or not ([klein]). What they do not: `patch_size`, the rotary split over the 4 position
axes, the rotary theta and the norms' eps.
"""

from __future__ import annotations

from ckptkit.convert.layouts import register
from ckptkit.convert.layouts.flux import DOUBLE, DOUBLE_FUSED, SINGLE, TOP as FLUX1_TOP, bfl_head_dim, bfl_sizes
from ckptkit.convert.layouts.tables import Blocks, TableLayout, rope_axes, rope_placeholder, size
from ckptkit.errors import CkptError

TITLE = "FLUX.2 transformer"
TIME = "time_guidance_embed."

TOP = {
    **{k: FLUX1_TOP[k] for k in ("img_in.", "txt_in.", "final_layer.linear.")},
    "time_in.in_layer.": TIME + "timestep_embedder.linear_1.",
    "time_in.out_layer.": TIME + "timestep_embedder.linear_2.",
    "guidance_in.in_layer.": TIME + "guidance_embedder.linear_1.",  # [dev] only
    "guidance_in.out_layer.": TIME + "guidance_embedder.linear_2.",
    "double_stream_modulation_img.lin.": "double_stream_modulation_img.linear.",
    "double_stream_modulation_txt.lin.": "double_stream_modulation_txt.linear.",
    "single_stream_modulation.lin.": "single_stream_modulation.linear.",
}
DOUBLE2 = {**{k: v for k, v in DOUBLE.items() if "_mod." not in k and "_mlp." not in k},
           "img_mlp.0.": "ff.linear_in.", "img_mlp.2.": "ff.linear_out.",
           "txt_mlp.0.": "ff_context.linear_in.", "txt_mlp.2.": "ff_context.linear_out."}
SINGLE2 = {"linear1.": "attn.to_qkv_mlp_proj.", "linear2.": "attn.to_out.",
           **{k: v for k, v in SINGLE.items() if "_norm." in k}}
BLOCKS = (Blocks("double_blocks.", "transformer_blocks.", DOUBLE2, DOUBLE_FUSED),
          Blocks("single_blocks.", "single_transformer_blocks.", SINGLE2))
SWAPPED = {"final_layer.adaLN_modulation.1.": "norm_out.linear."}


def _mlp_ratio(shapes: dict[str, tuple[int, ...]], width: int) -> float:
    """The SwiGLU hidden width over the model width: `img_mlp.2` columns (or, with no double block,
    what `linear1` has beyond q|k|v, halved for the gate); diffusers builds int(width * ratio)."""
    if "double_blocks.0.img_mlp.2.weight" in shapes:
        hidden = shapes["double_blocks.0.img_mlp.2.weight"][1]
    else:
        hidden = (size(shapes, "single_blocks.0.linear1.weight", 0, TITLE) - 3 * width) // 2
    ratio = hidden / width
    if int(width * ratio) != hidden:
        raise CkptError(f"{TITLE}: an MLP {hidden} wide at width {width} is no ratio diffusers builds")
    single = shapes.get("single_blocks.0.linear1.weight")
    if single is not None and single[0] != 3 * width + 2 * hidden:
        raise CkptError(f"{TITLE}: single_blocks.0.linear1 has {single[0]} rows, not q|k|v|2 x MLP "
                        f"= {3 * width + 2 * hidden}")
    return ratio


def _config(shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
    sizes = bfl_sizes(shapes, base, TITLE)
    width = size(shapes, "img_in.weight", 0, TITLE)
    for key in ("rope_theta", "eps"):
        if not isinstance(base.get(key), (int, float)) or isinstance(base.get(key), bool) or base[key] <= 0:
            raise CkptError(f"{TITLE}: {key} must be a positive number, not {base.get(key)!r}")
    return {
        **sizes,
        "timestep_guidance_channels": size(shapes, "time_in.in_layer.weight", 1, TITLE),
        "mlp_ratio": _mlp_ratio(shapes, width),
        "axes_dims_rope": rope_axes(base, sizes["attention_head_dim"], TITLE),
        "rope_theta": base["rope_theta"],
        "eps": base["eps"],
        "guidance_embeds": "guidance_in.in_layer.weight" in shapes,
    }


def _placeholders(shapes: dict[str, tuple[int, ...]]) -> dict:
    return {"axes_dims_rope": rope_placeholder(bfl_head_dim(shapes, TITLE), 4), "patch_size": 1, "rope_theta": 2000,
            "eps": 1e-6}


LAYOUT = register(TableLayout(
    kind="flux2", title=TITLE, config_rule=_config, top=TOP, blocks=BLOCKS, swapped=SWAPPED,
    placeholder_rule=_placeholders,
    shape_keys=("in_channels", "out_channels", "num_layers", "num_single_layers", "attention_head_dim",
                "num_attention_heads", "joint_attention_dim", "timestep_guidance_channels", "mlp_ratio",
                "guidance_embeds"),
    undetermined={
        "patch_size": "how many latent pixels one token packs: final_layer.linear holds patch^2 x channels",
        "axes_dims_rope": "the rotary split of a head over the 4 position axes is not in the weights",
        "rope_theta": "the rotary base frequency is not in the weights",
        "eps": "the norms' epsilon is not in the weights",
    },
))
