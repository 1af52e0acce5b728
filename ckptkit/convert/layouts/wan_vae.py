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

The Wan 2.2 VAE (Wan2.2_VAE.pth, TI2V-5B's; Wan-Video/Wan2.2@42bf4cfa wan/modules/vae2_2.py `WanVAE_`)
goes through the same layout, told apart by its nested names (one spec component, one layout: the
family's `vae` picks its released config by the shapes, convert/configs.py). Its levels are
`Down_ResidualBlock` / `Up_ResidualBlock` (diffusers `AutoencoderKLWan(is_residual=True)`), each a
Sequential of ResidualBlocks and a final Resample; their AvgDown3D / DupUp3D shortcuts hold no weights:
  encoder.downsamples.X.downsamples.Y.*  (Y < num_res_blocks)      -> encoder.down_blocks.X.resnets.Y.*
  encoder.downsamples.X.downsamples.R.*  (R = num_res_blocks: the Resample) -> encoder.down_blocks.X.downsampler.*
  decoder.upsamples.X.upsamples.Y.*      (Y < num_res_blocks + 1)  -> decoder.up_blocks.X.resnets.Y.*
  decoder.upsamples.X.upsamples.R.*      (R = num_res_blocks + 1)  -> decoder.up_blocks.X.upsampler.*
and the middle / head / conv1 / conv2 names as in 2.1 (huggingface/diffusers@58eb52c0
scripts/convert_wan_to_diffusers.py `convert_vae_22`: the same renames). diffusers has no importable
2.2 converter (`convert_wan_vae_to_diffusers` is 2.1's flat map; `convert_vae_22` is a script that
downloads): both directions are ours, indices derived from the shapes.
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


def _dim_mult(widths: list[int], base_dim: int) -> list[int]:
    """The encoder levels' widths as multiples of base_dim (2.1 and 2.2 alike)."""
    for w in widths:
        if w % base_dim:
            raise CkptError(f"wan_vae: level width {w} is not a multiple of base_dim {base_dim}")
    return [w // base_dim for w in widths]


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
    dim_mult = _dim_mult([lv["out"] for lv in levels], base_dim)
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
    # not in any weight: the per-channel latent statistics the pipeline normalises with; and, for the
    # Wan 2.2 structure only (`determined`), the patchify step (conv1's 12 inputs are 3 x 2 x 2 in the
    # release, or 12 channels unpatched: the weights cannot tell) and the pipeline's scale factors
    undetermined = {"latents_mean": "the latent channel means are not in the weights",
                    "latents_std": "the latent channel deviations are not in the weights",
                    "patch_size": "the Wan 2.2 VAE's patchify step is not in the weights",
                    "scale_factor_spatial": "the Wan 2.2 VAE's pipeline scale factors are not read from the weights",
                    "scale_factor_temporal": "the Wan 2.2 VAE's pipeline scale factors are not read from the weights"}
    _WAN22_ONLY = ("patch_size", "scale_factor_spatial", "scale_factor_temporal")

    def determined(self, shapes: dict[str, tuple[int, ...]]) -> set[str]:
        """The Wan 2.1 (flat) structure keeps its rule from before 2.2: only the statistics are
        undetermined, the rest is the spec's (AutoencoderKLQwenImage has none of the 2.2-only keys)."""
        return set() if is_wan22(shapes) else set(self._WAN22_ONLY)

    def shape_keys_for(self, shapes: dict[str, tuple[int, ...]]) -> tuple[str, ...]:
        """What a released config must equal to be taken (convert/configs.py): the 2.2 structure adds
        the keys only it reads from the shapes."""
        return self.shape_keys + WAN22_SHAPE_KEYS if is_wan22(shapes) else self.shape_keys

    def placeholders(self, shapes: dict[str, tuple[int, ...]]) -> dict:
        """Stand-ins for `undetermined` that give the right names and shapes whatever the real values
        are: only for reading names and shapes (convert/configs.py, not strict)."""
        z_dim = shapes["decoder.conv1.weight"][1] if "decoder.conv1.weight" in shapes else 16
        out = {"latents_mean": [0.0] * z_dim, "latents_std": [1.0] * z_dim}
        if is_wan22(shapes):  # no tensor's shape depends on these (in_channels is read from conv1)
            out.update(patch_size=None, scale_factor_spatial=8, scale_factor_temporal=4)
        return out

    def config_from_original(self, shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
        """The diffusers config of a component from its original-layout (prefix-stripped) shapes.
        `base` is the resolved config: its values stand for what the shapes cannot tell
        (latents_mean, latents_std, dropout; for 2.2 patch_size, scale_factor_*)."""
        if is_wan22(shapes):
            return config_from_original_22(shapes, base)
        return config_from_original(shapes, base)

    def to_original(self, shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, Expr]:
        if is_wan22(shapes):
            return {original_name_22(name, shapes): src(name) for name in shapes}
        per_level = num_blocks(shapes, "decoder.up_blocks.0.resnets.")
        return {original_name(name, per_level): src(name) for name in shapes}

    def to_diffusers(self, state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
        """diffusers' converter for the released structure it hard-codes; any other: our inverse map."""
        if is_wan22(state_dict):  # no importable 2.2 converter in diffusers (module docstring)
            return {diffusers_name_22(name): t for name, t in state_dict.items()}
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


# --- Wan 2.2: nested levels (module docstring) ---------------------------------------------------------

WAN22_SHAPE_KEYS = ("is_residual", "decoder_base_dim", "in_channels", "out_channels")
_WAN22_NAMES = ("encoder.downsamples.0.downsamples.0.residual.0.gamma",  # original
                "encoder.down_blocks.0.resnets.0.norm1.gamma")  # diffusers (2.1's: encoder.down_blocks.0.norm1.gamma)


def is_wan22(names) -> bool:
    """The Wan 2.2 (nested, residual-level) structure, in either naming."""
    return any(n in names for n in _WAN22_NAMES)


_D22_RESNET = re.compile(r"(encoder\.down|decoder\.up)_blocks\.(\d+)\.resnets\.(\d+)\.(.+)")
_D22_RESAMPLE = re.compile(r"(encoder\.down|decoder\.up)_blocks\.(\d+)\.(?:downsampler|upsampler)\.(.+)")


def original_name_22(name: str, shapes) -> str:
    """The Wan 2.2 name of one diffusers (is_residual) VAE tensor name; the Resample's index in its
    level's Sequential is the level's ResidualBlock count (read from `shapes`)."""
    if m := _D22_RESNET.fullmatch(name):
        return f"{m[1]}samples.{m[2]}.{m[1].split('.')[1]}samples.{m[3]}.{_residual(m[4], name)}"
    if m := _D22_RESAMPLE.fullmatch(name):
        idx = num_blocks(shapes, f"{m[1]}_blocks.{m[2]}.resnets.")
        return f"{m[1]}samples.{m[2]}.{m[1].split('.')[1]}samples.{idx}.{m[3]}"
    if name.startswith(("encoder.down_blocks.", "decoder.up_blocks.")):
        raise CkptError(f"wan_vae: no original name for diffusers tensor {name!r}")
    return original_name(name, 0)  # middle, head, conv_in, quant convs: as in 2.1


_O22_LEVEL = re.compile(r"(encoder\.down|decoder\.up)samples\.(\d+)\.(?:down|up)samples\.(\d+)\.(.+)")


def diffusers_name_22(name: str) -> str:
    """The inverse of `original_name_22` (convert_vae_22's renames: ResidualBlock parts -> resnets.Y,
    the Resample's `resample.*` / `time_conv.*` -> down/upsampler, its index dropped)."""
    if m := _O22_LEVEL.fullmatch(name):
        blocks = f"{m[1]}_blocks.{m[2]}"
        if m[4] in _INV_RESIDUAL:
            return f"{blocks}.resnets.{m[3]}.{_INV_RESIDUAL[m[4]]}"
        if m[4].startswith(("resample.", "time_conv.")):
            return f"{blocks}.{'downsampler' if m[1] == 'encoder.down' else 'upsampler'}.{m[4]}"
        raise CkptError(f"wan_vae: no diffusers name for original tensor {name!r}")
    if name.startswith(("encoder.downsamples.", "decoder.upsamples.")):
        raise CkptError(f"wan_vae: {name!r} is not in the Wan 2.2 nested layout")
    return diffusers_name(name, 0)


def _levels_22(shapes, side: str) -> list[dict]:
    """Per level of the encoder ('encoder.downsamples') or decoder ('decoder.upsamples'): its
    ResidualBlock count, output width, whether it ends in a Resample and whether that has a time_conv."""
    inner = side.split(".")[1]
    levels = []
    for x in range(num_blocks(shapes, f"{side}.")):
        p = f"{side}.{x}.{inner}."
        count = num_blocks(shapes, p)
        res = [y for y in range(count) if f"{p}{y}.residual.2.weight" in shapes]
        resample = [y for y in range(count) if f"{p}{y}.resample.1.weight" in shapes]
        if not res or res != list(range(len(res))) or resample not in ([], [len(res)]) \
                or len(res) + len(resample) != count:
            raise CkptError(f"wan_vae: {side}.{x} is not residual blocks followed by at most one resample")
        levels.append({"res": len(res), "out": shapes[f"{p}{res[-1]}.residual.2.weight"][0],
                       "resample": bool(resample),
                       "time": bool(resample) and f"{p}{len(res)}.time_conv.weight" in shapes})
    return levels


def config_from_original_22(shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
    """The AutoencoderKLWan(is_residual=True) config the Wan 2.2 shapes determine; `base` gives the
    rest (latents_mean / std, patch_size, scale_factor_*)."""
    conv_in, z_dim = shapes["encoder.conv1.weight"], shapes["decoder.conv1.weight"][1]
    head, dec_in = shapes["decoder.head.2.weight"], shapes["decoder.conv1.weight"][0]
    base_dim = conv_in[0]
    enc, dec = _levels_22(shapes, "encoder.downsamples"), _levels_22(shapes, "decoder.upsamples")
    if any(lv["resample"] for lv in enc[-1:]) or not all(lv["resample"] for lv in enc[:-1]):
        raise CkptError("wan_vae: every encoder level but the last ends in a resample (Wan 2.2)")
    counts = {lv["res"] for lv in enc}
    if len(counts) != 1:
        raise CkptError(f"wan_vae: encoder levels have unequal residual block counts {[lv['res'] for lv in enc]}")
    num_res = counts.pop()
    if len(dec) != len(enc) or any(lv["res"] != num_res + 1 for lv in dec):
        raise CkptError(f"wan_vae: the decoder's levels {[lv['res'] for lv in dec]} are not the encoder's "
                        f"{len(enc)} levels of num_res_blocks + 1 = {num_res + 1}")
    temporal = [lv["time"] for lv in enc[:-1]]
    if [lv["time"] for lv in dec[:-1]] != temporal[::-1]:
        raise CkptError("wan_vae: the decoder's temporal upsamples are not the encoder's downsamples reversed")
    if any(n.startswith(("encoder.downsamples.", "decoder.upsamples.")) and ".to_qkv." in n for n in shapes):
        raise CkptError("wan_vae: attention blocks in Wan 2.2 levels have no diffusers counterpart")
    dim_mult = _dim_mult([lv["out"] for lv in enc], base_dim)
    # the decoder's widths: decoder_base_dim x dim_mult reversed (vae2_2.py Decoder3d `dims`)
    decoder_base_dim, rem = divmod(head[1], dim_mult[0])
    if rem or dec_in != decoder_base_dim * dim_mult[-1] \
            or [lv["out"] for lv in dec] != [decoder_base_dim * u for u in dim_mult[::-1]]:
        raise CkptError(f"wan_vae: decoder widths {[lv['out'] for lv in dec]} are not one decoder_base_dim "
                        f"times dim_mult {dim_mult} reversed")
    missing = [k for k in WanVae._WAN22_ONLY if k not in base]  # None is a value (unpatched); absent is not
    if missing:
        raise CkptError(f"wan_vae: the Wan 2.2 VAE's {', '.join(missing)} is not in the weights: give the "
                        f"component's config with --config FILE")
    return {
        **base,
        "base_dim": base_dim,
        "decoder_base_dim": decoder_base_dim,
        "z_dim": z_dim,
        "input_channels": conv_in[1],
        "in_channels": conv_in[1],
        "out_channels": head[0],
        "dim_mult": dim_mult,
        "num_res_blocks": num_res,
        "attn_scales": [],  # the residual levels have none (diffusers ignores attn_scales there)
        "temperal_downsample": temporal,
        "is_residual": True,
    }


LAYOUT = register(WanVae())
