"""The FLUX.2 VAE (Black Forest Labs' `ae.safetensors` / `flux2-vae.safetensors`) <-> diffusers
`AutoencoderKLFlux2`.

The encoder and decoder are FLUX.1's LDM ones (ldm_vae: the same names, the same 1x1-conv attention
reshape), at 32 latent channels. What differs, from `DIFFUSERS_VAE_TO_FLUX2_MAPPING` in diffusers'
scripts/convert_flux2_to_diffusers.py (huggingface/diffusers@207bae7a5e772ce97e6a446cdf16fba5b9acca24):
  * the quant convs live inside the encoder / decoder: `encoder.quant_conv.*` (diffusers `quant_conv.*`),
    `decoder.post_quant_conv.*` (diffusers `post_quant_conv.*`);
  * `bn.running_mean`, `bn.running_var`: the batch-norm statistics (no affine weights) of the 2x2-patchified
    latent (32 x 4 = 128 channels) that the pipeline normalises latents with. Their length is
    latent_channels x prod(patch_size), which gives the (square) patch size. `bn.num_batches_tracked`
    (torch's BatchNorm2d buffer, in diffusers' state dict) keeps its name; the script ignores it.

Not in the weights: `batch_norm_eps` (the pipeline's sqrt(var + eps)), `batch_norm_momentum` (training
only: the released default is kept). diffusers 0.42.1 has no single-file converter for this VAE:
`to_diffusers` undoes the two moves and calls diffusers' LDM VAE converter for the rest.
"""

from __future__ import annotations

import math

import torch

from ckptkit.convert.layouts import ldm_vae, register

# diffusers name prefix -> original name prefix, outside the LDM encoder / decoder tables
MOVED = {"quant_conv.": "encoder.quant_conv.", "post_quant_conv.": "decoder.post_quant_conv."}
BATCH_NORM = ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked")


def original_name(name: str, config: dict) -> str:
    if name in BATCH_NORM:
        return name
    for diffusers_prefix, original_prefix in MOVED.items():
        if name.startswith(diffusers_prefix):
            return original_prefix + name[len(diffusers_prefix):]
    return ldm_vae.original_name(name, config)


def _to_ldm_names(names: dict) -> dict:
    """FLUX.2 original names -> FLUX.1 / LDM names (the quant convs moved out of encoder / decoder)."""
    out = {}
    for name, value in names.items():
        for diffusers_prefix, original_prefix in MOVED.items():
            if name.startswith(original_prefix):
                name = diffusers_prefix + name[len(original_prefix):]
                break
        out[name] = value
    return out


def config_from_original(shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
    """See `Flux2Vae.config_from_original`."""
    config = ldm_vae.config_from_original(_to_ldm_names(shapes), base)
    latent, stats = config["latent_channels"], shapes["bn.running_mean"][0]
    side = math.isqrt(stats // latent)
    if stats % latent or side * side * latent != stats:
        raise ValueError(f"bn.running_mean has {stats} channels, not latent_channels {latent} x a square patch")
    levels = len(config["block_out_channels"])
    decoder = [shapes[f"decoder.up.{level}.block.0.conv2.weight"][0] for level in range(levels)]
    config["patch_size"] = [side, side]
    config["decoder_block_out_channels"] = None if decoder == config["block_out_channels"] else decoder
    return config


class Flux2Vae(ldm_vae.LdmVae):
    kind = "flux2_vae"
    shape_keys = ldm_vae.LdmVae.shape_keys + ("patch_size", "decoder_block_out_channels")
    undetermined = {"batch_norm_eps": "the batch norm's epsilon is not in the weights"}

    def placeholders(self, shapes: dict[str, tuple[int, ...]]) -> dict:
        """Names and shapes only: any epsilon gives the same ones."""
        return {"batch_norm_eps": 1e-4}

    def config_from_original(self, shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
        """The AutoencoderKLFlux2 config from original (prefix-stripped) shapes: ldm_vae's, plus the
        patch size (from the batch norm's length) and the decoder's widths where they differ."""
        return config_from_original(shapes, base)

    def original_name(self, name: str, config: dict) -> str:
        return original_name(name, config)

    def to_diffusers(self, state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        ldm = _to_ldm_names(state_dict)
        out = convert_ldm_vae_checkpoint({k: v for k, v in ldm.items() if k not in BATCH_NORM}, config)
        out.update({k: v for k, v in ldm.items() if k in BATCH_NORM})
        return out


LAYOUT = register(Flux2Vae())
