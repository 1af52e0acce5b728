"""LDM UNet / VAE configs derived from original-layout shapes (what a split of a bundle has).

The base passed is always the family spec's released config, as in a real split: the tiny
fixtures must come back as the same network, the released files as their released configs.
"""

import pytest
import torch

from ckptkit.convert import configs
from ckptkit.engine import expr
from ckptkit.convert.layouts import get_layout
from ckptkit.convert.models import diffusers_shapes, meta_model
from ckptkit.families import get_family
from ckptkit.fixtures.factory import FIXTURES, diffusers_state, original_state
from tests.conftest import manifest_shapes

TINY_CASES = [(f, c) for f in ("sd1", "sd2", "sdxl", "sdxl_refiner") for c in ("diffusion_model", "vae")]
TINY_IDS = [f"{f}-{c}" for f, c in TINY_CASES]

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


def shapes_of(state):
    return {n: tuple(t.shape) for n, t in state.items()}


def derive(fixture, component):
    """(component spec, original tensors, config derived from their shapes)."""
    spec = FIXTURES[fixture].spec.component(component)
    orig = original_state(fixture, component)
    return spec, orig, get_layout(spec.layout).config_from_original(shapes_of(orig), FIXTURES[fixture].config(component))


def loaded(class_name, config, state):
    """The model built from `config` holding exactly `state` (no random init to pay for)."""
    model = meta_model(class_name, config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def forward(model, config):
    """One fixed-input forward pass in float32."""
    gen = torch.Generator().manual_seed(0)
    if "cross_attention_dim" not in config:  # VAE
        return model(torch.randn(1, config["in_channels"], 16, 16, generator=gen)).sample
    extra = {}
    if config.get("addition_embed_type") == "text_time":
        # The add_embedding input is pooled text + time ids embedded at addition_time_embed_dim each:
        # only the total width must fit, so 2 time ids do for SDXL (6) and the refiner (5) alike.
        time_ids = 2
        text = config["projection_class_embeddings_input_dim"] - time_ids * config["addition_time_embed_dim"]
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(1, text, generator=gen),
                                      "time_ids": torch.randn(1, time_ids, generator=gen)}
    sample = torch.randn(1, config["in_channels"], 8, 8, generator=gen)
    context = torch.randn(1, 5, config["cross_attention_dim"], generator=gen)
    return model(sample, torch.tensor([500]), context, **extra).sample


@pytest.mark.parametrize("fixture,component", TINY_CASES, ids=TINY_IDS)
def test_tiny_derived_config_builds_the_same_network(fixture, component):
    spec, orig, derived = derive(fixture, component)
    true = FIXTURES[fixture].config(component)
    assert diffusers_shapes(spec.diffusers_class, derived) == diffusers_shapes(spec.diffusers_class, true)

    want_model = loaded(spec.diffusers_class, true, diffusers_state(fixture, component))
    got_model = loaded(spec.diffusers_class, derived, get_layout(spec.layout).to_diffusers(orig, derived))

    with torch.no_grad():
        want, got = forward(want_model, true), forward(got_model, derived)
    assert got.dtype == torch.float32 and torch.equal(got, want)


@pytest.mark.parametrize("fixture,component", TINY_CASES, ids=TINY_IDS)
def test_inverse_of_to_original_rebuilds_diffusers_state_bit_for_bit(fixture, component):
    spec, orig, derived = derive(fixture, component)
    dshapes = diffusers_shapes(spec.diffusers_class, derived)
    inverse = expr.invert(get_layout(spec.layout).to_original(dshapes, derived), dshapes)

    got = expr.apply(inverse, orig.__getitem__)

    want = diffusers_state(fixture, component)
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


@pytest.mark.parametrize("manifest,component,family,family_component", REAL_CASES,
                         ids=[f"{m}-{c}" for m, c, _, _ in REAL_CASES])
def test_real_manifest_gives_released_config(manifest, component, family, family_component):
    spec = get_family(family).component(family_component)
    layout = get_layout(spec.layout)
    want = manifest_shapes(manifest, component)

    resolved = configs.resolve(spec, want, "original")  # what the commands use: released where every size matches
    derived = resolved.values
    assert not resolved.undetermined and resolved.released_as is not None

    # The spec config is the released one: the derivation must not move any key it sets.
    assert {k: derived.get(k) for k in spec.config if derived.get(k) != spec.config[k]} == {}
    dshapes = diffusers_shapes(spec.diffusers_class, derived)
    assert expr.shapes(layout.to_original(dshapes, derived), dshapes) == want


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl_refiner"])
def test_released_unet_config_survives_its_own_original_shapes(family):
    # The refiner has no manifest: go through the original shapes its released config gives.
    spec = get_family(family).diffusion_model
    layout = get_layout(spec.layout)
    dshapes = diffusers_shapes(spec.diffusers_class, spec.config)
    original = expr.shapes(layout.to_original(dshapes, spec.config), dshapes)

    derived = configs.resolve(spec, original, "original").values

    assert {k: derived.get(k) for k in spec.config if derived.get(k) != spec.config[k]} == {}
