"""The Wan 2.1 VAE layout (Qwen-Image's VAE) against diffusers' convert_wan_vae_to_diffusers:
bit-exact at tiny size, the released names and shapes on meta, the config read back from the shapes.
The Wan 2.2 VAE (nested residual levels) through the same layout: against diffusers' AutoencoderKLWan
names and shapes, Wan 2.2's own WanVAE_ and diffusers' convert_vae_22 (from the source mirrors when present)."""

import json
import math
import subprocess
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLQwenImage, AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

from ckptkit.convert.configs import resolve
from ckptkit.convert.layouts import get_layout
from ckptkit.engine import expr
from ckptkit.errors import CkptError
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
    # for the Wan 2.1 structure only the statistics (the rest is 2.2's: test_wan22_undetermined_refused_in_one_line)
    assert set(LAYOUT.undetermined) - LAYOUT.determined(shapes) == {"latents_mean", "latents_std"}
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


# ---------------------------------------------------------------- Wan 2.2 (Wan2.2_VAE.pth: nested residual levels)

# notes r17_video.md §9: a 2.2-like AutoencoderKLWan (is_residual, patch 2 -> 12 channels), 8 latent channels
TINY_WAN22_VAE = dict(base_dim=8, decoder_base_dim=8, z_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                      temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                      patch_size=2, scale_factor_spatial=16, latents_mean=[0.1 * i for i in range(8)],
                      latents_std=[1.0 + 0.1 * i for i in range(8)])
WAN22 = get_family("wan").component("vae").released[0]
DIFFUSERS_MIRROR = Path("/work/.mirror/huggingface+diffusers/repo")  # huggingface/diffusers@58eb52c0
WAN22_MIRROR = Path("/work/.mirror/Wan-Video+Wan2.2/repo")  # Wan-Video/Wan2.2@42bf4cfa


def _wan22_class_config(config):
    return {k: v for k, v in config.items() if k != "input_channels"}  # AutoencoderKLQwenImage's name


def _tiny_wan22():
    torch.manual_seed(0)
    model = AutoencoderKLWan(**TINY_WAN22_VAE)
    state = model.state_dict()
    original = expr.apply(LAYOUT.to_original(_shapes(state), TINY_WAN22_VAE), state.__getitem__)
    return state, original


def _git_show(mirror: Path, path: str) -> str:
    if not mirror.is_dir():
        pytest.skip(f"source mirror {mirror} absent")
    return subprocess.run(["git", f"--git-dir={mirror}", "show", f"HEAD:{path}"], check=True, capture_output=True,
                          text=True).stdout


def test_wan22_tiny_round_trip_bit_exact_and_loads_strict():
    state, original = _tiny_wan22()
    assert len(original) == len(state)
    assert original["encoder.conv1.weight"].shape == (8, 12, 3, 3, 3)
    assert "encoder.downsamples.0.downsamples.0.residual.0.gamma" in original
    assert "encoder.downsamples.1.downsamples.1.time_conv.weight" in original  # the Resample after 1 ResidualBlock
    assert "encoder.downsamples.0.downsamples.1.resample.1.weight" in original
    assert "encoder.downsamples.0.downsamples.1.time_conv.weight" not in original  # temperal_downsample[0] False
    assert "decoder.upsamples.0.upsamples.2.time_conv.weight" in original  # after num_res_blocks + 1
    assert "decoder.upsamples.2.upsamples.2.resample.1.weight" in original
    assert "decoder.upsamples.2.upsamples.2.time_conv.weight" not in original
    assert not any(n.startswith("decoder.upsamples.3.upsamples.2.") for n in original)  # the last level: none
    assert all(torch.equal(original[o], state[d]) for o, d in (
        ("conv1.weight", "quant_conv.weight"), ("conv2.bias", "post_quant_conv.bias"),
        ("decoder.head.2.weight", "decoder.conv_out.weight"), ("encoder.middle.1.to_qkv.weight",
                                                                "encoder.mid_block.attentions.0.to_qkv.weight")))
    back = LAYOUT.to_diffusers(dict(original), TINY_WAN22_VAE)
    assert back.keys() == state.keys() and all(torch.equal(back[n], state[n]) for n in state)
    AutoencoderKLWan(**TINY_WAN22_VAE).load_state_dict(back, strict=True)


