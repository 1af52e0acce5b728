"""Chroma transformer (Chroma1-HD; lodestones' FLUX.1-schnell derivative): diffusers
`ChromaTransformer2DModel` <-> the original names (lodestones' release, ComfyUI, stable-diffusion.cpp).

FLUX.1's names with the per-block modulations (`img_mod`, `txt_mod`, `modulation`), `time_in`,
`vector_in`, `guidance_in` and the final adaLN removed: every modulation comes from the
`distilled_guidance_layer` (the "approximator": in_proj, `layers.N.{in,out}_layer`, RMSNorm
`norms.N.scale`, out_proj). The fused qkv / linear1 and the renames are FLUX.1's tables.

What the shapes tell: the width (`img_in` rows), the head width (the QK-norm length), the packed
input channels, the text width (`txt_in` columns), both depths, the approximator's input channels,
hidden width and depth. The MLP ratio is fixed at 4 in the class (checked, not a config value).
What they do not: `patch_size` (`final_layer.linear` rows are patch^2 x output channels) and the
rotary split of a head.
"""

from __future__ import annotations

from ckptkit.convert.layouts import num_blocks, register
from ckptkit.convert.layouts.flux import DOUBLE, DOUBLE_FUSED, SINGLE, SINGLE_FUSED, bfl_head_dim, bfl_sizes
from ckptkit.convert.layouts.tables import Blocks, TableLayout, rope_axes, rope_placeholder, size
from ckptkit.errors import CkptError

TITLE = "Chroma transformer"
APPROX = "distilled_guidance_layer."

TOP = {"img_in.": "x_embedder.", "txt_in.": "context_embedder.", "final_layer.linear.": "proj_out.",
       APPROX + "in_proj.": APPROX + "in_proj.", APPROX + "out_proj.": APPROX + "out_proj."}
BLOCKS = (
    Blocks("double_blocks.", "transformer_blocks.", {k: v for k, v in DOUBLE.items() if "_mod." not in k},
           DOUBLE_FUSED),
    Blocks("single_blocks.", "single_transformer_blocks.",
           {k: v for k, v in SINGLE.items() if not k.startswith("modulation.")}, SINGLE_FUSED, split="width"),
    Blocks(APPROX + "layers.", APPROX + "layers.", {"in_layer.": "linear_1.", "out_layer.": "linear_2."}),
    Blocks(APPROX + "norms.", APPROX + "norms.", {"scale": "weight"}),
)
MLP_RATIO = 4.0  # ChromaSingleTransformerBlock / FeedForward defaults; not a config value


def _config(shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
    sizes = bfl_sizes(shapes, base, TITLE)
    width = size(shapes, "img_in.weight", 0, TITLE)
    for name in ("double_blocks.0.img_mlp.0.weight", "single_blocks.0.linear1.weight"):
        rows = shapes.get(name, (None,))[0]
        mlp = rows - 3 * width if name.startswith("single") and rows else rows
        if mlp is not None and mlp != int(width * MLP_RATIO):
            raise CkptError(f"{TITLE}: {name} has an MLP {mlp} wide, not {MLP_RATIO:g} x width {width} "
                            f"(the only ratio ChromaTransformer2DModel builds)")
    if size(shapes, APPROX + "out_proj.weight", 0, TITLE) != width:
        raise CkptError(f"{TITLE}: {APPROX}out_proj gives {shapes[APPROX + 'out_proj.weight'][0]} "
                        f"channels, not the width {width}")
    return {
        **sizes,
        "axes_dims_rope": rope_axes(base, sizes["attention_head_dim"], TITLE),
        "approximator_num_channels": size(shapes, APPROX + "in_proj.weight", 1, TITLE),
        "approximator_hidden_dim": size(shapes, APPROX + "in_proj.weight", 0, TITLE),
        "approximator_layers": num_blocks(shapes, APPROX + "layers."),
    }


def _placeholders(shapes: dict[str, tuple[int, ...]]) -> dict:
    return {"axes_dims_rope": rope_placeholder(bfl_head_dim(shapes, TITLE)), "patch_size": 1}


LAYOUT = register(TableLayout(
    kind="chroma", title=TITLE, config_rule=_config, top=TOP, blocks=BLOCKS, width=("img_in.weight", 0),
    placeholder_rule=_placeholders,
    shape_keys=("in_channels", "out_channels", "num_layers", "num_single_layers", "attention_head_dim",
                "num_attention_heads", "joint_attention_dim", "approximator_num_channels",
                "approximator_hidden_dim", "approximator_layers"),
    undetermined={
        "patch_size": "how many latent pixels one token packs: final_layer.linear holds patch^2 x channels",
        "axes_dims_rope": "the rotary split of a head over the position axes is not in the weights",
    },
))
