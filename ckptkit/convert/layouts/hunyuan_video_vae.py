"""The HunyuanVideo causal 3-D VAE (Tencent HunyuanVideo `hyvideo/vae/autoencoder_kl_causal_3d.py`
AutoencoderKLCausal3D: `ckpts/hunyuan-video-t2v-720p/vae/pytorch_model.pt`; ComfyUI's
`vae/hunyuan_video_vae_bf16.safetensors`) <-> diffusers `AutoencoderKLHunyuanVideo`.

The names are the same on both sides: diffusers' scripts/convert_hunyuan_video_to_diffusers.py
(huggingface/diffusers@58eb52c0803ea9af3abec60841c2a093bdf1f951) `convert_vae` has an empty
VAE_KEYS_RENAME_DICT and VAE_SPECIAL_KEYS_REMAP and loads the original state dict with strict=True;
run here: AutoencoderKLCausal3D (Tencent/HunyuanVideo@fa14b001c18f37191c938a9ef6baad3b9b472759) and
AutoencoderKLHunyuanVideo on meta at the released config, 248 = 248 names, the same shapes. Tencent's
loader (hyvideo/vae/__init__.py load_vae) unwraps a `state_dict` key and strips a `vae.` prefix when
there is one; ComfyUI's repackaged file holds the bare names (kijai's ComfyUI-HunyuanVideoWrapper
HyVideoVAELoader loads it into AutoencoderKLCausal3D with load_state_dict as it is). Every conv is a
causal Conv3d wrapper: `*.conv.weight` 5-D (the 1x1x1 quant_conv / post_quant_conv are plain Conv3d).

What the shapes tell: input / output / latent channels (encoder.conv_in, decoder.conv_out,
decoder.conv_in), the width of every level, resnets per level (the decoder has one more), the mid
block's attention. What they do not: the latent scale the pipeline divides by (`scaling_factor`),
the GroupNorm group count, and the spatial compression (a level's downsampler has a 3x3x3 kernel
whatever its stride: with 4 levels a 2x, 4x or 8x spatial ratio places downsamplers at the same
levels, because the temporal 4x ones fill the rest). The temporal ratio is 4: HunyuanVideoDecoder3D
raises for any other.
"""

from __future__ import annotations

import math

from ckptkit.convert.layouts import num_blocks, register
from ckptkit.convert.layouts.tables import TableLayout, size
from ckptkit.errors import CkptError

TITLE = "HunyuanVideo VAE"
DOWN_BLOCK = "HunyuanVideoDownBlock3D"
UP_BLOCK = "HunyuanVideoUpBlock3D"
TEMPORAL = 4  # the only temporal_compression_ratio HunyuanVideoDecoder3D builds


def resampled_levels(levels: int, spatial: int, temporal: int = TEMPORAL) -> list[int]:
    """The levels with a down- (encoder) or up-sampler (decoder, counted from its first up block), as
    HunyuanVideoEncoder3D / HunyuanVideoDecoder3D place them: spatial at the first log2(spatial)
    levels, temporal at the log2(temporal) levels before the last."""
    n_spatial, n_time = int(math.log2(spatial)), int(math.log2(temporal))
    return [i for i in range(levels)
            if i < n_spatial or (levels - 1 - n_time <= i and i != levels - 1)]


def _level_counts(shapes: dict, prefix: str, levels: int) -> list[int]:
    return [num_blocks(shapes, f"{prefix}{i}.resnets.") for i in range(levels)]


