"""The Wan 2.1 causal 3-D VAE (Qwen-Image's VAE; later Wan 2.1 video) <-> diffusers
`AutoencoderKLQwenImage` / `AutoencoderKLWan`.

Original names are those of Wan 2.1's `wan/modules/vae.py` (`WanVAE_`), which ComfyUI's
`vae/qwen_image_vae.safetensors` keeps:
  {en,de}coder.conv1.*                          -> {en,de}coder.conv_in.*
  encoder.downsamples.N.*  (one flat Sequential: per level `num_res_blocks` ResidualBlocks, an
                            AttentionBlock after each where the level's scale is in attn_scales,
                            then a Resample except at the last level)
                                                -> encoder.down_blocks.N.* (the same flat list)
  decoder.upsamples.N.*    (flat: per level num_res_blocks + 1 ResidualBlocks, then a Resample
                            except at the last level)
                                                -> decoder.up_blocks.L.resnets.i.* / .upsamplers.0.*
  {en,de}coder.middle.{0,2}.* / middle.1.*      -> {en,de}coder.mid_block.resnets.{0,1}.* / attentions.0.*
  {en,de}coder.head.{0,2}.*                     -> {en,de}coder.norm_out.* / conv_out.*
  conv1.* / conv2.*                             -> quant_conv.* / post_quant_conv.*
A ResidualBlock's `residual.{0,2,3,6}` (RMS_norm, CausalConv3d, RMS_norm, CausalConv3d; SiLU and
dropout hold no weights) are diffusers' norm1.gamma / conv1 / norm2.gamma / conv2, its `shortcut`
is `conv_shortcut`; a Resample's `resample.1` (the Conv2d after the pad / upsample) and
`time_conv` (the temporal (3,1,1) causal conv of a downsample3d / upsample3d) keep their names, as
do the attention blocks' norm.gamma / to_qkv / proj. No tensor changes shape or bytes.

`to_diffusers` is diffusers' `convert_wan_vae_to_diffusers` where it works: it hard-codes the
decoder of the released structure (4 levels of 3 ResidualBlocks, the only decoder shortcut at
upsamples.4) and would misname any other, which then goes through our inverse map. `to_original`
derives every index from the shapes, at any width and depth. Diffusers' decoder has no attention
blocks in its levels (Wan's `attn_scales` there): such a file has no diffusers form.
"""

from __future__ import annotations

import re

import torch

from ckptkit.engine.expr import Expr, src
from ckptkit.convert.layouts import num_blocks, register
from ckptkit.errors import CkptError

# diffusers residual block submodule -> original Wan ResidualBlock submodule
RESIDUAL = {"norm1.gamma": "residual.0.gamma", "conv1.weight": "residual.2.weight", "conv1.bias": "residual.2.bias",
            "norm2.gamma": "residual.3.gamma", "conv2.weight": "residual.6.weight", "conv2.bias": "residual.6.bias",
            "conv_shortcut.weight": "shortcut.weight", "conv_shortcut.bias": "shortcut.bias"}
TOP = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
HEAD = {"norm_out": "head.0", "conv_out": "head.2", "conv_in": "conv1"}

_ENC_BLOCK = re.compile(r"encoder\.down_blocks\.(\d+)\.(.+)")
_DEC_RESNET = re.compile(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)")
_DEC_UPSAMPLER = re.compile(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)")
_MID_RESNET = re.compile(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)")
_MID_ATTN = re.compile(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)")
_SIDE = re.compile(r"(encoder|decoder)\.(norm_out|conv_out|conv_in)\.(.+)")
_TOP = re.compile(r"(quant_conv|post_quant_conv)\.(.+)")


def _residual(rest: str, name: str) -> str:
    if rest in RESIDUAL:
        return RESIDUAL[rest]
    raise CkptError(f"wan_vae: no original name for diffusers tensor {name!r}")


