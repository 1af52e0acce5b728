"""The LTX-Video VAE layout (ltxv_vae) against diffusers' convert_ltx_vae_checkpoint_to_diffusers: tiny
models of the three released structures bit-exact through it and back, other structures through our own
map, the released sizes on meta (names, shapes, config read back), one-line refusals, detection, the
lone file through the CLI (the per-channel statistics diffusers drops reported), and the 1-step check's
decode against LTXPipeline's."""

import json
import math
from dataclasses import replace

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLLTXVideo
from diffusers.loaders.single_file_utils import convert_ltx_vae_checkpoint_to_diffusers

from ckptkit.convert.configs import resolve
from ckptkit.convert.layouts import get_layout
from ckptkit.convert.models import random_model
from ckptkit.engine import expr
from ckptkit.errors import CkptError
from ckptkit.families import get_family
from ckptkit.families.components import SIGNATURES
from ckptkit.families.detect import _lookup
from ckptkit.families.ltxv import LTXV_VAE_090_CONFIG, LTXV_VAE_091_CONFIG, LTXV_VAE_095_CONFIG
from ckptkit.fixtures import configs as tiny
from ckptkit.fixtures import factory

LAYOUT = get_layout("ltxv_vae")
COMP = get_family("ltxv").component("vae")

# tiny versions of the released structures (the converter hard-codes their flat indices): the same levels,
# resamplers and width changes at 8..64 channels; 0.9.5's is picked by encoder.conv_out's 2048 inputs, so its
# tiny twin ends at 2048 with an empty encoder mid block (1.6 M parameters)
_TINY = dict(in_channels=3, out_channels=3, latent_channels=8, patch_size=2, patch_size_t=1, resnet_norm_eps=1e-6,
             scaling_factor=1.0, encoder_causal=True, decoder_causal=False)
TINY_090 = dict(LTXV_VAE_090_CONFIG, **_TINY, block_out_channels=[8, 16, 32, 32], decoder_block_out_channels=[8, 16, 32, 32],
                layers_per_block=[1, 2, 1, 1, 1], decoder_layers_per_block=[1, 1, 2, 1, 1])
TINY_091 = dict(LTXV_VAE_091_CONFIG, **_TINY, block_out_channels=[8, 16, 32, 32], decoder_block_out_channels=[8, 16, 32],
                layers_per_block=[1, 1, 1, 1, 1], decoder_layers_per_block=[1, 2, 1, 1])
TINY_095 = dict(LTXV_VAE_095_CONFIG, **_TINY, block_out_channels=[8, 16, 32, 64, 2048], layers_per_block=[1, 1, 1, 1, 0],
                decoder_block_out_channels=[8, 16, 32], decoder_layers_per_block=[1, 1, 1, 1], spatial_compression_ratio=16)
# what the 1-D per-channel statistics block of an LTX file holds beyond the two diffusers keeps
EXTRA_STATS = ("per_channel_statistics.channel", "per_channel_statistics.mean-of-stds",
               "per_channel_statistics.mean-of-stds_over_std-of-means")


def _shapes(state):
    return {n: tuple(t.shape) for n, t in state.items()}


def _plain(config):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def _tiny(config, seed=0):
    state = random_model("AutoencoderKLLTXVideo", config, seed).state_dict()
    original = expr.apply(LAYOUT.to_original(_shapes(state), config), state.__getitem__)
    return state, original


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in b)


@pytest.mark.parametrize("config", [TINY_090, TINY_091, TINY_095], ids=["0.9.0", "0.9.1", "0.9.5"])
def test_tiny_released_structures_bit_exact_through_diffusers_converter_and_back(config):
    state, original = _tiny(config)
    assert len(original) == len(state)
    theirs = convert_ltx_vae_checkpoint_to_diffusers({"vae." + n: t for n, t in original.items()})
    assert _same(theirs, state)
    back = LAYOUT.to_diffusers(dict(original), config)
    assert _same(back, state)
    AutoencoderKLLTXVideo(**config).load_state_dict(back, strict=True)
    # the config read back from the original shapes is the model's where the shapes decide (an empty mid
    # block has no tensors: that structure cannot be read back, and says so)
    if config["layers_per_block"][-1] == 0:
        with pytest.raises(CkptError, match="the encoder's last block is not a res_x"):
            LAYOUT.config_from_original(_shapes(original), config)
    else:
        got = LAYOUT.config_from_original(_shapes(original), config)
        assert {k: got[k] for k in LAYOUT.shape_keys} == {k: _plain(config)[k] for k in LAYOUT.shape_keys}
    # the statistics and the 0-dim multiplier (0.9.1+) under their original names, byte for byte
    assert torch.equal(original["per_channel_statistics.std-of-means"], state["latents_std"])
    if config["timestep_conditioning"]:
        t = original["decoder.timestep_scale_multiplier"]
        assert t.shape == () and torch.equal(t, state["decoder.timestep_scale_multiplier"])
        assert "decoder.last_time_embedder.timestep_embedder.linear_1.weight" in original
        assert "decoder.last_scale_shift_table" in original


