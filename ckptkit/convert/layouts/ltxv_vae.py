"""The LTX-Video 0.9.x causal video VAE (Lightricks' single files `ltx-video-2b-v0.9*.safetensors`,
`ltxv-13b-0.9.7-*` under `vae.`; LTX-Video ltx_video/models/autoencoders/causal_video_autoencoder.py
CausalVideoAutoencoder, Lightricks/LTX-Video@5260738e171955b66c0827f9af7e84d68fd1d919) <-> diffusers
`AutoencoderKLLTXVideo`.

The original encoder and decoder are ONE flat list each (`encoder.down_blocks.K`, `decoder.up_blocks.K`)
of blocks of three kinds, which diffusers groups into levels:
  res_x      UNetMidBlock3D: `res_blocks.M.*` (+ `time_embedder.*`)  -> a level's `resnets.M.*` / `time_embedder.*`
                                                                      (the encoder's last, the decoder's
                                                                      first: `mid_block`)
  res_x_y    one ResnetBlock3D changing the width                    -> encoder `down_blocks.L.conv_out.*`,
                                                                      decoder `up_blocks.L.conv_in.*`
  compress   a strided causal conv (`conv.weight`) or a space-to-depth
             / depth-to-space block (`conv.conv.weight`)             -> `down_blocks.L.downsamplers.0.*` /
                                                                      `up_blocks.L.upsamplers.0.*`
An encoder level is res_x [compress] [res_x_y]; a decoder level is [res_x_y] [compress] res_x, in this
order. Inside a block: `conv_shortcut.*` (a 1x1 Conv3d) -> `conv_shortcut.conv.*`, `norm3.norm.*` ->
`norm3.*`; on top: `decoder.last_time_embedder` / `decoder.last_scale_shift_table` -> `decoder.time_embedder`
/ `decoder.scale_shift_table` (0.9.1+, with the 0-dim `decoder.timestep_scale_multiplier`, same name),
`per_channel_statistics.mean-of-means` / `std-of-means` -> the `latents_mean` / `latents_std` buffers.
No tensor changes shape or bytes.

diffusers' convert_ltx_vae_checkpoint_to_diffusers (diffusers.loaders.single_file_utils; the same tables
as scripts/convert_ltx_to_diffusers.py VAE_KEYS_RENAME_DICT / VAE_091_RENAME_DICT / VAE_095_RENAME_DICT,
huggingface/diffusers@58eb52c0803ea9af3abec60841c2a093bdf1f951) hard-codes the flat indices of the
three released structures and picks the 0.9.5 table by `encoder.conv_out` having 2048 input channels:
`to_diffusers` uses it where it names every tensor as our map does, our inverse map otherwise (other
depths, a 0.9.5 structure narrower than 2048). `to_original` derives every index from the config, the
way LTXVideoEncoder3d / LTXVideoDecoder3d build their levels.

Per-channel statistics: LTX files carry `per_channel_statistics.{channel, mean-of-means, std-of-means,
mean-of-stds, mean-of-stds_over_std-of-means}`; AutoencoderKLLTXVideo keeps the two LTXPipeline
de-normalises with. The others (`channel` is an index, the `*-of-stds*` ones are unused by LTX's and
diffusers' pipelines; the converter deletes them) have no diffusers counterpart: converting to diffusers
REPORTS them as dropped (the plan's `dropped` list, the manifest, the CLI's "dropped N tensors"), and a
diffusers file converted back has only the two statistics. Both statistics are required: an original
file without them is refused (their values are not in any other weight).

What the shapes tell: the latent channels, every level's width and resnet count, where the encoder
down-samples and how (0.9.5's space-to-depth blocks: the stride from the width ratio), where the
decoder up-samples and its channel reduction (`upsample_factor`), noise injection (per-channel scales),
timestep conditioning (the time embedders), and the patch size given the pixel channels. What they do
not: `in_channels` / `out_channels` (conv_in sees in_channels x patch^2), `patch_size_t`, whether an
up-sampler adds its depth-to-space residual (`upsample_residual`: no weights), the norm epsilon, the
latent scale, causality, and the compression ratios of a 0.9.0-style encoder (the class computes them).
"""

