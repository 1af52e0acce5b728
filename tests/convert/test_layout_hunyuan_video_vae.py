"""The HunyuanVideo causal 3-D VAE: the same names in Tencent's and diffusers' files, the config read
back from the released shapes, what the weights cannot decide refused, and a lone VAE file detected."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLHunyuanVideo

from ckptkit.convert.layouts import get_layout
from ckptkit.convert.layouts.hunyuan_video_vae import resampled_levels
from ckptkit.engine import expr
from ckptkit.errors import CkptError
from ckptkit.families import get_family
from ckptkit.fixtures.configs import TINY_HUNYUAN_VIDEO_VAE
from ckptkit.fixtures.factory import component_model
from ckptkit.formats.safetensors import save_safetensors
from tests.cli import ok, refused, run

LAYOUT = get_layout("hunyuan_video_vae")
RELEASED = get_family("hunyuan_video").component("vae").config
UNDETERMINED = ("scaling_factor", "norm_num_groups", "spatial_compression_ratio")


def _meta_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    with init_empty_weights():
        model = AutoencoderKLHunyuanVideo(**config)
    return {n: tuple(t.shape) for n, t in model.state_dict().items()}


def test_released_names_shapes_and_config_read_back():
    shapes = _meta_shapes(RELEASED)
    ours = expr.shapes(LAYOUT.to_original(shapes, RELEASED), shapes)
    assert ours == shapes and len(shapes) == 248  # Tencent's AutoencoderKLCausal3D: the same 248 names
    assert ours["encoder.conv_in.conv.weight"] == (128, 3, 3, 3, 3)
    assert ours["encoder.conv_out.conv.weight"] == (32, 512, 3, 3, 3)  # mean | log-variance of 16 channels
    assert ours["quant_conv.weight"] == (32, 32, 1, 1, 1) and ours["post_quant_conv.weight"] == (16, 16, 1, 1, 1)
    assert ours["decoder.conv_in.conv.weight"] == (512, 16, 3, 3, 3)
    assert ours["decoder.up_blocks.0.resnets.2.conv2.conv.weight"] == (512, 512, 3, 3, 3)  # 3 resnets a level
    assert sum(len(s) == 5 for s in shapes.values()) == 64
    base = {k: RELEASED[k] for k in UNDETERMINED}
    got = LAYOUT.config_rule(ours, base)
    assert {k: v for k, v in RELEASED.items() if k != "act_fn"} == {k: v for k, v in got.items()}


def test_tiny_config_read_back_and_names_unchanged_both_ways():
    model = component_model("hunyuan_video", "vae")
    state = model.state_dict()
    shapes = {n: tuple(t.shape) for n, t in state.items()}
    to_orig = LAYOUT.to_original(shapes, TINY_HUNYUAN_VIDEO_VAE)
    original = expr.apply(to_orig, state.__getitem__)
    assert original.keys() == state.keys() and all(torch.equal(original[n], state[n]) for n in state)
    back = expr.apply(LAYOUT.to_diffusers_map(shapes, TINY_HUNYUAN_VIDEO_VAE), original.__getitem__)
    assert all(torch.equal(back[n], state[n]) for n in state)
    got = LAYOUT.config_rule(shapes, {k: TINY_HUNYUAN_VIDEO_VAE[k] for k in UNDETERMINED})
    assert got == {k: v for k, v in TINY_HUNYUAN_VIDEO_VAE.items() if k != "act_fn"}


@pytest.mark.parametrize("levels, spatial, want", [(4, 8, [0, 1, 2]), (4, 4, [0, 1, 2]), (5, 8, [0, 1, 2, 3]),
                                                   (5, 2, [0, 2, 3]), (3, 2, [0, 1])])
def test_resamplers_placed_as_diffusers_places_them(levels, spatial, want):
    assert resampled_levels(levels, spatial) == want
    config = dict(TINY_HUNYUAN_VIDEO_VAE, down_block_types=["HunyuanVideoDownBlock3D"] * levels,
                  up_block_types=["HunyuanVideoUpBlock3D"] * levels, block_out_channels=[8] * levels,
                  spatial_compression_ratio=spatial)
    shapes = _meta_shapes(config)
    down = [i for i in range(levels) if f"encoder.down_blocks.{i}.downsamplers.0.conv.conv.weight" in shapes]
    up = [i for i in range(levels) if f"decoder.up_blocks.{i}.upsamplers.0.conv.conv.weight" in shapes]
    assert down == up == want


def test_what_the_weights_cannot_decide_is_refused():
    shapes = _meta_shapes(RELEASED)
    base = {k: RELEASED[k] for k in UNDETERMINED}
    with pytest.raises(CkptError, match="spatial_compression_ratio must be a power of 2, not None"):
        LAYOUT.config_rule(shapes, {k: v for k, v in base.items() if k != "spatial_compression_ratio"})
    with pytest.raises(CkptError, match="builds temporal_compression_ratio 4 only, not 8"):
        LAYOUT.config_rule(shapes, dict(base, temporal_compression_ratio=8))
    # 5 levels hold 4 resamplers at 8x spatial, 3 at 2x: a ratio the weights contradict is refused
    five = dict(RELEASED, down_block_types=["HunyuanVideoDownBlock3D"] * 5,
                up_block_types=["HunyuanVideoUpBlock3D"] * 5, block_out_channels=[8] * 5, norm_num_groups=4)
    with pytest.raises(CkptError, match=r"resamplers at encoder levels \[0, 1, 2, 3\] .* not \[0, 2, 3\]"):
        LAYOUT.config_rule(_meta_shapes(five), dict(base, spatial_compression_ratio=2))
    flat = dict(shapes, **{"encoder.conv_in.conv.weight": (128, 3, 3, 3)})
    with pytest.raises(CkptError, match="is 4-D, not a 5-D causal Conv3d"):
        LAYOUT.config_rule(flat, base)
    lopsided = {n: s for n, s in shapes.items() if not n.startswith("decoder.up_blocks.3.")}
    with pytest.raises(CkptError, match="4 encoder levels but 3 decoder levels"):
        LAYOUT.config_rule(lopsided, base)
    # the placeholder (names and shapes only) is the released ratio where the weights allow it
    assert LAYOUT.placeholder_rule(shapes)["spatial_compression_ratio"] == 8


def test_lone_vae_file_detected_and_converted(tmp_path):
    """A ComfyUI `vae/hunyuan_video_vae_bf16.safetensors`: the bare names, found as HunyuanVideo's VAE;
    its diffusers folder loads into AutoencoderKLHunyuanVideo with the same weights."""
    model = component_model("hunyuan_video", "vae")
    state = {n: t.detach().clone() for n, t in model.state_dict().items()}
    path = tmp_path / "hunyuan_video_vae.safetensors"
    save_safetensors(path, state)
    data = json.loads(ok(run("inspect", path, "--json")).output)
    assert data["standalone"] == "HunyuanVideo causal 3-D VAE (AutoencoderKLHunyuanVideo)"
    assert data["used_by"] == ["hunyuan_video"] and data["components"][0]["name"] == "vae"
    # the tiny file's latent scale, GroupNorm groups and spatial ratio are not in it: refused, then given
    line = refused(run("convert", path, "--layout", "diffusers", "-o", tmp_path / "x"))
    assert "vae: scaling_factor is not determined by the weights" in line and "--config" in line
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY_HUNYUAN_VIDEO_VAE))
    ok(run("convert", path, "--layout", "diffusers", "-o", tmp_path / "d", "--config", cfg))
    loaded = AutoencoderKLHunyuanVideo.from_pretrained(tmp_path / "d")
    assert all(torch.equal(loaded.state_dict()[n], state[n]) for n in state)
    assert loaded.config.norm_num_groups == 4 and loaded.config.scaling_factor == 0.476986