def test_wan22_names_are_the_original_models_and_the_scripts():
    """Our original names are those of Wan 2.2's own WanVAE_ (vae2_2.py, built tiny), and diffusers'
    convert_vae_22 (run on them, its download and torch.load replaced) gives back the model's tensors."""
    source = _git_show(WAN22_MIRROR, "wan/modules/vae2_2.py").replace("from einops import rearrange",
                                                                      "rearrange = None  # forward only")
    ns: dict = {"__name__": "vae2_2"}
    exec(compile(source, "vae2_2.py", "exec"), ns)
    wan = ns["WanVAE_"](dim=8, dec_dim=8, z_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                        temperal_downsample=[False, True, True])
    state, original = _tiny_wan22()
    assert _shapes(wan.state_dict()) == _shapes(original)

    script = _git_show(DIFFUSERS_MIRROR, "scripts/convert_wan_to_diffusers.py")
    start = script.index("def convert_vae_22():")
    func = script[start:script.index("\ndef ", start + 1)]
    ns = {"hf_hub_download": lambda *a, **k: "Wan2.2_VAE.pth",
          "torch": SimpleNamespace(load=lambda *a, **k: dict(original)), "init_empty_weights": init_empty_weights,
          "AutoencoderKLWan": AutoencoderKLWan, "vae22_diffusers_config": TINY_WAN22_VAE}
    exec(func, ns)
    theirs = ns["convert_vae_22"]().state_dict()
    assert theirs.keys() == state.keys() and all(torch.equal(theirs[n], state[n]) for n in state)


def test_wan22_released_size_on_meta():
    with init_empty_weights():
        model = AutoencoderKLWan(**_wan22_class_config(WAN22))
    meta_shapes = _shapes(model.state_dict())
    ours = expr.shapes(LAYOUT.to_original(meta_shapes, WAN22), meta_shapes)
    assert len(ours) == len(meta_shapes) == 196
    # real Wan2.2_VAE.pth names and shapes (notes r17 §5)
    assert ours["encoder.conv1.weight"] == (160, 12, 3, 3, 3)
    assert ours["decoder.conv1.weight"] == (1024, 48, 3, 3, 3)
    assert ours["decoder.head.2.weight"] == (12, 256, 3, 3, 3)
    assert ours["conv1.weight"] == (96, 96, 1, 1, 1) and ours["conv2.weight"] == (48, 48, 1, 1, 1)
    assert ours["encoder.downsamples.1.downsamples.0.shortcut.weight"] == (320, 160, 1, 1, 1)
    assert ours["encoder.downsamples.1.downsamples.2.time_conv.weight"] == (320, 320, 3, 1, 1)
    assert ours["decoder.upsamples.0.upsamples.3.time_conv.weight"] == (2048, 1024, 3, 1, 1)
    assert "encoder.downsamples.0.downsamples.2.time_conv.weight" not in ours
    params = sum(math.prod(s) for s in ours.values())
    assert round(params / 1e6, 1) == 704.7
    # the config read back from the shapes is the released one where the shapes decide
    with pytest.raises(CkptError, match="Wan 2.2 VAE's patch_size, scale_factor_spatial, scale_factor_temporal "
                                        "is not in the weights"):
        LAYOUT.config_from_original(ours, {})  # absent is not None: never a silent unpatched VAE
    got = LAYOUT.config_from_original(ours, {k: WAN22[k] for k in LAYOUT._WAN22_ONLY})
    keys = LAYOUT.shape_keys_for(ours)
    assert {k: got[k] for k in keys} == {k: WAN22[k] for k in keys}
    assert got["is_residual"] is True and got["decoder_base_dim"] == 256 and got["out_channels"] == 12
    # ... and the family's vae takes the released 2.2 config (48 statistics) by those shapes; 2.1's stays 2.1's
    comp = get_family("wan").component("vae")
    resolved = resolve(comp, ours, "original")
    assert resolved.released_as == "released[0]" and len(resolved.values["latents_mean"]) == 48
    assert resolved.values["latents_std"][:2] == [0.4765, 1.0364] and resolved.values["patch_size"] == 2
    assert resolved.values["scale_factor_spatial"] == 16
    with init_empty_weights():
        wan21 = _shapes(AutoencoderKLWan().state_dict())
    resolved21 = resolve(comp, expr.shapes(LAYOUT.to_original(wan21, comp.config), wan21), "original")
    assert resolved21.released_as == "config" and len(resolved21.values["latents_mean"]) == 16
    # a standalone file in either naming is Wan's vae
    for names, layout in ((ours, "wan_vae"), (meta_shapes, "diffusers:wan_vae")):
        sig = next(s for s in SIGNATURES if all(c.holds(_lookup(names, "")) for c in s.when))
        assert (sig.name, sig.layout, sig.used_by) == ("vae", layout, ("wan",))
        assert "Wan 2.2" in sig.description