from __future__ import annotations

import math
import re

import torch

from ckptkit.convert.layouts import num_blocks, register
from ckptkit.engine.expr import Expr, src
from ckptkit.errors import CkptError

TITLE = "LTX-Video VAE"
BLOCK = "LTXVideoDownBlock3D"
BLOCK_095 = "LTXVideo095DownBlock3D"
# LTXVideoDownsampler3d (0.9.5's space-to-depth) stride product -> downsample_type
STRIDE_TYPE = {2: "temporal", 4: "spatial", 8: "spatiotemporal"}
TYPE_STRIDE = {"temporal": (2, 1, 1), "spatial": (1, 2, 2), "spatiotemporal": (2, 2, 2), "conv": (2, 2, 2)}
# inside a block: diffusers -> original
INNER = (("conv_shortcut.conv.", "conv_shortcut."), ("norm3.", "norm3.norm."))
TOP = {"latents_mean": "per_channel_statistics.mean-of-means", "latents_std": "per_channel_statistics.std-of-means",
       "decoder.time_embedder.": "decoder.last_time_embedder.",
       "decoder.scale_shift_table": "decoder.last_scale_shift_table"}


# --- the flat index of every diffusers module, from the config ---------------------------------------

def encoder_plan(config: dict) -> dict:
    """{(level, part) or "mid": original encoder.down_blocks index}, as LTXVideoEncoder3d builds its levels."""
    types, widths = list(config["down_block_types"]), list(config["block_out_channels"])
    is_095 = types[-1] == BLOCK_095
    levels = len(widths) - (1 if is_095 else 0)
    plan, k, width = {}, 0, widths[0]
    for i in range(levels):
        before = width
        width = widths[i + 1] if is_095 or i + 1 < levels else widths[i]
        plan[(i, "resnets")] = k
        k += 1
        if config["spatio_temporal_scaling"][i]:
            plan[(i, "downsamplers.0")] = k
            k += 1
        if types[i] == BLOCK and before != width:
            plan[(i, "conv_out")] = k
            k += 1
    plan["mid"] = k
    return plan


def decoder_plan(config: dict) -> dict:
    """{(level, part) or "mid": original decoder.up_blocks index}, as LTXVideoDecoder3d builds its levels."""
    widths = list(reversed(config["decoder_block_out_channels"]))
    scaling = list(reversed(config["decoder_spatio_temporal_scaling"]))
    factor = list(reversed(config.get("upsample_factor") or [1] * len(widths)))
    plan, k, width = {"mid": 0}, 1, widths[0]
    for i in range(len(widths)):
        before, width = width // factor[i], widths[i] // factor[i]
        if before != width:
            plan[(i, "conv_in")] = k
            k += 1
        if scaling[i]:
            plan[(i, "upsamplers.0")] = k
            k += 1
        plan[(i, "resnets")] = k
        k += 1
    return plan


def _inner(rest: str, renames: tuple = INNER) -> str:
    for diffusers, original in renames:
        if rest.startswith(diffusers):
            return rest.replace(diffusers, original, 1)
    return rest


_D_LEVEL = re.compile(r"(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.(resnets\.\d+|downsamplers\.0|upsamplers\.0|"
                      r"conv_out|conv_in|time_embedder)\.(.+)")
_D_MID = re.compile(r"(encoder|decoder)\.mid_block\.(resnets\.\d+|time_embedder)\.(.+)")


def _in_res_x(part: str, rest: str, renames: tuple) -> str:
    if part.startswith("resnets."):
        return f"res_blocks.{part.split('.')[1]}.{_inner(rest, renames)}"
    return f"{part}.{rest}"  # time_embedder