def original_name(name: str, per_level: int) -> str:
    """The Wan 2.1 name of one diffusers VAE tensor name; `per_level`: ResidualBlocks per decoder level."""
    if m := _ENC_BLOCK.fullmatch(name):  # the same flat list: residual blocks renamed, the rest kept
        idx, rest = m[1], m[2]
        return f"encoder.downsamples.{idx}.{RESIDUAL.get(rest, rest)}"
    if m := _DEC_RESNET.fullmatch(name):
        idx = int(m[1]) * (per_level + 1) + int(m[2])
        return f"decoder.upsamples.{idx}.{_residual(m[3], name)}"
    if m := _DEC_UPSAMPLER.fullmatch(name):
        return f"decoder.upsamples.{int(m[1]) * (per_level + 1) + per_level}.{m[2]}"
    if m := _MID_RESNET.fullmatch(name):
        return f"{m[1]}.middle.{2 * int(m[2])}.{_residual(m[3], name)}"
    if m := _MID_ATTN.fullmatch(name):
        return f"{m[1]}.middle.1.{m[2]}"
    if m := _SIDE.fullmatch(name):
        return f"{m[1]}.{HEAD[m[2]]}.{m[3]}"
    if m := _TOP.fullmatch(name):
        return f"{TOP[m[1]]}.{m[2]}"
    raise CkptError(f"wan_vae: no original name for diffusers tensor {name!r}")


_ORIG_DOWN = re.compile(r"encoder\.downsamples\.(\d+)\.")