def test_wan22_undetermined_refused_in_one_line():
    _, original = _tiny_wan22()
    shapes = _shapes(original)
    comp = get_family("wan").component("vae")
    with pytest.raises(CkptError, match=r"^vae: latents_mean is not determined by the weights") as err:
        resolve(comp, shapes, "original")
    assert "\n" not in str(err.value)
    # the 2.2 structure leaves the patchify step and the pipeline's scale factors to a config too
    undetermined = {k for k in LAYOUT.undetermined if k not in ("latents_mean", "latents_std")}
    assert undetermined == {"patch_size", "scale_factor_spatial", "scale_factor_temporal"}
    # a pretend release of these very sizes gives them all
    release = dict(TINY_WAN22_VAE, input_channels=12, attn_scales=[], dropout=0.0, scale_factor_temporal=4)
    got = resolve(replace(comp, released=(release,)), shapes, "original")
    assert got.released_as == "released[0]" and got.values["patch_size"] == 2
    # names and shapes only: stand-ins
    assert resolve(comp, shapes, "original", strict=False).values["is_residual"] is True
    # a 16-channel Wan 2.1 file decides the 2.2-only keys as before (the spec's)
    assert LAYOUT.determined(_shapes(factory.original_state("wan", "vae"))) == set(undetermined)
    assert LAYOUT.determined(shapes) == set()
    # a broken nesting is refused in one line
    bad = {n.replace("decoder.upsamples.1.upsamples.1.", "decoder.upsamples.1.upsamples.5."): s
           for n, s in shapes.items()}
    with pytest.raises(CkptError, match="decoder.upsamples.1 is not residual blocks followed by"):
        LAYOUT.config_from_original(bad, {})


def test_wan22_lone_file_inspected_and_converted_both_ways(tmp_path):
    """A tiny Wan 2.2 VAE in Wan's names: inspect names it, convert -> diffusers (config given) -> back
    gives the same tensor bytes."""
    from safetensors.torch import load_file

    from ckptkit.formats.safetensors import save_safetensors
    from tests.cli import ok, refused, run

    state, original = _tiny_wan22()
    path = tmp_path / "wan2.2_vae.safetensors"
    save_safetensors(path, {n: t.contiguous() for n, t in original.items()})
    data = json.loads(ok(run("inspect", path, "--json")).output)
    assert data["used_by"] == ["wan"] and data["components"][0]["name"] == "vae"
    assert "Wan 2.2" in data["standalone"]
    line = refused(run("convert", path, "--layout", "diffusers", "-o", tmp_path / "x"))
    assert "vae: latents_mean is not determined by the weights" in line
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY_WAN22_VAE))
    ok(run("convert", path, "--layout", "diffusers", "-o", tmp_path / "d", "--config", cfg))
    loaded = AutoencoderKLWan.from_pretrained(tmp_path / "d")
    assert all(torch.equal(loaded.state_dict()[n], state[n]) for n in state)
    assert loaded.config.patch_size == 2 and list(loaded.config.latents_std) == TINY_WAN22_VAE["latents_std"]
    ok(run("convert", tmp_path / "d", "--layout", "original", "-o", tmp_path / "back.safetensors"))
    back = load_file(tmp_path / "back.safetensors")
    assert back.keys() == original.keys()
    assert all(back[n].dtype == original[n].dtype and back[n].numpy().tobytes() == original[n].numpy().tobytes()
               for n in original)