def original_name(name: str, enc: dict, dec: dict, title: str = TITLE, renames: tuple = INNER) -> str:
    """The original name of one diffusers tensor, the flat indices from the `encoder_plan` / `decoder_plan`
    of the config; `title` / `renames`: the layout's (ltx2_vae: no renames inside a block)."""
    if m := _D_LEVEL.fullmatch(name):
        side, level, part, rest = m[1], int(m[2]), m[3], m[4]
        plan = enc if side.startswith("encoder") else dec
        key = (level, "resnets" if part.startswith("resnets.") or part == "time_embedder" else part)
        if key not in plan:
            raise CkptError(f"{title}: no original block for diffusers tensor {name!r} at this config")
        if key[1] == "resnets":
            return f"{side}.{plan[key]}.{_in_res_x(part, rest, renames)}"
        return f"{side}.{plan[key]}.{_inner(rest, renames) if part in ('conv_out', 'conv_in') else rest}"
    if m := _D_MID.fullmatch(name):
        side = "encoder.down_blocks" if m[1] == "encoder" else "decoder.up_blocks"
        plan = enc if m[1] == "encoder" else dec
        return f"{side}.{plan['mid']}.{_in_res_x(m[2], m[3], renames)}"
    for diffusers, original in TOP.items():
        if name == diffusers or (diffusers.endswith(".") and name.startswith(diffusers)):
            return original + name[len(diffusers):]
    if re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out)\.conv\.(weight|bias)|decoder\.timestep_scale_multiplier",
                    name):
        return name
    raise CkptError(f"{title}: no original name for diffusers tensor {name!r}")


# --- the config from original shapes ------------------------------------------------------------------

def _blocks(shapes: dict, prefix: str, title: str = TITLE) -> list[tuple[str, str]]:
    """[(kind, block prefix)] of one flat list: "res" | "xy" (a width-changing resnet) | "s2d" (a
    space-to-depth / depth-to-space block) | "conv" (a strided conv). `title`: the layout refusing
    (ltx2_vae reads the same flat lists)."""
    out = []
    for k in range(num_blocks(shapes, prefix)):
        p = f"{prefix}{k}."
        if any(n.startswith((p + "res_blocks.", p + "time_embedder.")) for n in shapes):
            out.append(("res", p))
        elif p + "conv1.conv.weight" in shapes:
            out.append(("xy", p))
        elif p + "conv.conv.weight" in shapes:
            out.append(("s2d", p))
        elif p + "conv.weight" in shapes:
            out.append(("conv", p))
        else:
            raise CkptError(f"{title}: {p.rstrip('.')} holds no block this layout knows (no res_blocks, conv1 or conv)")
    return out


def _res_count(shapes: dict, p: str) -> int:
    return num_blocks(shapes, p + "res_blocks.")


def _int(base: dict, key: str, title: str = TITLE) -> int:
    value = base.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CkptError(f"{title}: {key} is not in the weights and no config gives it (a positive integer, not "
                        f"{value!r}); give it with --config")
    return value


def _levels(blocks: list, side: str, title: str = TITLE,
            cls: str = "AutoencoderKLLTXVideo") -> tuple[list[dict], tuple[str, str]]:
    """Group one flat list into levels; the mid block apart."""
    order = {"encoder": ("res", "down", "xy"), "decoder": ("xy", "up", "res")}[side]
    if not blocks or blocks[-1 if side == "encoder" else 0][0] != "res":
        raise CkptError(f"{title}: the {side}'s {'last' if side == 'encoder' else 'first'} block is not a res_x "
                        f"(the mid block)")
    mid = blocks[-1] if side == "encoder" else blocks[0]
    rest = blocks[:-1] if side == "encoder" else blocks[1:]
    levels: list[dict] = []
    current: dict | None = None
    for kind, p in rest:
        slot = "res" if kind == "res" else "xy" if kind == "xy" else order[1]
        opens = (side == "encoder" and slot == "res") or current is None
        if opens:
            current = {}
            levels.append(current)
        if slot in current or (current and order.index(slot) < max(order.index(s) for s in current)):
            raise CkptError(f"{title}: {p.rstrip('.')} ({kind}) is out of the order {'/'.join(order)} "
                            f"{cls}'s {side} levels have")
        current[slot] = (kind, p)
        if side == "decoder" and slot == "res":
            current = None
    if side == "decoder" and current is not None:
        raise CkptError(f"{title}: the decoder ends with {list(current)} and no res_x after it")
    return levels, mid


