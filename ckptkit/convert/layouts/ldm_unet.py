"""The LDM / sgm UNet (SD1.x, SD2.x, SDXL, SDXL refiner) <-> diffusers `UNet2DConditionModel`.

Original names are CompVis `openaimodel.UNetModel`'s, without the `model.diffusion_model.` prefix:
`input_blocks.N.M.*` (N counts every down-path layer: 0 is conv_in, then `layers_per_block`
resnet[+attention] layers per level and one downsampler `input_blocks.N.0.op` after each level
but the last), `middle_block.{0,1,2}` (resnet, attention, resnet), `output_blocks.N.M.*`
(`layers_per_block + 1` layers per level, the upsampler closes a level at index 1 or 2),
`time_embed`, `label_emb` (SDXL's add_embedding) and `out`.

Only names change. Resnets are renamed inside (`norm1` -> `in_layers.0`, ...); the attention
blocks (`SpatialTransformer` / `Transformer2DModel`) keep diffusers' inner names. No reshape is
needed: diffusers' `use_linear_projection` mirrors LDM's `use_linear_in_transformer`, so proj_in /
proj_out are 1x1 convs on both sides for SD1 and linears on both sides for SD2 / SDXL.

`to_original` is the reverse of diffusers' `convert_ldm_unet_checkpoint`, which `to_diffusers`
calls as it is.
"""

from __future__ import annotations

import re

import torch

from ckptkit.convert.expr import Expr, src
from ckptkit.convert.layouts import register
from ckptkit.errors import CkptError

LDM_PREFIX = "model.diffusion_model."

# diffusers module -> original module, for modules outside the down / mid / up blocks.
TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL: addition_embed_type="text_time"
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",  # class_embed_type="timestep"/"projection"
    "class_embedding.linear_2": "label_emb.0.2",
}

# diffusers ResnetBlock2D submodule -> LDM ResBlock submodule.
RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}

BLOCK = re.compile(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)")
MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")


def _resnet(rest: str) -> str:
    module, param = rest.split(".", 1)
    return f"{RESNET[module]}.{param}"


def original_name(name: str, config: dict) -> str:
    """The LDM name of one diffusers UNet tensor name."""
    per_level = config.get("layers_per_block", 2) + 1  # resnet[+attn] layers, then the sampler
    module, _, param = name.rpartition(".")
    if module in TOP_LEVEL:
        return f"{TOP_LEVEL[module]}.{param}"

    if m := MID.fullmatch(name):
        kind, i, rest = m[1], int(m[2]), m[3]
        if kind == "resnets":  # middle_block.0 and .2; the attention sits between them
            return f"middle_block.{2 * i}.{_resnet(rest)}"
        return f"middle_block.1.{rest}"

    if m := BLOCK.fullmatch(name):
        side, level, kind, i, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        if side == "down":
            layer = 1 + level * per_level + i  # input_blocks.0 is conv_in
            if kind == "resnets":
                return f"input_blocks.{layer}.0.{_resnet(rest)}"
            if kind == "attentions":
                return f"input_blocks.{layer}.1.{rest}"
            # downsamplers.0: its own input block after the level's resnets
            return f"input_blocks.{(level + 1) * per_level}.0.{rest.replace('conv.', 'op.', 1)}"
        layer = level * per_level + i
        if kind == "resnets":
            return f"output_blocks.{layer}.0.{_resnet(rest)}"
        if kind == "attentions":
            return f"output_blocks.{layer}.1.{rest}"
        # upsamplers.0: appended to the level's last output block, after its attention if any
        last = level * per_level + per_level - 1
        slot = 2 if "CrossAttn" in config["up_block_types"][level] else 1
        return f"output_blocks.{last}.{slot}.{rest}"

    raise CkptError(f"ldm_unet: no original name for diffusers tensor {name!r}")


class LdmUNet:
    kind = "ldm_unet"

    def to_original(self, shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, Expr]:
        return {original_name(n, config): src(n) for n in shapes}

    def to_diffusers(self, state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
        from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

        # The converter only picks keys under the bundle prefix; it also reads
        # config["layers_per_block"] without a default.
        checkpoint = {LDM_PREFIX + n: t for n, t in state_dict.items()}
        return convert_ldm_unet_checkpoint(checkpoint, {"layers_per_block": 2, **config})


LAYOUT = register(LdmUNet())