def test_tiny_original_names_are_the_released_flat_lists():
    _, o90 = _tiny(TINY_090)
    # 0.9.0 encoder: res, compress_all, res_x_y, res, compress_all, res_x_y, res, compress_all, res, res (mid)
    assert o90["encoder.down_blocks.1.conv.weight"].shape == (8, 8, 3, 3, 3)
    assert o90["encoder.down_blocks.2.conv_shortcut.weight"].shape == (16, 8, 1, 1, 1)
    assert o90["encoder.down_blocks.2.norm3.norm.weight"].shape == (8,)
    assert "encoder.down_blocks.9.res_blocks.0.conv1.conv.weight" in o90
    assert "decoder.up_blocks.9.res_blocks.0.conv1.conv.weight" in o90 and "decoder.up_blocks.7.conv1.conv.weight" in o90
    _, o91 = _tiny(TINY_091)
    assert "decoder.up_blocks.2.res_blocks.0.per_channel_scale1" in o91  # noise injection
    assert o91["decoder.up_blocks.1.conv.conv.weight"].shape == (128, 32, 3, 3, 3)  # depth-to-space, width halved
    assert "decoder.up_blocks.0.time_embedder.timestep_embedder.linear_1.weight" in o91
    _, o95 = _tiny(TINY_095)
    # space-to-depth downsamplers: 16 / (1x2x2), 32 / (2x1x1), 64 / 8, 2048 / 8 output channels
    assert [o95[f"encoder.down_blocks.{k}.conv.conv.weight"].shape[0] for k in (1, 3, 5, 7)] == [4, 16, 8, 256]
    assert o95["encoder.conv_out.conv.weight"].shape == (9, 2048, 3, 3, 3)


@pytest.mark.parametrize("config", [
    dict(TINY_095, block_out_channels=[8, 16, 32, 64, 64], layers_per_block=[1, 2, 1, 1, 1], spatial_compression_ratio=16),
    dict(TINY_090, block_out_channels=[8, 16, 16], down_block_types=["LTXVideoDownBlock3D"] * 3,
         layers_per_block=[2, 1, 1, 1], spatio_temporal_scaling=[True, False, True], downsample_type=["conv"] * 3,
         decoder_block_out_channels=[8, 16, 16, 16, 16], decoder_layers_per_block=[1, 1, 1, 1, 1, 2],
         decoder_spatio_temporal_scaling=[True, False, True, False, False], decoder_inject_noise=[True] * 6,
         upsample_residual=[False] * 5, upsample_factor=[1] * 5, timestep_conditioning=True),
], ids=["0.9.5-narrow", "3-5-levels"])
def test_other_structures_round_trip_through_our_map(config):
    """A 0.9.5 structure not 2048 wide (the converter then takes the 0.9.1 table) and other depths:
    ours both ways, bit-exact."""
    state, original = _tiny(config)
    theirs = convert_ltx_vae_checkpoint_to_diffusers({"vae." + n: t for n, t in original.items()})
    assert theirs.keys() != state.keys()  # what our own map is for
    assert _same(LAYOUT.to_diffusers(dict(original), config), state)
    got = LAYOUT.config_from_original(_shapes(original), config)
    assert {k: got[k] for k in LAYOUT.shape_keys} == {k: _plain(config)[k] for k in LAYOUT.shape_keys}


@pytest.mark.parametrize("config, tag, tensors, params", [
    (LTXV_VAE_090_CONFIG, "released[1]", 190, 419), (LTXV_VAE_091_CONFIG, "released[0]", 294, 935),
    (LTXV_VAE_095_CONFIG, "config", 226, 1247)], ids=["0.9.0", "0.9.1", "0.9.5"])
