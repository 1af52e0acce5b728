"""The LTX-2 video VAE (Lightricks' single files `ltx-2-19b-*.safetensors`, LTX-2.3's, under `vae.`) <->
diffusers `AutoencoderKLLTX2Video`.

The original names are LTX-Video 0.9.5's (convert/layouts/ltxv_vae.py): one flat list per side,
`encoder.down_blocks.K` / `decoder.up_blocks.K`, of res_x blocks (`res_blocks.M.*`), space-to-depth /
depth-to-space blocks (`conv.conv.*`), width-changing resnets, with `decoder.last_time_embedder` /
`decoder.last_scale_shift_table` and `per_channel_statistics.*` on top; diffusers groups them into levels.
Source: diffusers scripts/convert_ltx2_to_diffusers.py LTX_2_0_VIDEO_VAE_RENAME_DICT (2.0: 9 encoder, 7
decoder blocks) and LTX_2_3_VIDEO_VAE_RENAME_DICT (+ `up_blocks.7` / `.8`), and the single-file
convert_ltx2_vae_to_diffusers (diffusers.loaders.single_file_utils, the 2.0 table without `last_*`),
huggingface/diffusers@58eb52c0803ea9af3abec60841c2a093bdf1f951. Unlike 0.9.x, a resnet's shortcut is a
plain `conv_shortcut.*` Conv3d and its `norm3.*` a LayerNorm in both namings (no `.conv.` / `.norm.`
rename: LTX2VideoResnetBlock3d), so only `res_blocks` <-> `resnets` and the flat index change. No tensor
changes shape or bytes. Per-channel statistics as ltxv_vae: `mean-of-means` / `std-of-means` are the
`latents_mean` / `latents_std` buffers; the converter deletes `channel` and the `mean-of-stds*` ones
(LTX_2_0_VAE_SPECIAL_KEYS_REMAP, a substring match), reported as dropped here.

Why a layout of its own, not a second structure of ltxv_vae (as wan_vae holds Wan 2.1 and 2.2): another
diffusers class with other config keys (`upsample_type`, the padding modes, "LTX2VideoDownBlock3D"), and
the weights cannot tell the two apart: LTX-2.0's VAE is 0.9.5's structure without the timestep-
conditioned decoder, tensor for tensor. Which class a file is for comes from the family (ltx2's `vae.`)
or the signature (families/components.py: s2d encoder and no `last_time_embedder` -> LTX-2), not from
the shapes.

What the shapes tell: the latent channels, every level's width and resnet count, where and how each
side re-samples (an encoder space-to-depth block makes width / stride rows; a decoder depth-to-space
block takes width x upsample_factor and makes width x stride: both per level, so `upsample_type` too,
which 0.9.x fixes at 2x2x2), noise injection, timestep conditioning, the patch size given the pixel
channels, and the compression ratios (patch x the strides). What they do not: `in_channels` /
`out_channels`, `patch_size_t`, `upsample_residual`, the norm epsilon, the latent scale, causality and
the spatial padding modes (2.0's decoder reflects, 2.3's pads zeros) - from the released config or
--config.
"""

from __future__ import annotations

import torch

from ckptkit.convert.layouts import ltxv_vae, register
from ckptkit.convert.layouts.ltxv_vae import (STRIDE_TYPE, _blocks, _levels, _res_count, converted_or_ours,
                                              decoder_plan, latent_channels, pixel_patch, res_width, stride_ratios,
                                              width_in)
from ckptkit.engine.expr import Expr, src
from ckptkit.errors import CkptError

TITLE = "LTX-2 video VAE"
CLASS = "AutoencoderKLLTX2Video"
BLOCK = "LTX2VideoDownBlock3D"
# LTX2VideoDownsampler3d / LTX2VideoUpsampler3d take ltxv_vae's STRIDE_TYPE strides; the top-level names
# (LTX_2_0_VIDEO_VAE_RENAME_DICT's `last_*` and statistics entries) are ltxv_vae's TOP


def _per_level(value, n: int) -> list:
    """A config value the class takes as a bool or a tuple, per level (AutoencoderKLLTX2Video.__init__)."""
    return [value] * n if isinstance(value, bool) else list(value)


def normalized(config: dict) -> dict:
    out = dict(config)
    out["spatio_temporal_scaling"] = _per_level(config["spatio_temporal_scaling"], len(config["layers_per_block"]) - 1)
    out["decoder_spatio_temporal_scaling"] = _per_level(config["decoder_spatio_temporal_scaling"],
                                                        len(config["decoder_layers_per_block"]) - 1)
    return out


