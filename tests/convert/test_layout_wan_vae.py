"""The Wan 2.1 VAE layout (Qwen-Image's VAE) against diffusers' convert_wan_vae_to_diffusers:
bit-exact at tiny size, the released names and shapes on meta, the config read back from the shapes."""

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLQwenImage
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

from ckptkit.convert.layouts import get_layout
from ckptkit.engine import expr
from ckptkit.families import get_family
from ckptkit.families.components import SIGNATURES
from ckptkit.families.detect import _lookup
from ckptkit.fixtures import configs as tiny
from ckptkit.fixtures import factory

LAYOUT = get_layout("wan_vae")
RELEASED = get_family("qwen_image").component("vae").config


def _shapes(state):
    return {n: tuple(t.shape) for n, t in state.items()}


def test_tiny_original_state_through_diffusers_converter_is_bit_exact():
    model_state = factory.diffusers_state("qwen_image", "vae")
    original = factory.original_state("qwen_image", "vae")
    assert "encoder.conv1.weight" in original and original["encoder.conv1.weight"].ndim == 5
    assert "decoder.upsamples.4.shortcut.weight" in original and "encoder.downsamples.5.time_conv.weight" in original
    converted = convert_wan_vae_to_diffusers(dict(original))
    assert converted.keys() == model_state.keys()
    assert all(torch.equal(converted[n], model_state[n]) for n in model_state)
    # our own direction back (to_diffusers uses the converter for this structure)
    back = LAYOUT.to_diffusers(dict(original), tiny.TINY_QWEN_IMAGE_VAE)
    assert back.keys() == model_state.keys() and all(torch.equal(back[n], model_state[n]) for n in model_state)
    model = AutoencoderKLQwenImage(**tiny.TINY_QWEN_IMAGE_VAE)
    model.load_state_dict(back, strict=True)


def test_released_size_names_and_shapes_on_meta():
    with init_empty_weights():
        model = AutoencoderKLQwenImage(**RELEASED)
    meta = {n: t for n, t in model.state_dict().items()}
    meta_shapes = _shapes(meta)
    ours = expr.shapes(LAYOUT.to_original(meta_shapes, RELEASED), meta_shapes)
    assert len(ours) == len(meta_shapes)
    # what the converter consumes: every one of our names goes to the model's name of the same shape
    fake = {n: torch.empty(s, device="meta") for n, s in ours.items()}
    converted = _shapes(convert_wan_vae_to_diffusers(dict(fake)))
    assert converted == meta_shapes
    # real Wan 2.1 names and shapes (qwen_image_vae.safetensors)
    assert ours["encoder.conv1.weight"] == (96, 3, 3, 3, 3)
    assert ours["conv1.weight"] == (32, 32, 1, 1, 1) and ours["conv2.weight"] == (16, 16, 1, 1, 1)
    assert ours["decoder.conv1.weight"] == (384, 16, 3, 3, 3)
    assert ours["encoder.middle.1.to_qkv.weight"] == (1152, 384, 1, 1)
    assert ours["decoder.upsamples.4.shortcut.weight"] == (384, 192, 1, 1, 1)
    assert ours["decoder.upsamples.3.time_conv.weight"] == (768, 384, 3, 1, 1)
    assert ours["decoder.head.2.weight"] == (3, 96, 3, 3, 3)
    assert ours["encoder.downsamples.0.residual.0.gamma"] == (96, 1, 1, 1)
    assert "encoder.downsamples.2.time_conv.weight" not in ours and "encoder.downsamples.5.time_conv.weight" in ours
    # the config read back from the original shapes
    got = LAYOUT.config_from_original(ours, {})
    assert {k: got[k] for k in LAYOUT.shape_keys} == {k: RELEASED[k] for k in LAYOUT.shape_keys}
    # and a standalone file of these names is the Qwen-Image / Wan 2.1 VAE (the same network); the diffusers
    # form too
    for names, layout in ((ours, "wan_vae"), (meta_shapes, "diffusers:wan_vae")):
        sig = next(s for s in SIGNATURES if all(c.holds(_lookup(names, "")) for c in s.when))
        assert (sig.name, sig.layout, sig.used_by) == ("vae", layout, ("qwen_image", "wan"))


@pytest.mark.parametrize("config", [
    dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, attn_scales=[0.5],
         temperal_downsample=[True, False]),
    dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4, 4], num_res_blocks=3, attn_scales=[],
         temperal_downsample=[False, True, True, False]),
], ids=["3_levels_attn", "5_levels"])
def test_other_structures_round_trip(config):
    """Any depth and width: ours both ways (diffusers' converter hard-codes the released decoder)."""
    model = AutoencoderKLQwenImage(**config)
    state = model.state_dict()
    mapping = LAYOUT.to_original(_shapes(state), config)
    original = expr.apply(mapping, state.__getitem__)
    # the input channels under both classes' names (AutoencoderKLQwenImage's, AutoencoderKLWan's)
    assert LAYOUT.config_from_original(_shapes(original), {}) == {**config, "input_channels": 3, "in_channels": 3}
    back = LAYOUT.to_diffusers(original, config)
    assert back.keys() == state.keys() and all(torch.equal(back[n], state[n]) for n in state)


def test_tiny_config_read_back_and_placeholders():
    shapes = _shapes(factory.original_state("qwen_image", "vae"))
    got = LAYOUT.config_from_original(shapes, {})
    assert {k: got[k] for k in LAYOUT.shape_keys} == {k: tiny.TINY_QWEN_IMAGE_VAE[k] for k in LAYOUT.shape_keys}
    assert set(LAYOUT.undetermined) == {"latents_mean", "latents_std"}
    assert {k: len(v) for k, v in LAYOUT.placeholders(shapes).items()} == {"latents_mean": 16, "latents_std": 16}
    # the tiny transformer's latent channels are the VAE's
    assert tiny.TINY_QWEN_IMAGE["out_channels"] == tiny.TINY_QWEN_IMAGE_VAE["z_dim"]


def test_onestep_decodes_an_image_latent_as_one_frame():
    """verify.onestep.decode_frames: (B, C, H, W) -> one frame, de-normalised as QwenImagePipeline does."""
    from ckptkit.verify.onestep import decode_frames, vae_factor

    model = factory.component_model("qwen_image", "vae")
    z = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = decode_frames(model, z)
        mean = torch.tensor(model.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(model.config.latents_std).view(1, -1, 1, 1, 1)
        want = model.decode(z[:, :, None] * std + mean).sample[:, :, 0]
    assert got.shape == (1, 3, 32, 32) and torch.equal(got, want) and got.std() > 0
    assert vae_factor(dict(model.config)) == 8
