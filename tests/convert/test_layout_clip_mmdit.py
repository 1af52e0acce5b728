"""OpenCLIP and MMDiT layouts (and the HF text layouts' names): bit-exact round trips at tiny size,
exact real names and shapes on the meta device against shared/manifests."""

from dataclasses import replace

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import SD3Transformer2DModel
from safetensors.torch import save_file
from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config,
                          T5EncoderModel)

from ckptkit.engine import expr
from ckptkit.convert.layouts import get_layout
from ckptkit.families import get_family
from ckptkit.families.common import clip_l, t5xxl
from ckptkit.families.sd3 import SD35_LARGE_CONFIG, SD35_MEDIUM_CONFIG
from ckptkit.fixtures import configs as tiny
from tests.conftest import manifest_shapes

BUILD = {
    "CLIPTextModel": lambda c: CLIPTextModel(CLIPTextConfig(**c)),
    "CLIPTextModelWithProjection": lambda c: CLIPTextModelWithProjection(CLIPTextConfig(**c)),
    "T5EncoderModel": lambda c: T5EncoderModel(T5Config(**c)),
    "SD3Transformer2DModel": lambda c: SD3Transformer2DModel(**c),
}

TINY_SD35_LARGE = dict(tiny.TINY_SD3, num_layers=3, qk_norm="rms_norm")
TINY_SD35_MEDIUM = dict(tiny.TINY_SD3, qk_norm="rms_norm", dual_attention_layers=(0,))
TINY_CASES = {  # id: (layout kind, model class, config)
    "clip_g": ("open_clip", "CLIPTextModelWithProjection", tiny.TINY_CLIP_G),
    "clip_h": ("open_clip", "CLIPTextModel", tiny.TINY_CLIP_H),
    "sd3": ("mmdit", "SD3Transformer2DModel", tiny.TINY_SD3),
    "sd35_large": ("mmdit", "SD3Transformer2DModel", TINY_SD35_LARGE),
    "sd35_medium": ("mmdit", "SD3Transformer2DModel", TINY_SD35_MEDIUM),
}

SD3_MMDIT = get_family("sd3").component("diffusion_model")
SD2_CLIP_H = get_family("sd2").component("clip_h")
REAL_CASES = {  # id: (manifest, manifest component, component spec)
    "sdxl_base-clip_g": ("sdxl_base", "clip_g", get_family("sdxl").component("clip_g")),
    # SD2 files carry text_projection (real, unused by SD2). diffusers' SD2 text_encoder is a
    # CLIPTextModel without it, so the full manifest comes from the WithProjection model; see
    # test_sd2_clip_text_model_lacks_only_text_projection for the CLIPTextModel side.
    "sd21-clip_h": ("sd21", "clip_h", replace(SD2_CLIP_H, diffusers_class="CLIPTextModelWithProjection")),
    "sd3_medium-diffusion_model": ("sd3_medium", "diffusion_model", SD3_MMDIT),
    "sd35_large-diffusion_model": ("sd35_large", "diffusion_model", replace(SD3_MMDIT, config=SD35_LARGE_CONFIG)),
    "sd35_medium-diffusion_model": ("sd35_medium", "diffusion_model", replace(SD3_MMDIT, config=SD35_MEDIUM_CONFIG)),
    "sd3_medium-clip_g": ("sd3_medium", "clip_g", get_family("sd3").component("clip_g")),
    "sd3_medium-clip_l": ("sd3_medium", "clip_l", get_family("sd3").component("clip_l")),
    "sd3_medium-t5xxl": ("sd3_medium", "t5xxl", get_family("sd3").component("t5xxl")),
    "clip_l-clip_l": ("clip_l", "clip_l", clip_l("")),
    "t5xxl-t5xxl": ("t5xxl", "t5xxl", t5xxl("")),
    "sd15-clip_l": ("sd15", "clip_l", get_family("sd1").component("clip_l")),
}


def text_model_name(name: str) -> str:
    # Not imported from layouts.hf_text: get_layout() loads the layout modules only while none is
    # registered, so importing one directly here would hide the others from every test module.
    return name if name.startswith(("text_model.", "text_projection.")) else "text_model." + name


