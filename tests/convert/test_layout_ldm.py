"""LDM UNet / VAE layouts: bit-exact round trips at tiny size, exact real names and shapes on meta."""

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel

from ckptkit.engine import expr
from ckptkit.convert.layouts import get_layout
from ckptkit.families import get_family
from ckptkit.fixtures import configs as tiny
from tests.conftest import manifest_shapes

MODELS = {"ldm_unet": UNet2DConditionModel, "ldm_vae": AutoencoderKL}

TINY_CASES = [
    ("ldm_unet", tiny.TINY_SD1_UNET),
    ("ldm_unet", tiny.TINY_SD2_UNET),
    ("ldm_unet", tiny.TINY_SDXL_UNET),
    ("ldm_unet", tiny.TINY_REFINER_UNET),
    ("ldm_vae", tiny.TINY_VAE),
    ("ldm_vae", tiny.TINY_FLOW_VAE),
]
TINY_IDS = ["sd1_unet", "sd2_unet", "sdxl_unet", "refiner_unet", "vae", "flow_vae"]

# (manifest, manifest component, family, family component)
REAL_CASES = [
    ("sd15", "diffusion_model", "sd1", "diffusion_model"),
    ("sd15", "vae", "sd1", "vae"),
    ("sd21", "diffusion_model", "sd2", "diffusion_model"),
    ("sdxl_base", "diffusion_model", "sdxl", "diffusion_model"),
    ("sdxl_base", "vae", "sdxl", "vae"),
    ("sd3_medium", "vae", "sd3", "vae"),
    ("ae", "vae", "flux", "vae"),
]


@pytest.mark.parametrize("kind,config", TINY_CASES, ids=TINY_IDS)
def test_tiny_round_trip_is_bit_exact(kind, config):
    layout = get_layout(kind)
    torch.manual_seed(0)
    model = MODELS[kind](**config)
    sd = model.state_dict()
    shapes = {n: tuple(t.shape) for n, t in sd.items()}

    orig = expr.apply(layout.to_original(shapes, config), sd.__getitem__)
    back = layout.to_diffusers(orig, config)

    assert set(back) == set(sd)
    for name, tensor in sd.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    model.load_state_dict(back, strict=True)


@pytest.mark.parametrize("manifest,component,family,family_component", REAL_CASES,
                         ids=[f"{m}-{c}" for m, c, _, _ in REAL_CASES])
def test_real_config_gives_manifest_names_and_shapes(manifest, component, family, family_component):
    spec = get_family(family).component(family_component)
    layout = get_layout(spec.layout)
    with init_empty_weights():
        model = MODELS[spec.layout](**spec.config)
    meta_shapes = {n: tuple(t.shape) for n, t in model.state_dict().items()}

    got = expr.shapes(layout.to_original(meta_shapes, spec.config), meta_shapes)

    want = manifest_shapes(manifest, component)
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
    assert {n: s for n, s in got.items() if want[n] != s} == {}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl_refiner"])
def test_real_unet_config_matches_family_markers(family):
    # The refiner has no manifest: at least its real config must give the names and dims that
    # detection keys on, on both sides, with no two diffusers names mapped to one original.
    spec = get_family(family)
    comp = spec.component("diffusion_model")
    with init_empty_weights():
        model = UNet2DConditionModel(**comp.config)
    meta_shapes = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    mapping = get_layout(comp.layout).to_original(meta_shapes, comp.config)
    orig_shapes = expr.shapes(mapping, meta_shapes)

    assert len(orig_shapes) == len(meta_shapes)
    from ckptkit.families.detect import _lookup

    assert all(c.holds(_lookup(orig_shapes, "")) for c in spec.detect)
    assert all(c.holds(_lookup(meta_shapes, "")) for c in spec.detect_diffusers)