def latent_channels(shapes: dict, title: str = TITLE, cls: str = "AutoencoderKLLTXVideo") -> int:
    """The latent channels, after checking the four end convs are there and the encoder's output is the
    latent channels + 1 (the uniform log-variance both LTX classes have)."""
    for name in ("encoder.conv_in.conv.weight", "decoder.conv_in.conv.weight", "encoder.conv_out.conv.weight",
                 "decoder.conv_out.conv.weight"):
        if name not in shapes:
            raise CkptError(f"{title}: not an {title} (no {name})")
    latent = shapes["decoder.conv_in.conv.weight"][1]
    if shapes["encoder.conv_out.conv.weight"][0] != latent + 1:
        raise CkptError(f"{title}: encoder.conv_out has {shapes['encoder.conv_out.conv.weight'][0]} rows, not "
                        f"{latent} latent channels + 1 (the uniform log-variance {cls} has)")
    return latent


def width_in(shapes: dict, kind: str, p: str) -> int:
    """The channels a block of `_blocks`' kind takes."""
    return shapes[p + ("res_blocks.0.conv1.conv.weight" if kind == "res" else "conv1.conv.weight" if kind == "xy"
                       else "conv.conv.weight" if kind == "s2d" else "conv.weight")][1]


def res_width(shapes: dict, p: str, title: str = TITLE) -> int:
    """A res_x block's width (its first resnet's)."""
    if _res_count(shapes, p) == 0:
        raise CkptError(f"{title}: {p.rstrip('.')} has no res_blocks (an empty res_x: its width is not in the "
                        f"weights)")
    return shapes[p + "res_blocks.0.conv1.conv.weight"][0]