def loadable(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our `text_model.` names as the installed model's own state_dict spells them: transformers
    >= 5.6 flattened CLIPTextModel (from_pretrained renames; nn.Module.load_state_dict does not)."""
    names = set(model.state_dict())
    return {n if n in names else n.removeprefix("text_model."): t for n, t in tensors.items()}


def round_trip(kind: str, model: torch.nn.Module, config: dict):
    layout = get_layout(kind)
    sd = model.state_dict()
    orig = expr.apply(layout.to_original({n: tuple(t.shape) for n, t in sd.items()}, config), sd.__getitem__)
    return sd, orig, layout.to_diffusers(orig, config)


@pytest.mark.parametrize("kind,cls,config", TINY_CASES.values(), ids=TINY_CASES.keys())
def test_tiny_round_trip_is_bit_exact(kind, cls, config):
    torch.manual_seed(0)
    model = BUILD[cls](config)
    sd, _, back = round_trip(kind, model, config)

    want = {text_model_name(n): t for n, t in sd.items()} if kind == "open_clip" else sd
    assert set(back) == set(want)
    for name, tensor in want.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    model.load_state_dict(loadable(model, back), strict=True)


def test_open_clip_names_fuse_qkv_and_transpose_projection():
    config = dict(tiny.TINY_CLIP_G, projection_dim=48)  # non-square, so orientation shows in shapes
    torch.manual_seed(0)
    model = CLIPTextModelWithProjection(CLIPTextConfig(**config))
    sd, orig, back = round_trip("open_clip", model, config)

    assert orig["text_projection"].shape == (1280, 48)  # open_clip: [width, embed_dim], used as x @ P
    x = torch.randn(3, 1280)
    torch.testing.assert_close(x @ orig["text_projection"], model.text_projection(x))
    layer = "text_model.encoder.layers.1.self_attn."
    assert torch.equal(orig["transformer.resblocks.1.attn.in_proj_weight"],
                       torch.cat([sd[f"{layer}{x}_proj.weight"] for x in "qkv"]))
    assert torch.equal(back["text_projection.weight"], sd["text_projection.weight"])


def test_open_clip_drops_layers_beyond_config_and_logit_scale():
    # SD2: the file stores 24 resblocks, diffusers' SD2 text_encoder config has 23.
    torch.manual_seed(0)
    _, orig, _ = round_trip("open_clip", CLIPTextModel(CLIPTextConfig(**tiny.TINY_CLIP_H)), tiny.TINY_CLIP_H)
    orig["logit_scale"] = torch.tensor(4.6055)
    shallow = dict(tiny.TINY_CLIP_H, num_hidden_layers=1)

    back = get_layout("open_clip").to_diffusers(orig, shallow)

    assert not any(".layers.1." in n for n in back) and "logit_scale" not in back
    model = CLIPTextModel(CLIPTextConfig(**shallow))
    model.load_state_dict(loadable(model, back), strict=True)


def test_transformers_loads_text_model_names_into_flattened_clip(tmp_path):
    torch.manual_seed(0)
    model = CLIPTextModel(CLIPTextConfig(**tiny.TINY_CLIP_H))
    _, _, back = round_trip("open_clip", model, tiny.TINY_CLIP_H)
    assert all(n.startswith("text_model.") for n in back)
    model.config.save_pretrained(tmp_path)
    save_file(back, tmp_path / "model.safetensors")

    loaded, info = CLIPTextModel.from_pretrained(tmp_path, output_loading_info=True)

    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def meta_shapes(cls: str, config: dict) -> dict[str, tuple[int, ...]]:
    # include_buffers: SD3's pos_embed buffer would otherwise be computed for real (~1 GB for 3.5-M).
    with init_empty_weights(include_buffers=True):
        model = BUILD[cls](config)
    return {n: tuple(t.shape) for n, t in model.state_dict().items()}


@pytest.mark.parametrize("manifest,component,spec", REAL_CASES.values(), ids=REAL_CASES.keys())
def test_real_config_gives_manifest_names_and_shapes(manifest, component, spec):
    shapes = meta_shapes(spec.diffusers_class, spec.config)

    mapping = get_layout(spec.layout).to_original(shapes, spec.config)
    if spec.identity_projection:  # SD3's CLIP-L: diffusers' class carries an identity the bundle has not
        mapping.pop("text_projection.weight")
    got = expr.shapes(mapping, shapes)

    want = manifest_shapes(manifest, component)
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
    assert {n: s for n, s in got.items() if want[n] != s} == {}


def test_sd2_clip_text_model_lacks_only_text_projection():
    shapes = meta_shapes(SD2_CLIP_H.diffusers_class, SD2_CLIP_H.config)
    got = expr.shapes(get_layout("open_clip").to_original(shapes, SD2_CLIP_H.config), shapes)
    want = manifest_shapes("sd21", "clip_h")
    assert set(want) - set(got) == {"text_projection"} and set(got) <= set(want)