def config_from_original(shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
    """See `HunyuanVideoVae`."""
    size(shapes, "encoder.conv_in.conv.weight", 0, TITLE)  # present, or one line
    conv_in = shapes["encoder.conv_in.conv.weight"]
    if len(conv_in) != 5:
        raise CkptError(f"{TITLE}: encoder.conv_in.conv.weight is {len(conv_in)}-D, not a 5-D causal Conv3d")
    levels = num_blocks(shapes, "encoder.down_blocks.")
    if not levels or num_blocks(shapes, "decoder.up_blocks.") != levels:
        raise CkptError(f"{TITLE}: {levels} encoder levels but {num_blocks(shapes, 'decoder.up_blocks.')} decoder levels")
    per_level = _level_counts(shapes, "encoder.down_blocks.", levels)
    up_per_level = _level_counts(shapes, "decoder.up_blocks.", levels)
    if len(set(per_level)) != 1 or set(up_per_level) != {per_level[0] + 1}:
        raise CkptError(f"{TITLE}: resnets per level {per_level} (encoder) / {up_per_level} (decoder) are not "
                        f"layers_per_block / layers_per_block + 1 everywhere")
    widths = [size(shapes, f"encoder.down_blocks.{i}.resnets.{per_level[i] - 1}.conv2.conv.weight", 0, TITLE)
              for i in range(levels)]
    latent = size(shapes, "decoder.conv_in.conv.weight", 1, TITLE)
    if size(shapes, "encoder.conv_out.conv.weight", 0, TITLE) != 2 * latent:
        raise CkptError(f"{TITLE}: encoder.conv_out has {shapes['encoder.conv_out.conv.weight'][0]} rows, not "
                        f"2 x the decoder's {latent} latent channels (mean and log-variance)")
    spatial = base.get("spatial_compression_ratio")
    if not isinstance(spatial, int) or isinstance(spatial, bool) or spatial < 1 or spatial & (spatial - 1):
        raise CkptError(f"{TITLE}: spatial_compression_ratio must be a power of 2, not {spatial!r}")
    temporal = base.get("temporal_compression_ratio", TEMPORAL)
    if temporal != TEMPORAL:
        raise CkptError(f"{TITLE}: AutoencoderKLHunyuanVideo's decoder builds temporal_compression_ratio "
                        f"{TEMPORAL} only, not {temporal!r}")
    want = resampled_levels(levels, spatial)
    down = [i for i in range(levels) if f"encoder.down_blocks.{i}.downsamplers.0.conv.conv.weight" in shapes]
    up = [i for i in range(levels) if f"decoder.up_blocks.{i}.upsamplers.0.conv.conv.weight" in shapes]
    if down != want or up != want:
        raise CkptError(f"{TITLE}: resamplers at encoder levels {down} / decoder levels {up}, not {want} as "
                        f"spatial_compression_ratio {spatial} places them at {levels} levels")
    return {
        "in_channels": conv_in[1],
        "out_channels": size(shapes, "decoder.conv_out.conv.weight", 0, TITLE),
        "latent_channels": latent,
        "down_block_types": [DOWN_BLOCK] * levels,
        "up_block_types": [UP_BLOCK] * levels,
        "block_out_channels": widths,
        "layers_per_block": per_level[0],
        "mid_block_add_attention": "encoder.mid_block.attentions.0.to_q.weight" in shapes,
        "spatial_compression_ratio": spatial,
        "temporal_compression_ratio": TEMPORAL,
        **{k: base[k] for k in ("scaling_factor", "norm_num_groups") if k in base},
    }


def placeholders(shapes: dict[str, tuple[int, ...]]) -> dict:
    """Names and shapes only: one GroupNorm group fits any width, any scale gives the same tensors,
    and a spatial ratio that places the resamplers where the weights have them (the released 8 first)."""
    levels = num_blocks(shapes, "encoder.down_blocks.")
    down = [i for i in range(levels) if f"encoder.down_blocks.{i}.downsamplers.0.conv.conv.weight" in shapes]
    spatial = next((s for s in [8] + [2 ** k for k in range(levels + 1)] if resampled_levels(levels, s) == down), 8)
    return {"scaling_factor": 1.0, "norm_num_groups": 1, "spatial_compression_ratio": spatial}


LAYOUT = register(TableLayout(
    kind="hunyuan_video_vae", title=TITLE, config_rule=config_from_original, passthrough=True,
    placeholder_rule=placeholders,
    shape_keys=("in_channels", "out_channels", "latent_channels", "down_block_types", "up_block_types",
                "block_out_channels", "layers_per_block", "mid_block_add_attention"),
    undetermined={
        "scaling_factor": "the latent scale HunyuanVideoPipeline divides by is not in the weights",
        "norm_num_groups": "the GroupNorm group count is not in the weights",
        "spatial_compression_ratio": "a downsampler's 3x3x3 kernel is the same at any stride: the spatial "
                                     "ratio is not in the weights",
    },
))