def config_from_original(shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
    """See `WanVae.config_from_original`."""
    try:
        conv_in = shapes["encoder.conv1.weight"]
        base_dim, z_dim = conv_in[0], shapes["decoder.conv1.weight"][1]
    except KeyError as e:
        raise CkptError(f"wan_vae: not a Wan 2.1-layout VAE (no {e.args[0]})") from None
    # walk the encoder's flat list: residual blocks, attention blocks, resamples
    count = num_blocks(shapes, "encoder.downsamples.")
    levels: list[dict] = [{"res": 0, "attn": False, "out": None}]
    temporal: list[bool] = []
    for idx in range(count):
        p = f"encoder.downsamples.{idx}."
        if f"{p}residual.2.weight" in shapes:
            levels[-1]["res"] += 1
            levels[-1]["out"] = shapes[f"{p}residual.2.weight"][0]
        elif f"{p}to_qkv.weight" in shapes:
            levels[-1]["attn"] = True
        elif f"{p}resample.1.weight" in shapes:
            temporal.append(f"{p}time_conv.weight" in shapes)
            levels.append({"res": 0, "attn": False, "out": None})
        else:
            raise CkptError(f"wan_vae: encoder.downsamples.{idx} is neither a residual, attention nor resample block")
    res = {lv["res"] for lv in levels}
    if len(res) != 1 or not all(lv["out"] for lv in levels):
        raise CkptError(f"wan_vae: encoder levels have unequal residual block counts {[lv['res'] for lv in levels]}")
    if any(n.startswith("decoder.upsamples.") and ".to_qkv." in n for n in shapes):
        raise CkptError("wan_vae: decoder attention blocks (attn_scales) have no diffusers counterpart")
    dim_mult = []
    for lv in levels:
        if lv["out"] % base_dim:
            raise CkptError(f"wan_vae: level width {lv['out']} is not a multiple of base_dim {base_dim}")
        dim_mult.append(lv["out"] // base_dim)
    return {
        **base,
        "base_dim": base_dim,
        "z_dim": z_dim,
        "input_channels": conv_in[1],  # AutoencoderKLQwenImage's name
        "in_channels": conv_in[1],  # AutoencoderKLWan's (each class drops the other's: models.canonical_config)
        "dim_mult": dim_mult,
        "num_res_blocks": res.pop(),
        "attn_scales": [1.0 / 2 ** i for i, lv in enumerate(levels) if lv["attn"]],
        "temperal_downsample": temporal,
    }


class WanVae:
    kind = "wan_vae"
    shape_keys = ("base_dim", "z_dim", "input_channels", "dim_mult", "num_res_blocks", "attn_scales",
                  "temperal_downsample")
    # not in any weight: the per-channel latent statistics the pipeline normalises with
    undetermined = {"latents_mean": "the latent channel means are not in the weights",
                    "latents_std": "the latent channel deviations are not in the weights"}

    def placeholders(self, shapes: dict[str, tuple[int, ...]]) -> dict:
        """Stand-ins for `undetermined` that give the right names and shapes whatever the real values
        are: only for reading names and shapes (convert/configs.py, not strict)."""
        z_dim = shapes["decoder.conv1.weight"][1] if "decoder.conv1.weight" in shapes else 16
        return {"latents_mean": [0.0] * z_dim, "latents_std": [1.0] * z_dim}

    def config_from_original(self, shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
        """The diffusers config of a component from its original-layout (prefix-stripped) shapes.
        `base` is the resolved config: its values stand for what the shapes cannot tell
        (latents_mean, latents_std, dropout)."""
        return config_from_original(shapes, base)

    def to_original(self, shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, Expr]:
        per_level = num_blocks(shapes, "decoder.up_blocks.0.resnets.")
        return {original_name(name, per_level): src(name) for name in shapes}

    def to_diffusers(self, state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
        """diffusers' converter for the released structure it hard-codes; any other: our inverse map."""
        if not _released_structure(state_dict):
            per_level = _decoder_per_level(state_dict)
            return {diffusers_name(name, per_level): t for name, t in state_dict.items()}
        from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

        return convert_wan_vae_to_diffusers(dict(state_dict))  # builds a new dict; a copy all the same


def _decoder_per_level(names) -> int:
    """ResidualBlocks per decoder level: the index of the first Resample (all blocks: one level)."""
    resamples = [int(n.split(".")[2]) for n in names if n.startswith("decoder.upsamples.") and ".resample." in n]
    return min(resamples) if resamples else num_blocks(names, "decoder.upsamples.")


def _released_structure(names) -> bool:
    """What `convert_wan_vae_to_diffusers` hard-codes: decoder.upsamples 0-14 (4 levels of 3 residual
    blocks), the only decoder shortcut at upsamples.4."""
    shortcuts = {int(n.split(".")[2]) for n in names if n.startswith("decoder.upsamples.") and ".shortcut." in n}
    return (num_blocks(names, "decoder.upsamples.") == 15 and _decoder_per_level(names) == 3
            and shortcuts <= {4})


_INV_RESIDUAL = {v: k for k, v in RESIDUAL.items()}
_O_DOWN = re.compile(r"encoder\.downsamples\.(\d+)\.(.+)")
_O_UP = re.compile(r"decoder\.upsamples\.(\d+)\.(.+)")
_O_MID = re.compile(r"(encoder|decoder)\.middle\.(\d+)\.(.+)")
_O_SIDE = re.compile(r"(encoder|decoder)\.(head\.0|head\.2|conv1)\.(.+)")
_O_TOP = re.compile(r"(conv1|conv2)\.(.+)")


def diffusers_name(name: str, per_level: int) -> str:
    """The inverse of `original_name`."""
    if m := _O_DOWN.fullmatch(name):
        return f"encoder.down_blocks.{m[1]}.{_INV_RESIDUAL.get(m[2], m[2])}"
    if m := _O_UP.fullmatch(name):
        level, i = divmod(int(m[1]), per_level + 1)
        if i == per_level:
            return f"decoder.up_blocks.{level}.upsamplers.0.{m[2]}"
        return f"decoder.up_blocks.{level}.resnets.{i}.{_INV_RESIDUAL.get(m[2], m[2])}"
    if m := _O_MID.fullmatch(name):
        if m[2] == "1":
            return f"{m[1]}.mid_block.attentions.0.{m[3]}"
        return f"{m[1]}.mid_block.resnets.{int(m[2]) // 2}.{_INV_RESIDUAL.get(m[3], m[3])}"
    if m := _O_SIDE.fullmatch(name):
        return f"{m[1]}.{_INV_HEAD[m[2]]}.{m[3]}"
    if m := _O_TOP.fullmatch(name):
        return f"{_INV_TOP[m[1]]}.{m[2]}"
    raise CkptError(f"wan_vae: no diffusers name for original tensor {name!r}")


_INV_HEAD = {v: k for k, v in HEAD.items()}
_INV_TOP = {v: k for k, v in TOP.items()}


LAYOUT = register(WanVae())
