"""The LTX-2 video VAE layout (ltx2_vae) against diffusers' convert_ltx2_vae_to_diffusers and the pinned
script's LTX_2_0 / LTX_2_3 rename dicts: tiny models of the released structures bit-exact through them
and back, a timestep-conditioned structure through our own map, the released sizes on meta (names,
shapes, tensor count, config read back), one-line refusals, detection of a lone file apart from
LTX-Video's VAE, the ltx2 family's `vae.` component and the lone file through the CLI."""

import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLLTX2Video, AutoencoderKLLTXVideo
from diffusers.loaders.single_file_utils import convert_ltx2_vae_to_diffusers

from ckptkit.convert.configs import resolve
from ckptkit.convert.layouts import get_layout
from ckptkit.convert.models import random_model
from ckptkit.engine import expr
from ckptkit.errors import CkptError
from ckptkit.families import get_family
from ckptkit.families.components import SIGNATURES
from ckptkit.families.detect import _lookup
from ckptkit.families.ltx2 import LTX2_3_VAE_CONFIG, LTX2_VAE_CONFIG
from ckptkit.families.ltxv import LTXV_VAE_090_CONFIG, LTXV_VAE_091_CONFIG, LTXV_VAE_095_CONFIG

LAYOUT = get_layout("ltx2_vae")
COMP = get_family("ltx2").component("vae")

# tiny versions of the released structures: the same levels and re-samplers (so the same flat indices) at
# 8..128 channels, 8 latent channels in 2 x 2 patches
_TINY = dict(in_channels=3, out_channels=3, latent_channels=8, patch_size=2, patch_size_t=1)
TINY_20 = dict(LTX2_VAE_CONFIG, **_TINY, block_out_channels=[16, 32, 64, 128], decoder_block_out_channels=[16, 32, 64],
               layers_per_block=[1, 2, 1, 1, 1], decoder_layers_per_block=[1, 1, 2, 1], spatial_compression_ratio=16)
TINY_23 = dict(LTX2_3_VAE_CONFIG, **_TINY, block_out_channels=[16, 32, 64, 64], decoder_block_out_channels=[16, 32, 32, 64],
               layers_per_block=[1, 1, 1, 1, 1], decoder_layers_per_block=[1, 1, 2, 1, 1], spatial_compression_ratio=16)
# not released: timestep-conditioned decoder with noise injection (`last_*`, which the single-file table lacks)
TINY_TC = dict(TINY_20, timestep_conditioning=True, decoder_inject_noise=[True, True, False, False])
EXTRA_STATS = ("per_channel_statistics.channel", "per_channel_statistics.mean-of-stds",
               "per_channel_statistics.mean-of-stds_over_std-of-means")
_MIRROR = Path("/work/.mirror/huggingface+diffusers/repo")


def _shapes(state):
    return {n: tuple(t.shape) for n, t in state.items()}


def _plain(config):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def _tiny(config, seed=0):
    state = random_model("AutoencoderKLLTX2Video", config, seed).state_dict()
    original = expr.apply(LAYOUT.to_original(_shapes(state), config), state.__getitem__)
    return state, original


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in b)


def _script_rename(original: dict, table: str) -> dict:
    """scripts/convert_ltx2_to_diffusers.py (diffusers@58eb52c0) convert_ltx2_video_vae's renaming with its
    table, read from the pinned snapshot (the script is not part of the installed package)."""
    if not _MIRROR.exists():
        pytest.skip("no pinned diffusers snapshot")
    text = subprocess.run(["git", f"--git-dir={_MIRROR}", "show", "HEAD:scripts/convert_ltx2_to_diffusers.py"],
                          capture_output=True, text=True, check=True).stdout
    ns: dict = {}
    for name in ("LTX_2_0_VIDEO_VAE_RENAME_DICT", "LTX_2_3_VIDEO_VAE_RENAME_DICT"):
        exec(re.search(rf"^{name} = \{{.*?^\}}$", text, re.S | re.M)[0], ns)
    out = {}
    for key, tensor in original.items():
        if any(s in key for s in ("per_channel_statistics.channel", "per_channel_statistics.mean-of-stds")):
            continue  # LTX_2_0_VAE_SPECIAL_KEYS_REMAP: removed
        new = key
        for old, rename in ns[table].items():
            new = new.replace(old, rename)
        out[new] = tensor
    return out