def pixel_patch(shapes: dict, base: dict, title: str = TITLE) -> tuple[int, int]:
    """(patch_size, patch_size_t): conv_in sees in_channels x patch^2, decoder.conv_out makes out_channels
    x patch^2; the pixel channels and the temporal patch from `base`."""
    in_channels, out_channels = _int(base, "in_channels", title), _int(base, "out_channels", title)
    cols, rows = shapes["encoder.conv_in.conv.weight"][1], shapes["decoder.conv_out.conv.weight"][0]
    patch = math.isqrt(cols // in_channels) if cols % in_channels == 0 else 0
    if patch < 1 or patch * patch * in_channels != cols or rows != out_channels * patch * patch:
        raise CkptError(f"{title}: encoder.conv_in takes {cols} channels and decoder.conv_out makes {rows}: not "
                        f"{in_channels} / {out_channels} pixel channels in a square patch")
    return patch, _int(base, "patch_size_t", title)


def stride_ratios(down_types: list[str], scaling: list[bool], patch: int, patch_t: int) -> tuple[int, int]:
    """(spatial, temporal) compression from the encoder's re-samplers' strides (the classes' own formula
    counts every level as 2x2x2)."""
    spatial = sum(TYPE_STRIDE[t][1] == 2 for t, s in zip(down_types, scaling) if s)
    temporal = sum(TYPE_STRIDE[t][0] == 2 for t, s in zip(down_types, scaling) if s)
    return patch * 2 ** spatial, patch_t * 2 ** temporal


def config_from_original(shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
    """See the module doc: what the shapes decide, the rest from `base`."""
    latent = latent_channels(shapes)

    # encoder
    enc, enc_mid = _levels(_blocks(shapes, "encoder.down_blocks."), "encoder")
    if any("res" not in lv for lv in enc):
        raise CkptError(f"{TITLE}: an encoder level does not start with a res_x block")
    kinds = {lv[s][0] for lv in enc for s in lv}
    is_095 = "s2d" in kinds
    if is_095 and "xy" in kinds:
        raise CkptError(f"{TITLE}: the encoder mixes space-to-depth blocks and width-changing resnets (no "
                        f"AutoencoderKLLTXVideo down block has both)")
    flat = [b for lv in enc for b in (lv.get("res"), lv.get("down"), lv.get("xy")) if b] + [enc_mid]
    widths = [shapes["encoder.conv_in.conv.weight"][0]]
    down_types, layers, scaling = [], [], []
    for i, lv in enumerate(enc):
        layers.append(_res_count(shapes, lv["res"][1]))
        scaling.append("down" in lv)
        last = lv.get("xy") or lv.get("down") or lv["res"]
        out = width_in(shapes, *flat[flat.index(last) + 1])  # what the next block takes
        kind = lv["down"][0] if "down" in lv else None
        if kind == "s2d":
            rows = shapes[lv["down"][1] + "conv.conv.weight"][0]
            if out % rows or out // rows not in STRIDE_TYPE:
                raise CkptError(f"{TITLE}: encoder level {i}'s space-to-depth block makes {rows} channels for "
                                f"{out}: not a stride of 2, 4 or 8")
            down_types.append(STRIDE_TYPE[out // rows])
        else:
            down_types.append("conv")
        if is_095:
            widths.append(out)
        elif i + 1 < len(enc):
            widths.append(out)
        elif out != widths[-1]:
            raise CkptError(f"{TITLE}: the encoder's last level changes the width ({widths[-1]} -> {out}), which an "
                            f"{BLOCK} encoder cannot")
    layers.append(_res_count(shapes, enc_mid[1]))

    # decoder
    dec, dec_mid = _levels(_blocks(shapes, "decoder.up_blocks."), "decoder")
    mid_width = res_width(shapes, dec_mid[1])
    dec_widths, dec_layers, dec_scaling, factors = [], [_res_count(shapes, dec_mid[1])], [], []
    noise = [dec_mid[1] + "res_blocks.0.per_channel_scale1" in shapes]
    for i, lv in enumerate(dec):
        if "up" in lv and lv["up"][0] != "s2d":
            raise CkptError(f"{TITLE}: decoder level {i} up-samples with a plain conv (AutoencoderKLLTXVideo's "
                            f"up-samplers are depth-to-space)")
        width = res_width(shapes, lv["res"][1])
        factor = 1
        if "up" in lv:
            cols, rows = shapes[lv["up"][1] + "conv.conv.weight"][1], shapes[lv["up"][1] + "conv.conv.weight"][0]
            if (8 * cols) % rows:
                raise CkptError(f"{TITLE}: decoder level {i}'s depth-to-space block maps {cols} to {rows} channels: "
                                f"no channel reduction of a 2x2x2 stride")
            factor = 8 * cols // rows
        dec_widths.append(width * factor)
        dec_layers.append(_res_count(shapes, lv["res"][1]))
        dec_scaling.append("up" in lv)
        factors.append(factor)
        noise.append(lv["res"][1] + "res_blocks.0.per_channel_scale1" in shapes)
    if dec and dec_widths[0] != mid_width:
        raise CkptError(f"{TITLE}: the decoder's mid block is {mid_width} wide but its first level takes "
                        f"{dec_widths[0]} (width x up-sampling reduction): no AutoencoderKLLTXVideo decoder")

    patch, patch_t = pixel_patch(shapes, base)
    config = {
        "latent_channels": latent,
        "block_out_channels": widths,
        "down_block_types": [BLOCK_095 if is_095 else BLOCK] * len(enc),
        "layers_per_block": layers,
        "spatio_temporal_scaling": scaling,
        "downsample_type": down_types,
        "decoder_block_out_channels": list(reversed(dec_widths)),
        "decoder_layers_per_block": list(reversed(dec_layers)),
        "decoder_spatio_temporal_scaling": list(reversed(dec_scaling)),
        "decoder_inject_noise": list(reversed(noise)),
        "upsample_factor": list(reversed(factors)),
        "timestep_conditioning": "decoder.last_time_embedder.timestep_embedder.linear_1.weight" in shapes,
        "patch_size": patch,
    }
    # no weights: taken from the config when it fits these levels (released configs fit their own)
    residual = base.get("upsample_residual")
    if isinstance(residual, (list, tuple)) and len(residual) == len(dec):
        config["upsample_residual"] = list(residual)
    if is_095:  # the class's own formula counts every level as 2x2x2: 0.9.5's ratios are in its config
        config["spatial_compression_ratio"], config["temporal_compression_ratio"] = \
            stride_ratios(down_types, scaling, patch, patch_t)
    else:
        config["spatial_compression_ratio"] = base.get("spatial_compression_ratio")
        config["temporal_compression_ratio"] = base.get("temporal_compression_ratio")
        if config["spatial_compression_ratio"] not in (None, patch * 2 ** sum(scaling)) or \
                config["temporal_compression_ratio"] not in (None, patch_t * 2 ** sum(scaling)):
            config["spatial_compression_ratio"] = config["temporal_compression_ratio"] = None
    return config


def placeholders(shapes: dict[str, tuple[int, ...]], title: str = TITLE) -> dict:
    """Names and shapes only: pixel channels that fit conv_in (3, else 1), no residual up-sampling."""
    dec = [b for b in _blocks(shapes, "decoder.up_blocks.", title)[1:] if b[0] == "res"]
    cols = shapes.get("encoder.conv_in.conv.weight", (0, 3))[1]
    pixels = 3 if cols % 3 == 0 and math.isqrt(cols // 3) ** 2 == cols // 3 else 1
    return {"in_channels": pixels, "out_channels": pixels, "patch_size_t": 1, "upsample_residual": [False] * len(dec)}


class LtxvVae:
    kind = "ltxv_vae"
    shape_keys = ("latent_channels", "block_out_channels", "down_block_types", "layers_per_block",
                  "spatio_temporal_scaling", "decoder_block_out_channels", "decoder_layers_per_block",
                  "decoder_spatio_temporal_scaling", "decoder_inject_noise", "upsample_factor",
                  "timestep_conditioning", "patch_size")
    undetermined = {
        "in_channels": "encoder.conv_in sees in_channels x patch_size^2 channels: the split is not in the weights",
        "out_channels": "decoder.conv_out makes out_channels x patch_size^2 channels: the split is not in the weights",
        "patch_size_t": "the temporal patch changes no weight",
        "upsample_residual": "an up-sampler's depth-to-space residual has no weights",
        "resnet_norm_eps": "the norm epsilon is not in the weights",
        "scaling_factor": "the latent scale LTXPipeline divides by is not in the weights",
        "encoder_causal": "causal padding changes no weight",
        "decoder_causal": "causal padding changes no weight",
    }

    def placeholders(self, shapes: dict[str, tuple[int, ...]]) -> dict:
        return placeholders(shapes)

    def config_from_original(self, shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
        return config_from_original(shapes, base)

    def to_original(self, shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, Expr]:
        enc, dec = encoder_plan(config), decoder_plan(config)
        return {original_name(name, enc, dec): src(name) for name in shapes}

    def to_diffusers(self, state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
        """diffusers' converter where it names every tensor as our map does (the released structures);
        our inverse map otherwise. Tensors with no diffusers counterpart (the extra per-channel
        statistics) are left out, as the converter leaves them."""
        from diffusers.loaders.single_file_utils import convert_ltx_vae_checkpoint_to_diffusers

        from ckptkit.convert.models import diffusers_shapes

        enc, dec = encoder_plan(config), decoder_plan(config)
        return converted_or_ours(state_dict, {original_name(n, enc, dec): n
                                              for n in diffusers_shapes("AutoencoderKLLTXVideo", config)},
                                 convert_ltx_vae_checkpoint_to_diffusers)


def converted_or_ours(state_dict: dict[str, torch.Tensor], inverse: dict[str, str], converter) -> dict:
    """diffusers' single-file `converter` (it reads `vae.`-prefixed names) where it names every tensor as
    `inverse` (original -> diffusers name) does, else `inverse` applied; tensors with no diffusers name
    are left out, as the converters leave them."""
    ours = {inverse[n]: t for n, t in state_dict.items() if n in inverse}
    theirs = converter({"vae." + n: t for n, t in state_dict.items()})
    if theirs.keys() == ours.keys() and all(theirs[n] is ours[n] for n in ours):
        return theirs
    return ours


LAYOUT = register(LtxvVae())
