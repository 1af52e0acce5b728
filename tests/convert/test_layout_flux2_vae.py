"""The FLUX.2 VAE layout (layouts/flux2_vae.py): BFL original names <-> AutoencoderKLFlux2."""

from __future__ import annotations

import torch

from ckptkit.convert.configs import resolve
from ckptkit.convert.layouts import get_layout
from ckptkit.convert.models import instantiate
from ckptkit.engine import expr
from ckptkit.families import get_family
from ckptkit.families.flux2 import FLUX2_VAE_CONFIG
from ckptkit.fixtures.configs import TINY_FLUX2_VAE
from ckptkit.fixtures.factory import diffusers_state, original_state
from ckptkit.verify.onestep import vae_latent

LAYOUT = get_layout("flux2_vae")

# DIFFUSERS_VAE_TO_FLUX2_MAPPING of diffusers' scripts/convert_flux2_to_diffusers.py
# (huggingface/diffusers@207bae7a5e772ce97e6a446cdf16fba5b9acca24): the names outside the LDM blocks.
SCRIPT_DIRECT = {
    "encoder.conv_in.weight": "encoder.conv_in.weight", "encoder.conv_in.bias": "encoder.conv_in.bias",
    "encoder.conv_out.weight": "encoder.conv_out.weight", "encoder.conv_out.bias": "encoder.conv_out.bias",
    "encoder.conv_norm_out.weight": "encoder.norm_out.weight", "encoder.conv_norm_out.bias": "encoder.norm_out.bias",
    "decoder.conv_in.weight": "decoder.conv_in.weight", "decoder.conv_in.bias": "decoder.conv_in.bias",
    "decoder.conv_out.weight": "decoder.conv_out.weight", "decoder.conv_out.bias": "decoder.conv_out.bias",
    "decoder.conv_norm_out.weight": "decoder.norm_out.weight", "decoder.conv_norm_out.bias": "decoder.norm_out.bias",
    "quant_conv.weight": "encoder.quant_conv.weight", "quant_conv.bias": "encoder.quant_conv.bias",
    "post_quant_conv.weight": "decoder.post_quant_conv.weight", "post_quant_conv.bias": "decoder.post_quant_conv.bias",
    "bn.running_mean": "bn.running_mean", "bn.running_var": "bn.running_var",
}


def _script_block_name(diffusers: str, levels: int) -> str:
    """The script's block renames (update_vae_resnet/attentions_ldm_to_diffusers), inverted by hand."""
    parts = diffusers.split(".")
    side = parts[0]
    if parts[1] == "down_blocks":
        i, kind = parts[2], parts[3]
        rest = ".".join(parts[5:])
        return (f"{side}.down.{i}.block.{parts[4]}.{rest.replace('conv_shortcut', 'nin_shortcut')}" if kind == "resnets"
                else f"{side}.down.{i}.downsample.{rest}")
    if parts[1] == "up_blocks":
        i, kind = levels - 1 - int(parts[2]), parts[3]
        rest = ".".join(parts[5:])
        return (f"{side}.up.{i}.block.{parts[4]}.{rest.replace('conv_shortcut', 'nin_shortcut')}" if kind == "resnets"
                else f"{side}.up.{i}.upsample.{rest}")
    assert parts[1] == "mid_block"
    if parts[2] == "resnets":
        return f"{side}.mid.block_{int(parts[3]) + 1}.{'.'.join(parts[4:]).replace('conv_shortcut', 'nin_shortcut')}"
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[".".join(parts[4:-1])]
    return f"{side}.mid.attn_1.{attn}.{parts[-1]}"


def _shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


def test_tiny_map_is_the_scripts_and_round_trips():
    state = diffusers_state("flux2_dev", "vae")
    mapping = LAYOUT.to_original(_shapes(state), TINY_FLUX2_VAE)
    levels = len(TINY_FLUX2_VAE["up_block_types"])
    for orig, e in mapping.items():
        (name,) = e.sources()
        if name == "bn.num_batches_tracked":  # torch's buffer; the script leaves it out
            assert orig == name
            continue
        assert orig == SCRIPT_DIRECT.get(name) or orig == _script_block_name(name, levels), (name, orig)
    original = expr.apply(mapping, state.__getitem__)
    assert original["decoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 convs in BFL's file
    back = LAYOUT.to_diffusers(original, TINY_FLUX2_VAE)
    assert set(back) == set(state)
    for k in state:
        torch.testing.assert_close(back[k].reshape(state[k].shape), state[k], rtol=0, atol=0)
    model = instantiate("AutoencoderKLFlux2", TINY_FLUX2_VAE)
    model.load_state_dict(back, strict=True)


def test_tiny_config_read_back():
    shapes = _shapes(original_state("flux2_dev", "vae"))
    cfg = LAYOUT.config_from_original(shapes, {**FLUX2_VAE_CONFIG})
    for key in LAYOUT.shape_keys:
        want = TINY_FLUX2_VAE.get(key, FLUX2_VAE_CONFIG.get(key))
        assert cfg[key] == (list(want) if isinstance(want, tuple) else want), key
    comp = get_family("flux2").component("vae")
    resolved = resolve(comp, shapes, "original", strict=False)
    assert resolved.values["patch_size"] == [2, 2] and resolved.values["latent_channels"] == 4


def test_released_size_on_meta():
    with torch.device("meta"):
        model = instantiate("AutoencoderKLFlux2", FLUX2_VAE_CONFIG)
    shapes = _shapes(model.state_dict())
    mapping = LAYOUT.to_original(shapes, FLUX2_VAE_CONFIG)
    orig_shapes = expr.shapes(mapping, shapes)
    names = set(mapping)
    assert {"bn.running_mean", "bn.running_var", "encoder.quant_conv.weight", "decoder.post_quant_conv.weight",
            "encoder.down.3.block.1.conv2.weight", "decoder.up.0.block.2.conv2.weight",
            "decoder.mid.attn_1.proj_out.weight"} <= names
    assert not any(n.startswith(("quant_conv.", "post_quant_conv.")) for n in names)
    assert orig_shapes["bn.running_mean"] == (128,)  # 32 latent channels x 2 x 2
    assert orig_shapes["encoder.quant_conv.weight"] == (64, 64, 1, 1)
    assert orig_shapes["decoder.conv_in.weight"] == (512, 32, 3, 3)
    assert orig_shapes["encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)
    cfg = LAYOUT.config_from_original(orig_shapes, {})
    for key in LAYOUT.shape_keys:
        assert cfg[key] == FLUX2_VAE_CONFIG[key], key
    comp = get_family("flux2").component("vae")
    resolved = resolve(comp, orig_shapes, "original")
    assert resolved.released_as == "config" and resolved.values["batch_norm_eps"] == 1e-4


def test_vae_latent_is_the_pipelines_denormalisation():
    import diffusers

    torch.manual_seed(0)
    model = instantiate("AutoencoderKLFlux2", TINY_FLUX2_VAE)
    model.bn.running_mean.normal_()
    model.bn.running_var.uniform_(0.5, 2.0)
    z = torch.randn(1, 4, 6, 8)
    pipe = diffusers.Flux2Pipeline
    mean = model.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(model.bn.running_var.view(1, -1, 1, 1) + model.config.batch_norm_eps)
    want = pipe._unpatchify_latents(pipe._patchify_latents(z) * std + mean)
    torch.testing.assert_close(vae_latent(model, z), want)
    plain = instantiate("AutoencoderKL", {k: v for k, v in TINY_FLUX2_VAE.items()
                                           if k not in ("batch_norm_eps", "patch_size")})
    assert vae_latent(plain, z) is z
