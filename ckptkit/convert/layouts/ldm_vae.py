"""The LDM VAE (SD1.x/2.x/XL `first_stage_model.`, SD3 and FLUX.1 `ae`) <-> diffusers `AutoencoderKL`.

Original names are CompVis `ldm.modules.diffusionmodules.model.Encoder/Decoder`'s:
`encoder.down.I.block.J.*`, `encoder.down.I.downsample.conv.*`, `{en,de}coder.mid.block_{1,2}.*`,
`{en,de}coder.mid.attn_1.{norm,q,k,v,proj_out}.*`, `decoder.up.I.block.J.*` with the decoder's
levels numbered in reverse (diffusers' up_blocks.0 is LDM's up.{n-1}), `norm_out`, and
`quant_conv` / `post_quant_conv` (absent from the 16-channel SD3 / FLUX VAE, use_quant_conv=False).

One shape change: the mid-block attention projections are 1x1 convs in LDM ([C, C, 1, 1]) and
linears in diffusers ([C, C]); we reshape, which keeps the bytes.

`to_original` is the reverse of diffusers' `convert_ldm_vae_checkpoint`, which `to_diffusers`
calls as it is.
"""

from __future__ import annotations

import re

import torch

from ckptkit.engine.expr import Expr, reshape, src
from ckptkit.convert.layouts import register
from ckptkit.errors import CkptError

# diffusers Attention submodule -> LDM AttnBlock submodule
ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}

# (pattern over the diffusers name, original-name template); `level` is renumbered for the decoder.
RULES = (
    (r"encoder\.down_blocks\.(?P<level>\d+)\.resnets\.(?P<i>\d+)\.(?P<rest>.+)", "encoder.down.{level}.block.{i}.{rest}"),
    (r"encoder\.down_blocks\.(?P<level>\d+)\.downsamplers\.0\.(?P<rest>.+)", "encoder.down.{level}.downsample.{rest}"),
    (r"decoder\.up_blocks\.(?P<level>\d+)\.resnets\.(?P<i>\d+)\.(?P<rest>.+)", "decoder.up.{level}.block.{i}.{rest}"),
    (r"decoder\.up_blocks\.(?P<level>\d+)\.upsamplers\.0\.(?P<rest>.+)", "decoder.up.{level}.upsample.{rest}"),
    (r"(?P<side>\w+coder)\.mid_block\.resnets\.(?P<i>\d+)\.(?P<rest>.+)", "{side}.mid.block_{i}.{rest}"),
    (r"(?P<side>\w+coder)\.mid_block\.attentions\.0\.(?P<attn>.+)\.(?P<param>weight|bias)", "{side}.mid.attn_1.{attn}.{param}"),
    (r"(?P<side>\w+coder)\.conv_norm_out\.(?P<rest>.+)", "{side}.norm_out.{rest}"),
    (r"(?P<rest>(?:encoder|decoder)\.conv_(?:in|out)\..+|(?:post_)?quant_conv\..+)", "{rest}"),
)
RULES = tuple((re.compile(pattern), template) for pattern, template in RULES)


def original_name(name: str, config: dict) -> str:
    """The LDM name of one diffusers VAE tensor name."""
    for pattern, template in RULES:
        if m := pattern.fullmatch(name):
            parts = m.groupdict()
            if "level" in parts and name.startswith("decoder."):
                parts["level"] = len(config["up_block_types"]) - 1 - int(parts["level"])
            if "i" in parts and "mid_block.resnets" in name:
                parts["i"] = int(parts["i"]) + 1  # block_1, block_2
            if "rest" in parts and ".resnets." in name:
                parts["rest"] = parts["rest"].replace("conv_shortcut.", "nin_shortcut.", 1)
            if "attn" in parts:
                parts["attn"] = ATTENTION[parts["attn"]]
            return template.format(**parts)
    raise CkptError(f"ldm_vae: no original name for diffusers tensor {name!r}")


ENCODER_RESNET = re.compile(r"encoder\.down\.(\d+)\.block\.(\d+)\.")


def config_from_original(shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
    """See `LdmVae.config_from_original`."""
    resnets = {(int(m[1]), int(m[2])) for n in shapes if (m := ENCODER_RESNET.match(n))}
    levels = 1 + max(level for level, _ in resnets)
    return {
        **base,
        "in_channels": shapes["encoder.conv_in.weight"][1],
        "out_channels": shapes["decoder.conv_out.weight"][0],
        "latent_channels": shapes["decoder.conv_in.weight"][1],
        "block_out_channels": [shapes[f"encoder.down.{level}.block.0.conv1.weight"][0] for level in range(levels)],
        "layers_per_block": sum(1 for level, _ in resnets if level == 0),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "use_quant_conv": "quant_conv.weight" in shapes,
        "use_post_quant_conv": "post_quant_conv.weight" in shapes,
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in shapes,
    }


class LdmVae:
    kind = "ldm_vae"
    shape_keys = ("in_channels", "out_channels", "latent_channels", "block_out_channels", "layers_per_block",
                  "down_block_types", "up_block_types", "use_quant_conv", "use_post_quant_conv",
                  "mid_block_add_attention")
    # not in any weight: how the pipeline scales latents for the diffusion model
    undetermined = {"scaling_factor": "the latent scale is not in the weights",
                    "shift_factor": "the latent shift is not in the weights"}

    def placeholders(self, shapes: dict[str, tuple[int, ...]]) -> dict:
        """Stand-ins for `undetermined` that give the right names and shapes whatever the real values
        are (one head): only for reading names and shapes (convert/configs.py, not strict)."""
        return {"scaling_factor": 1.0, "shift_factor": None}

    def config_from_original(self, shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
        """The diffusers config of a component from its original-layout (prefix-stripped) shapes.
        `base` is the resolved config (convert/configs.py): its values stand for what the shapes
        cannot tell (scaling_factor, shift_factor, norm_num_groups, sample_size, ...)."""
        return config_from_original(shapes, base)

    def original_name(self, name: str, config: dict) -> str:
        return original_name(name, config)

    def to_original(self, shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, Expr]:
        out = {}
        for name, shape in shapes.items():
            orig = self.original_name(name, config)
            is_attn_matrix = ".mid.attn_1." in orig and len(shape) == 2
            # LDM's attention q/k/v/proj_out are Conv2d(C, C, 1): same bytes, two trailing 1s.
            out[orig] = reshape(name, (*shape, 1, 1)) if is_attn_matrix else src(name)
        return out

    def to_diffusers(self, state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        # Unprefixed names are fine: with no `first_stage_model.` / `vae.` key it strips nothing.
        # It squeezes the [C, C, 1, 1] attention weights back to [C, C] itself.
        return convert_ldm_vae_checkpoint(dict(state_dict), config)


LAYOUT = register(LdmVae())
