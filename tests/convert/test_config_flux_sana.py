"""Flux and Sana `config_from_original`: the diffusers config read back from original-layout shapes.

Tiny fixtures: the derived config (base = the family spec's released config, as the CLI uses it) builds a
model that computes exactly what the fixture model computes, and the streaming path (invert of
`to_original` at the derived config) gives back the fixture's diffusers tensors bit for bit.
Real manifests: the derived config reproduces the released file's names and shapes and the spec's config."""

import pytest
import torch

from ckptkit.convert import expr
from ckptkit.convert.layouts import get_layout
from ckptkit.convert.models import diffusers_shapes, instantiate
from ckptkit.errors import CkptError
from ckptkit.families import get_family
from ckptkit.fixtures import factory
from ckptkit.fixtures.factory import FIXTURES
from tests.conftest import manifest_shapes

TINY = ("flux_schnell", "flux_dev", "sana", "sana_sprint")
REAL = {  # manifest -> (family, what the released config of this file differs in from the spec's)
    "flux1_dev": ("flux", {}),
    "flux1_schnell": ("flux", {"guidance_embeds": False}),
    "sana_1600m": ("sana", {}),
}


def shapes_of(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def derive(fixture):
    """(layout, class name, derived config, original state dict) of a fixture's transformer."""
    comp = FIXTURES[fixture].spec.component("diffusion_model")
    original = factory.original_state(fixture, "diffusion_model")
    layout = get_layout(comp.layout)
    return layout, comp.diffusers_class, layout.config_from_original(shapes_of(original), comp.config), original


def flux_inputs(config, gen):
    n_img, n_txt = 4, 3
    inputs = dict(hidden_states=torch.randn(1, n_img, config["in_channels"], generator=gen),
                  encoder_hidden_states=torch.randn(1, n_txt, config["joint_attention_dim"], generator=gen),
                  pooled_projections=torch.randn(1, config["pooled_projection_dim"], generator=gen),
                  timestep=torch.tensor([0.7]),
                  img_ids=torch.tensor([[0.0, row, col] for row in range(2) for col in range(2)]),  # 2 x 2 image
                  txt_ids=torch.zeros(n_txt, 3))
    if config["guidance_embeds"]:
        inputs["guidance"] = torch.tensor([3.5])
    return inputs


def sana_inputs(config, gen):
    inputs = dict(hidden_states=torch.randn(1, config["in_channels"], 4, 4, generator=gen),
                  encoder_hidden_states=torch.randn(1, 5, config["caption_channels"], generator=gen),
                  timestep=torch.tensor([700.0]))
    if config.get("guidance_embeds"):
        inputs["guidance"] = torch.tensor([4.5])
    return inputs


INPUTS = {"flux": flux_inputs, "sana": sana_inputs}


@pytest.mark.parametrize("fixture", TINY)
def test_derived_config_computes_what_the_fixture_computes(fixture):
    layout, class_name, config, original = derive(fixture)
    model = instantiate(class_name, config).eval()
    model.load_state_dict(layout.to_diffusers(original, config), strict=True)
    want_model = factory.component_model(fixture, "diffusion_model")
    inputs = INPUTS[FIXTURES[fixture].family](config, torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = model(**inputs).sample, want_model(**inputs).sample
    assert got.dtype == torch.float32 and torch.equal(got, want)


@pytest.mark.parametrize("fixture", TINY)
def test_streaming_inverse_at_derived_config_is_bit_exact(fixture):
    layout, class_name, config, original = derive(fixture)
    dshapes = diffusers_shapes(class_name, config)
    inverse = expr.invert(layout.to_original(dshapes, config), dshapes)
    got = expr.apply(inverse, original.__getitem__)
    want = factory.diffusers_state(fixture, "diffusion_model")
    assert got.keys() == want.keys()
    assert not [k for k in want if not same_bits(got[k], want[k])]


@pytest.mark.parametrize("manifest", REAL)
def test_released_file_gives_released_config(manifest):
    family, differs = REAL[manifest]
    comp = get_family(family).component("diffusion_model")
    layout = get_layout(comp.layout)
    original = manifest_shapes(manifest, "transformer")
    config = layout.config_from_original(original, comp.config)
    assert {k: config[k] for k in comp.config} == {**comp.config, **differs}
    dshapes = diffusers_shapes(comp.diffusers_class, config)  # builds the meta model
    assert expr.shapes(layout.to_original(dshapes, config), dshapes) == original


def test_flux_rotary_split_must_fit_the_head_dim():
    layout = get_layout("flux")
    original = manifest_shapes("flux1_dev", "transformer")
    base = get_family("flux").component("diffusion_model").config
    with pytest.raises(CkptError, match="axes_dims_rope"):
        layout.config_from_original(original, dict(base, axes_dims_rope=[8, 28, 28]))


@pytest.mark.parametrize("width, heads", [(1152, 16), (2240, 20), (224, 2)])
def test_sana_cross_attention_heads(width, heads):
    base = get_family("sana").component("diffusion_model").config
    released = manifest_shapes("sana_1600m", "transformer")
    shapes = {k: tuple(width if d == 2240 else d for d in s) for k, s in released.items()  # one block at `width`
              if k.startswith(("x_embedder.", "final_layer.", "y_embedder.", "blocks.0.")) or k == "pos_embed"}
    shapes["blocks.0.mlp.inverted_conv.conv.weight"] = (5 * width, width, 1, 1)
    config = get_layout("sana").config_from_original(shapes, base)
    assert (config["num_cross_attention_heads"], config["cross_attention_head_dim"]) == (heads, width // heads)
    assert (config["num_attention_heads"], config["attention_head_dim"]) == (width // 32, 32)
    assert config["mlp_ratio"] == 2.5