@pytest.mark.parametrize("config, table", [(TINY_20, "LTX_2_0_VIDEO_VAE_RENAME_DICT"),
                                           (TINY_23, "LTX_2_3_VIDEO_VAE_RENAME_DICT")], ids=["2.0", "2.3"])
def test_tiny_released_structures_bit_exact_through_diffusers_and_back(config, table):
    state, original = _tiny(config)
    assert len(original) == len(state)
    assert _same(_script_rename(original, table), state)
    back = LAYOUT.to_diffusers(dict(original), config)
    assert _same(back, state)
    AutoencoderKLLTX2Video(**config).load_state_dict(back, strict=True)
    if config is TINY_20:  # the single-file converter's table is 2.0's
        assert _same(convert_ltx2_vae_to_diffusers({"vae." + n: t for n, t in original.items()}), state)
    got = LAYOUT.config_from_original(_shapes(original), config)
    assert {k: got[k] for k in LAYOUT.shape_keys} == {k: _plain(config)[k] for k in LAYOUT.shape_keys}
    assert (got["spatial_compression_ratio"], got["temporal_compression_ratio"]) == (16, 8)
    assert torch.equal(original["per_channel_statistics.std-of-means"], state["latents_std"])


def test_tiny_original_names_are_the_released_flat_lists():
    _, o20 = _tiny(TINY_20)
    # encoder: res, s2d x 4 (rows = next width / stride: 16/4, 32/2, 64/8, 128/8), mid at 8
    assert [o20[f"encoder.down_blocks.{k}.conv.conv.weight"].shape[0] for k in (1, 3, 5, 7)] == [4, 16, 8, 16]
    assert "encoder.down_blocks.8.res_blocks.0.conv1.conv.weight" in o20
    assert o20["encoder.conv_in.conv.weight"].shape == (8, 12, 3, 3, 3)  # latent wide; 3 x patch 2^2
    # decoder: mid at 0, then depth-to-space (width x 2 in, width x 8 out) and res_x per level
    assert o20["decoder.up_blocks.1.conv.conv.weight"].shape == (256, 64, 3, 3, 3)
    assert "decoder.up_blocks.6.res_blocks.0.conv1.conv.weight" in o20 and "decoder.up_blocks.7.conv.conv.weight" not in o20
    _, o23 = _tiny(TINY_23)
    # 2.3's up-samplers in decoder order (upsample_type is not reversed, upsample_factor is): 2x2x2 factor 2,
    # 2x2x2 factor 1, temporal (x2) factor 2, spatial (x4) factor 2
    assert [o23[f"decoder.up_blocks.{k}.conv.conv.weight"].shape[:2] for k in (1, 3, 5, 7)] == [
        (256, 64), (256, 32), (32, 32), (32, 16)]
    _, otc = _tiny(TINY_TC)
    assert otc["decoder.timestep_scale_multiplier"].shape == ()
    assert "decoder.last_time_embedder.timestep_embedder.linear_1.weight" in otc and "decoder.last_scale_shift_table" in otc
    # decoder_inject_noise in encoder order, reversed: the last two decoder levels (up_blocks.4, .6)
    assert "decoder.up_blocks.4.res_blocks.0.per_channel_scale1" in otc and "decoder.up_blocks.2.res_blocks.0.per_channel_scale1" not in otc


def test_timestep_conditioned_structure_round_trips_through_our_map():
    state, original = _tiny(TINY_TC)
    theirs = convert_ltx2_vae_to_diffusers({"vae." + n: t for n, t in original.items()})
    assert theirs.keys() != state.keys()  # the single-file table has no last_*: what our own map is for
    assert _same(_script_rename(original, "LTX_2_0_VIDEO_VAE_RENAME_DICT"), state)
    assert _same(LAYOUT.to_diffusers(dict(original), TINY_TC), state)
    got = LAYOUT.config_from_original(_shapes(original), TINY_TC)
    assert {k: got[k] for k in LAYOUT.shape_keys} == {k: _plain(TINY_TC)[k] for k in LAYOUT.shape_keys}


@pytest.mark.parametrize("config, tag, tensors, params", [
    (LTX2_VAE_CONFIG, "config", 184, 1222.5), (LTX2_3_VAE_CONFIG, "released[0]", None, None)], ids=["2.0", "2.3"])