def test_released_sizes_on_meta(config, tag, tensors, params):
    with init_empty_weights(include_buffers=True):
        model = AutoencoderKLLTXVideo(**config)
    meta = _shapes(model.state_dict())
    ours = expr.shapes(LAYOUT.to_original(meta, config), meta)
    assert len(ours) == len(meta) == tensors  # notes r17 §5
    assert round(sum(math.prod(s) for s in ours.values()) / 1e6) == params
    # the converter takes every one of our names to the model's name of the same shape
    fake = {"vae." + n: torch.empty(s, device="meta") for n, s in ours.items()}
    assert _shapes(convert_ltx_vae_checkpoint_to_diffusers(fake)) == meta
    assert ours["encoder.conv_in.conv.weight"] == (128, 48, 3, 3, 3)  # 3 x patch 4^2
    assert ours["decoder.conv_in.conv.weight"][1] == 128 and ours["encoder.conv_out.conv.weight"][0] == 129
    assert ours["per_channel_statistics.mean-of-means"] == (128,)
    if config is LTXV_VAE_095_CONFIG:
        assert ours["encoder.conv_out.conv.weight"] == (129, 2048, 3, 3, 3)
        assert ours["encoder.down_blocks.1.conv.conv.weight"] == (64, 128, 3, 3, 3)  # 256 / (1 x 2 x 2)
    if config["timestep_conditioning"]:
        assert ours["decoder.timestep_scale_multiplier"] == ()
        assert ours["decoder.last_scale_shift_table"] == (2, 128)
    # the family's vae takes exactly this released config by these shapes
    got = resolve(COMP, ours, "original")
    assert got.released_as == tag and got.undetermined == []
    assert {k: got.values.get(k) for k in config} == _plain(config)
    # a standalone file in either naming is LTX-Video's vae
    for names, layout in ((ours, "ltxv_vae"), (meta, "diffusers:ltxv_vae")):
        sig = next(s for s in SIGNATURES if all(c.holds(_lookup(names, "")) for c in s.when))
        assert (sig.name, sig.layout, sig.used_by) == ("vae", layout, ("ltxv",))


def test_one_line_refusals():
    _, original = _tiny(TINY_091)
    shapes = _shapes(original)
    # sizes no release has: what the weights cannot tell is refused, naming it
    with pytest.raises(CkptError, match=r"^vae: \w+ is not determined by the weights") as err:
        resolve(COMP, shapes, "original")
    assert "\n" not in str(err.value)
    assert resolve(COMP, shapes, "original", given=TINY_091).values["upsample_residual"] == [True] * 3
    assert resolve(COMP, shapes, "original", strict=False).values["patch_size"] == 2  # names and shapes only
    with pytest.raises(CkptError, match="in_channels is not in the weights"):
        LAYOUT.config_from_original(shapes, {})
    bad = dict(shapes, **{"encoder.conv_out.conv.weight": (16, 32, 3, 3, 3)})  # per-channel log-variance: 2 x 8
    with pytest.raises(CkptError, match="not 8 latent channels \\+ 1"):
        LAYOUT.config_from_original(bad, TINY_091)
    gap = {n.replace("encoder.down_blocks.3.", "encoder.down_blocks.13."): s for n, s in shapes.items()}
    with pytest.raises(CkptError, match="encoder.down_blocks.3 holds no block"):
        LAYOUT.config_from_original(gap, TINY_091)
    with pytest.raises(CkptError, match="not 4 / 3 pixel channels in a square patch"):
        LAYOUT.config_from_original(shapes, dict(TINY_091, in_channels=4))


def test_tiny_fixture_is_the_091_structure_and_fits_the_transformer():
    cfg = tiny.TINY_LTXV_VAE
    assert cfg["latent_channels"] == tiny.TINY_LTXV["in_channels"] == 16
    shapes = _shapes(factory.original_state("ltxv", "vae"))
    got = LAYOUT.config_from_original(shapes, cfg)
    assert {k: got[k] for k in LAYOUT.shape_keys} == {k: cfg[k] for k in LAYOUT.shape_keys}
    assert shapes["decoder.timestep_scale_multiplier"] == ()
    from ckptkit.verify.onestep import vae_factor

    assert vae_factor(cfg) == 32 and vae_factor(LTXV_VAE_095_CONFIG) == 32 and vae_factor(LTXV_VAE_090_CONFIG) == 32


