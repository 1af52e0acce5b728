"""Flux and Sana `config_from_original`: the diffusers config read back from original-layout shapes.

Tiny fixtures: the derived config (base = the fixture's own config, which its files ship: head widths and
the rotary split are not in the shapes) builds a model that computes exactly what the fixture model computes, and the streaming path (invert of
`to_original` at the derived config) gives back the fixture's diffusers tensors bit for bit.
Real manifests: the resolved config (convert/configs.py) reproduces the released file's names and shapes and
the spec's config, the values the shapes cannot decide marked as the released ones; another size refuses
them with the --config hint, and takes them from a given config."""

import pytest
import torch

from ckptkit.convert import configs
from ckptkit.engine import expr
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
    base = FIXTURES[fixture].config("diffusion_model")
    return layout, comp.diffusers_class, layout.config_from_original(shapes_of(original), base), original


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
    resolved = configs.resolve(comp, original, "original")
    config = resolved.values
    assert {k: config[k] for k in comp.config} == {**comp.config, **differs}
    assert resolved.released_as is not None and not resolved.undetermined
    assert {resolved.sources[k] for k in layout.undetermined} == {configs.RELEASED}
    dshapes = diffusers_shapes(comp.diffusers_class, config)  # builds the meta model
    assert expr.shapes(layout.to_original(dshapes, config), dshapes) == original


def test_flux_rotary_split_must_fit_the_head_dim():
    layout = get_layout("flux")
    original = manifest_shapes("flux1_dev", "transformer")
    base = get_family("flux").component("diffusion_model").config
    with pytest.raises(CkptError, match="axes_dims_rope"):
        layout.config_from_original(original, dict(base, axes_dims_rope=[8, 28, 28]))


def sana_shapes(width: int, depth: int) -> dict:
    """Sana's real names and shapes (the 1600M's manifest) at another width and depth."""
    released = manifest_shapes("sana_1600m", "transformer")
    shapes = {}
    for k, s in released.items():
        if k.startswith("blocks.") and not k.startswith("blocks.0."):
            continue
        s = tuple(width if d == 2240 else 5 * width if d == 5 * 2240 else d for d in s)
        if k.startswith("blocks.0."):
            for i in range(depth):
                shapes[f"blocks.{i}." + k[len("blocks.0."):]] = s
        else:
            shapes[k] = s
    return shapes


@pytest.mark.parametrize("width, depth, heads, cross", [(1152, 28, 36, 16), (2240, 20, 70, 20), (2240, 60, 70, 20)])
def test_sana_released_sizes_take_their_released_heads(width, depth, heads, cross):
    """600M / Sprint 0.6B, 1600M / 1.5 / Sprint 1.6B and 1.5 4.8B: head widths from their own released config."""
    comp = get_family("sana").component("diffusion_model")
    resolved = configs.resolve(comp, sana_shapes(width, depth), "original")
    config = resolved.values
    assert (config["num_attention_heads"], config["attention_head_dim"]) == (heads, 32)
    assert (config["num_cross_attention_heads"], config["cross_attention_head_dim"]) == (cross, width // cross)
    assert config["mlp_ratio"] == 2.5 and config["num_layers"] == depth
    assert resolved.sources["cross_attention_head_dim"] == configs.RELEASED


def test_sana_of_another_size_needs_its_heads_given():
    comp = get_family("sana").component("diffusion_model")
    shapes = sana_shapes(224, 2)
    with pytest.raises(configs.ConfigUndetermined, match=r"attention_head_dim is not determined.*--config"):
        configs.resolve(comp, shapes, "original")
    given = {"attention_head_dim": 16, "cross_attention_head_dim": 56}
    resolved = configs.resolve(comp, shapes, "original", given=given, given_from="--config my.json")
    config = resolved.values
    assert (config["num_attention_heads"], config["num_cross_attention_heads"]) == (14, 4)
    assert resolved.sources["attention_head_dim"] == "--config my.json"
    assert resolved.sources["num_layers"] == configs.WEIGHTS
    # not strict (names and shapes only): the released values stand in, marked undetermined
    loose = configs.resolve(comp, sana_shapes(2240, 2), "original", strict=False)
    assert set(loose.undetermined) == {"attention_head_dim", "cross_attention_head_dim"}