def test_released_sizes_on_meta(config, tag, tensors, params):
    with init_empty_weights(include_buffers=True):
        model = AutoencoderKLLTX2Video(**config)
    meta = _shapes(model.state_dict())
    ours = expr.shapes(LAYOUT.to_original(meta, config), meta)
    assert len(ours) == len(meta)
    if tensors:  # notes r17 §5
        assert len(ours) == tensors and round(sum(math.prod(s) for s in ours.values()) / 1e5) / 10 == params
        assert sum(len(s) == 5 for s in ours.values()) == 91
        fake = {"vae." + n: torch.empty(s, device="meta") for n, s in ours.items()}
        assert _shapes(convert_ltx2_vae_to_diffusers(fake)) == meta
    fake = {n: torch.empty(s, device="meta") for n, s in ours.items()}
    table = "LTX_2_0_VIDEO_VAE_RENAME_DICT" if config is LTX2_VAE_CONFIG else "LTX_2_3_VIDEO_VAE_RENAME_DICT"
    assert _shapes(_script_rename(fake, table)) == meta
    assert ours["encoder.conv_in.conv.weight"] == (128, 48, 3, 3, 3)
    assert ours["decoder.conv_in.conv.weight"][1] == 128 and ours["encoder.conv_out.conv.weight"][0] == 129
    assert "decoder.last_time_embedder.timestep_embedder.linear_1.weight" not in ours
    got = resolve(COMP, ours, "original")
    assert got.released_as == tag and got.undetermined == []
    assert {k: got.values.get(k) for k in config} == _plain(config)
    # a standalone file in either naming is LTX-2's vae
    for names, layout in ((ours, "ltx2_vae"), (meta, "diffusers:ltx2_vae")):
        sig = next(s for s in SIGNATURES if all(c.holds(_lookup(names, "")) for c in s.when))
        assert (sig.name, sig.layout, sig.used_by) == ("vae", layout, ("ltx2",))


@pytest.mark.parametrize("config", [LTXV_VAE_090_CONFIG, LTXV_VAE_091_CONFIG, LTXV_VAE_095_CONFIG],
                         ids=["0.9.0", "0.9.1", "0.9.5"])
def test_ltx_video_vaes_are_still_ltxv(config):
    with init_empty_weights(include_buffers=True):
        meta = _shapes(AutoencoderKLLTXVideo(**config).state_dict())
    ltxv = get_layout("ltxv_vae")
    ours = expr.shapes(ltxv.to_original(meta, config), meta)
    for names, layout in ((ours, "ltxv_vae"), (meta, "diffusers:ltxv_vae")):
        sig = next(s for s in SIGNATURES if all(c.holds(_lookup(names, "")) for c in s.when))
        assert (sig.name, sig.layout, sig.used_by) == ("vae", layout, ("ltxv",))


def test_one_line_refusals():
    _, original = _tiny(TINY_20)
    shapes = _shapes(original)
    with pytest.raises(CkptError, match=r"^vae: \w+ is not determined by the weights") as err:
        resolve(COMP, shapes, "original")
    assert "\n" not in str(err.value)
    assert resolve(COMP, shapes, "original", given=TINY_20).values["upsample_type"] == ["spatiotemporal"] * 3
    assert resolve(COMP, shapes, "original", strict=False).values["patch_size"] == 2  # names and shapes only
    with pytest.raises(CkptError, match="in_channels is not in the weights"):
        LAYOUT.config_from_original(shapes, {})
    bad = dict(shapes, **{"encoder.conv_out.conv.weight": (16, 128, 3, 3, 3)})
    with pytest.raises(CkptError, match="not 8 latent channels \\+ 1"):
        LAYOUT.config_from_original(bad, TINY_20)
    wide = dict(shapes, **{"encoder.conv_in.conv.weight": (16, 12, 3, 3, 3)})
    with pytest.raises(CkptError, match="encoder.conv_in makes 16 channels, not the 8 latent channels"):
        LAYOUT.config_from_original(wide, TINY_20)
    odd = dict(shapes, **{"decoder.up_blocks.1.conv.conv.weight": (96, 64, 3, 3, 3)})  # 3 x 32: no stride
    with pytest.raises(CkptError, match="not width x factor to width x a stride of 2, 4 or 8"):
        LAYOUT.config_from_original(odd, TINY_20)
    gap = {n.replace("encoder.down_blocks.3.", "encoder.down_blocks.13."): s for n, s in shapes.items()}
    with pytest.raises(CkptError, match="^LTX-2 video VAE: encoder.down_blocks.3 holds no block"):
        LAYOUT.config_from_original(gap, TINY_20)
    with pytest.raises(CkptError, match="not 4 / 3 pixel channels in a square patch"):
        LAYOUT.config_from_original(shapes, dict(TINY_20, in_channels=4))
    for exc in (err,):
        assert "\n" not in str(exc.value)