def test_lone_file_converted_both_ways_reports_the_dropped_statistics(tmp_path):
    """An LTX VAE in Lightricks' names with the statistics diffusers does not keep: inspect names it;
    -> diffusers (config given) reports them dropped and loads strict; -> back: the same bytes for
    every other tensor, the 0-dim multiplier included."""
    from safetensors.torch import load_file

    from ckptkit.formats.safetensors import save_safetensors
    from tests.cli import ok, run

    state, original = _tiny(TINY_091)
    extra = {EXTRA_STATS[0]: torch.arange(8.0), EXTRA_STATS[1]: torch.rand(8), EXTRA_STATS[2]: torch.rand(8)}
    path = tmp_path / "ltxv_vae.safetensors"
    save_safetensors(path, {**{n: t.contiguous() for n, t in original.items()}, **extra})
    data = json.loads(ok(run("inspect", path, "--json")).output)
    assert data["used_by"] == ["ltxv"] and data["components"][0]["name"] == "vae"
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY_091))
    out = ok(run("convert", path, "--layout", "diffusers", "-o", tmp_path / "d", "--config", cfg)).output
    assert "dropped 3 tensors" in out
    loaded = AutoencoderKLLTXVideo.from_pretrained(tmp_path / "d")
    assert _same(loaded.state_dict(), state)
    assert list(loaded.config.upsample_residual) == [True] * 3 and loaded.config.timestep_conditioning
    ok(run("convert", tmp_path / "d", "--layout", "original", "-o", tmp_path / "back.safetensors"))
    back = load_file(tmp_path / "back.safetensors")
    assert back.keys() == original.keys()
    assert all(back[n].dtype == original[n].dtype and back[n].shape == original[n].shape
               and back[n].numpy().tobytes() == original[n].numpy().tobytes() for n in original)


def test_gguf_writer_refuses_a_0_dim_tensor(tmp_path):
    from ckptkit.formats.gguf import GGUFStreamWriter

    with pytest.raises(CkptError, match="'decoder.timestep_scale_multiplier' is 0-dimensional"):
        GGUFStreamWriter(tmp_path / "x.gguf", "ltxv", [("decoder.timestep_scale_multiplier", (), "F32", 4)])


def test_onestep_decode_is_ltx_pipelines():
    """The 1-step check's one step and decode of the tiny ltxv set = LTXPipeline's (output_type "pt"):
    de-normalised by the VAE's latents_mean / latents_std buffers, decode_timestep 0 into the timestep-
    conditioned decoder, its injected noise from the same seed."""
    import diffusers

    from ckptkit.verify.images import decoded_to_image
    from ckptkit.verify.onestep import decode_frames
    from ckptkit.verify.recipes import recipe_for
    from ckptkit.verify.samplers import LTXCall, one_step

    spec = get_family("ltxv")
    recipe = recipe_for("ltxv")
    assert recipe.has_vae and recipe.decode_timestep == 0.0
    model = factory.component_model("ltxv", "diffusion_model")
    vae = factory.component_model("ltxv", "vae")
    assert vae.latents_std.std() > 0 and vae.config.timestep_conditioning
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, 16, 2, 2, 2, generator=gen)
    cond = {"context": torch.randn(1, 32, model.config.caption_channels, generator=gen)}
    pipe = diffusers.LTXPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(
        **{k: v for k, v in spec.scheduler.items() if k != "_class_name"} | {"shift_terminal": None}),
        vae=vae, text_encoder=None, tokenizer=None, transformer=model)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(7)  # the decoder's injected noise: torch's global generator (the pipeline's own noise: its
    # generator)
    ref = pipe(prompt_embeds=cond["context"], prompt_attention_mask=torch.ones(1, 32), guidance_scale=1.0,
               height=64, width=64, num_frames=9, latents=LTXCall.pack(z), num_inference_steps=1,
               output_type="pt", decode_timestep=0.0, generator=torch.Generator().manual_seed(1)).frames  # (1, 9, 3, 64, 64) in [0, 1]
    with torch.no_grad():
        x0 = one_step(recipe, model, z, cond, spec.scheduler)
        ours = decode_frames(vae, x0 / vae.config.scaling_factor, recipe.decode_timestep, seed=7)
    assert ours.shape == (1, 3, 9, 64, 64)
    torch.testing.assert_close((ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4), ref, rtol=1e-4, atol=1e-4)
    assert decoded_to_image(ours).ndim >= 3
    # another seed injects other noise
    with torch.no_grad():
        other = decode_frames(vae, x0, 0.0, seed=8)
    assert not torch.equal(other, ours)


def test_family_component_and_recipe():
    assert COMP.optional and COMP.prefix == "vae." and COMP.diffusers_class == "AutoencoderKLLTXVideo"
    assert COMP.released == (LTXV_VAE_091_CONFIG, LTXV_VAE_090_CONFIG) and COMP.high_precision == ("",)
    assert replace(COMP).layout == "ltxv_vae"