# --- the flat index of every diffusers module, from the config ---------------------------------------

def encoder_plan(config: dict) -> dict:
    """{(level, part) or "mid": original encoder.down_blocks index}: LTX2VideoEncoder3d's levels are a res_x
    and, where it down-samples, a re-sampler (no width-changing resnet: the re-sampler changes the width)."""
    scaling = normalized(config)["spatio_temporal_scaling"]
    plan, k = {}, 0
    for i in range(len(config["block_out_channels"])):
        plan[(i, "resnets")] = k
        k += 1
        if scaling[i]:
            plan[(i, "downsamplers.0")] = k
            k += 1
    plan["mid"] = k
    return plan


def original_name(name: str, enc: dict, dec: dict) -> str:
    """ltxv_vae's map with no renames inside a block (LTX2VideoResnetBlock3d's names are the original's)."""
    return ltxv_vae.original_name(name, enc, dec, TITLE, renames=())


# --- the config from original shapes ------------------------------------------------------------------

def config_from_original(shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
    """See the module doc: what the shapes decide, the rest from `base`."""
    latent = latent_channels(shapes, TITLE, CLASS)
    if shapes["encoder.conv_in.conv.weight"][0] != latent:
        raise CkptError(f"{TITLE}: encoder.conv_in makes {shapes['encoder.conv_in.conv.weight'][0]} channels, not the "
                        f"{latent} latent channels ({CLASS}'s encoder starts at latent_channels wide)")

    def given(key: str, n: int) -> list | None:  # a per-level value no weight decides, where `base` fits n levels
        value = base.get(key)
        return list(value) if isinstance(value, (list, tuple)) and len(value) == n else None

    # encoder: levels of res_x [re-sampler]; the re-sampler makes the next level's width
    enc, enc_mid = _levels(_blocks(shapes, "encoder.down_blocks.", TITLE), "encoder", TITLE, CLASS)
    if any("xy" in lv for lv in enc):
        raise CkptError(f"{TITLE}: the encoder has a width-changing resnet ({CLASS}'s down blocks change the width "
                        f"in their space-to-depth block only)")
    flat = [b for lv in enc for b in (lv["res"], lv.get("down")) if b] + [enc_mid]
    widths, layers, scaling, down_types = [], [], [], []
    known_types = given("downsample_type", len(enc))
    width = latent
    for i, lv in enumerate(enc):
        if _res_count(shapes, lv["res"][1]) and res_width(shapes, lv["res"][1], TITLE) != width:
            raise CkptError(f"{TITLE}: encoder level {i} is {res_width(shapes, lv['res'][1], TITLE)} wide but takes "
                            f"{width} channels")
        layers.append(_res_count(shapes, lv["res"][1]))
        scaling.append("down" in lv)
        last = lv.get("down") or lv["res"]
        out = width_in(shapes, *flat[flat.index(last) + 1])  # what the next block takes
        if "down" not in lv:  # no re-sampler: its type changes no weight
            down_types.append(known_types[i] if known_types else "conv")
        elif lv["down"][0] == "s2d":
            rows = shapes[lv["down"][1] + "conv.conv.weight"][0]
            if out % rows or out // rows not in STRIDE_TYPE:
                raise CkptError(f"{TITLE}: encoder level {i}'s space-to-depth block makes {rows} channels for "
                                f"{out}: not a stride of 2, 4 or 8")
            down_types.append(STRIDE_TYPE[out // rows])
        else:
            if out != width:
                raise CkptError(f"{TITLE}: encoder level {i}'s strided conv keeps {width} channels but the next "
                                f"block takes {out}")
            down_types.append("conv")
        widths.append(out)
        width = out
    layers.append(_res_count(shapes, enc_mid[1]))

    # decoder: [width-changing resnet] [depth-to-space: width x factor in, width x stride out] res_x
    dec, dec_mid = _levels(_blocks(shapes, "decoder.up_blocks.", TITLE), "decoder", TITLE, CLASS)
    mid_width = res_width(shapes, dec_mid[1], TITLE)
    dec_widths, dec_layers, dec_scaling, factors, up_types = [], [_res_count(shapes, dec_mid[1])], [], [], []
    noise = [dec_mid[1] + "res_blocks.0.per_channel_scale1" in shapes]
    known_types = given("upsample_type", len(dec))
    for i, lv in enumerate(dec):
        if "up" in lv and lv["up"][0] != "s2d":
            raise CkptError(f"{TITLE}: decoder level {i} up-samples with a plain conv ({CLASS}'s up-samplers are "
                            f"depth-to-space)")
        width = res_width(shapes, lv["res"][1], TITLE)
        factor, kind = 1, known_types[i] if known_types else "spatiotemporal"
        if "up" in lv:
            rows, cols = shapes[lv["up"][1] + "conv.conv.weight"][:2]
            if rows % width or cols % width or rows // width not in STRIDE_TYPE:
                raise CkptError(f"{TITLE}: decoder level {i}'s depth-to-space block maps {cols} to {rows} channels "
                                f"for {width}: not width x factor to width x a stride of 2, 4 or 8")
            factor, kind = cols // width, STRIDE_TYPE[rows // width]
        dec_widths.append(width * factor)
        dec_layers.append(_res_count(shapes, lv["res"][1]))
        dec_scaling.append("up" in lv)
        factors.append(factor)
        up_types.append(kind)
        noise.append(lv["res"][1] + "res_blocks.0.per_channel_scale1" in shapes)
    if dec and dec_widths[0] != mid_width:
        raise CkptError(f"{TITLE}: the decoder's mid block is {mid_width} wide but its first level takes "
                        f"{dec_widths[0]} (width x up-sampling factor): no {CLASS} decoder")

    patch, patch_t = pixel_patch(shapes, base, TITLE)
    # the class's own formula counts every level as 2x2x2: the ratios from the strides (2.0 / 2.3: 32, 8)
    spatial, temporal = stride_ratios(down_types, scaling, patch, patch_t)
    config = {
        "latent_channels": latent,
        "block_out_channels": widths,
        "down_block_types": [BLOCK] * len(enc),
        "layers_per_block": layers,
        "spatio_temporal_scaling": scaling,
        "downsample_type": down_types,
        "decoder_block_out_channels": list(reversed(dec_widths)),
        "decoder_layers_per_block": list(reversed(dec_layers)),
        "decoder_spatio_temporal_scaling": list(reversed(dec_scaling)),
        "decoder_inject_noise": list(reversed(noise)),
        # in the decoder's own order: LTX2VideoDecoder3d reverses every per-level list but this one
        "upsample_type": up_types,
        "upsample_factor": list(reversed(factors)),
        "timestep_conditioning": "decoder.last_time_embedder.timestep_embedder.linear_1.weight" in shapes,
        "patch_size": patch,
        "spatial_compression_ratio": spatial,
        "temporal_compression_ratio": temporal,
    }
    # no weights: taken from the config when it fits these levels (released configs fit their own)
    residual = base.get("upsample_residual")
    if isinstance(residual, (list, tuple)) and len(residual) == len(dec):
        config["upsample_residual"] = list(residual)
    return config


class Ltx2Vae:
    kind = "ltx2_vae"
    shape_keys = ("latent_channels", "block_out_channels", "down_block_types", "layers_per_block",
                  "spatio_temporal_scaling", "downsample_type", "decoder_block_out_channels",
                  "decoder_layers_per_block", "decoder_spatio_temporal_scaling", "decoder_inject_noise",
                  "upsample_type", "upsample_factor", "timestep_conditioning", "patch_size")
    undetermined = {
        **ltxv_vae.LtxvVae.undetermined,
        "scaling_factor": "the latent scale LTX2Pipeline divides by is not in the weights",
        "encoder_spatial_padding_mode": "the spatial padding mode changes no weight",
        "decoder_spatial_padding_mode": "the spatial padding mode changes no weight",
    }

    def placeholders(self, shapes: dict[str, tuple[int, ...]]) -> dict:
        return ltxv_vae.placeholders(shapes, TITLE)

    def config_from_original(self, shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
        return config_from_original(shapes, base)

    def to_original(self, shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, Expr]:
        config = normalized(config)
        enc, dec = encoder_plan(config), decoder_plan(config)
        return {original_name(name, enc, dec): src(name) for name in shapes}

    def to_diffusers(self, state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
        """diffusers' convert_ltx2_vae_to_diffusers where it names every tensor as our map does (the 2.0
        structure, no timestep conditioning: its table has no `last_*`); our inverse map otherwise. The
        per-channel statistics with no diffusers counterpart are left out, as the converter deletes them."""
        from diffusers.loaders.single_file_utils import convert_ltx2_vae_to_diffusers

        from ckptkit.convert.models import diffusers_shapes

        config = normalized(config)
        enc, dec = encoder_plan(config), decoder_plan(config)
        return converted_or_ours(state_dict, {original_name(n, enc, dec): n for n in diffusers_shapes(CLASS, config)},
                                 convert_ltx2_vae_to_diffusers)


LAYOUT = register(Ltx2Vae())