def test_family_component_and_bundle_prefix():
    assert COMP.optional and COMP.prefix == "vae." and COMP.diffusers_class == "AutoencoderKLLTX2Video"
    assert COMP.layout == "ltx2_vae" and COMP.released == (LTX2_3_VAE_CONFIG,) and COMP.high_precision == ("",)


def test_lone_file_converted_both_ways_reports_the_dropped_statistics(tmp_path):
    """An LTX-2 video VAE in Lightricks' names with the statistics diffusers does not keep: inspect names it
    LTX-2's; -> diffusers (config given) reports them dropped and loads strict; -> back: the same bytes."""
    from safetensors.torch import load_file

    from ckptkit.formats.safetensors import save_safetensors
    from tests.cli import ok, run

    state, original = _tiny(TINY_23)
    extra = {EXTRA_STATS[0]: torch.arange(8.0), EXTRA_STATS[1]: torch.rand(8), EXTRA_STATS[2]: torch.rand(8)}
    path = tmp_path / "ltx2_vae.safetensors"
    save_safetensors(path, {**{n: t.contiguous() for n, t in original.items()}, **extra})
    data = json.loads(ok(run("inspect", path, "--json")).output)
    assert data["used_by"] == ["ltx2"] and data["components"][0]["name"] == "vae"
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY_23))
    out = ok(run("convert", path, "--layout", "diffusers", "-o", tmp_path / "d", "--config", cfg)).output
    assert "dropped 3 tensors" in out
    loaded = AutoencoderKLLTX2Video.from_pretrained(tmp_path / "d")
    assert _same(loaded.state_dict(), state)
    assert list(loaded.config.upsample_type) == TINY_23["upsample_type"]
    ok(run("convert", tmp_path / "d", "--layout", "original", "-o", tmp_path / "back.safetensors"))
    back = load_file(tmp_path / "back.safetensors")
    assert back.keys() == original.keys()
    assert all(back[n].numpy().tobytes() == original[n].numpy().tobytes() for n in original)


def test_tiny_fixture_is_the_20_structure_and_fits_the_transformer():
    from ckptkit.fixtures import configs as tiny
    from ckptkit.fixtures import factory
    from ckptkit.verify.onestep import vae_factor
    from ckptkit.verify.recipes import recipe_for

    cfg = tiny.TINY_LTX2_VAE
    assert cfg["latent_channels"] == tiny.TINY_LTX2["in_channels"] == 16
    shapes = _shapes(factory.original_state("ltx2", "vae"))
    got = LAYOUT.config_from_original(shapes, cfg)
    assert {k: got[k] for k in LAYOUT.shape_keys} == {k: cfg[k] for k in LAYOUT.shape_keys}
    assert vae_factor(cfg) == 32 == vae_factor(LTX2_VAE_CONFIG) == vae_factor(LTX2_3_VAE_CONFIG)
    assert recipe_for("ltx2", "2.0").has_vae


def test_onestep_decode_is_ltx2_pipelines():
    """The 1-step check's decode = LTX2Pipeline's video decode (no timestep conditioning): de-normalised by
    the VAE's latents_mean / latents_std buffers (_denormalize_latents), then vae.decode(latents, None)."""
    from diffusers import LTX2Pipeline

    from ckptkit.fixtures import factory
    from ckptkit.verify.onestep import decode_frames

    vae = factory.component_model("ltx2", "vae")
    assert vae.latents_std.std() > 0 and not vae.config.timestep_conditioning
    z = torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = vae.decode(LTX2Pipeline._denormalize_latents(z, vae.latents_mean, vae.latents_std,
                                                           vae.config.scaling_factor), None, return_dict=False)[0]
        ours = decode_frames(vae, z / vae.config.scaling_factor, 0.0, seed=7)
    assert ours.shape == (1, 3, 9, 64, 64)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
