"""`config_from_original` of the CLIP, T5 and MMDiT layouts: the diffusers/transformers config read
back from original-layout shapes (all a split has) builds the same network, gives the released
configs and manifests at full size, and drives the streaming (inverted) conversion bit for bit."""

from dataclasses import replace

import pytest
import torch

from ckptkit.convert import configs
from ckptkit.engine import expr
from ckptkit.convert.layouts import get_layout
from ckptkit.convert.models import diffusers_shapes, instantiate
from ckptkit.families import get_family
from ckptkit.families.common import clip_l, t5xxl
from ckptkit.families.sd3 import SD35_LARGE_CONFIG, SD35_MEDIUM_CONFIG
from ckptkit.fixtures import factory
from ckptkit.fixtures.factory import FIXTURES, Fixture
from tests.conftest import manifest_shapes

LAYOUTS = ("hf_clip", "open_clip", "hf_t5", "mmdit")

# MMDiT-X (SD3.5 medium: attn2 in the first blocks) has no fixture of its own; registered per test.
EXTRA_FIXTURES = {
    "sd35_medium_cfg": Fixture("sd35_medium_cfg", "sd3", "sd3.5-medium",
                               {"diffusion_model": {"qk_norm": "rms_norm", "dual_attention_layers": (0,)}}),
}


@pytest.fixture(autouse=True)
def extra_fixtures(monkeypatch):
    for name, fixture in EXTRA_FIXTURES.items():
        monkeypatch.setitem(FIXTURES, name, fixture)




def tiny_cases() -> list[tuple[str, str]]:
    """(fixture, component) for every tiny component of these layouts, once per distinct network:
    fixtures share text encoders (same class, config and seed, so the same weights)."""
    cases = {}
    for fx in [*FIXTURES.values(), *EXTRA_FIXTURES.values()]:
        for comp in (c for c in fx.components if c.layout in LAYOUTS):
            key = (comp.layout, comp.diffusers_class, comp.name, repr(sorted(fx.config(comp.name).items())))
            cases.setdefault(key, (fx.name, comp.name))
    return list(cases.values())


TINY_CASES = tiny_cases()
TINY_IDS = [f"{f}-{c}" for f, c in TINY_CASES]

SD3 = get_family("sd3")
SD3_MMDIT = SD3.diffusion_model
SD2_CLIP_H = get_family("sd2").component("clip_h")
REAL_CASES = {  # id: (manifest, component, spec (its config is the base), released config)
    "sdxl_base-clip_g": ("sdxl_base", "clip_g", get_family("sdxl").component("clip_g"), None),
    # SD2 files carry text_projection; the full manifest needs the WithProjection model (see
    # test_layout_clip_mmdit.py).
    "sd21-clip_h": ("sd21", "clip_h", replace(SD2_CLIP_H, diffusers_class="CLIPTextModelWithProjection"), None),
    "sd3_medium-diffusion_model": ("sd3_medium", "diffusion_model", SD3_MMDIT, None),
    "sd3_medium-clip_l": ("sd3_medium", "clip_l", SD3.component("clip_l"), None),
    "sd3_medium-clip_g": ("sd3_medium", "clip_g", SD3.component("clip_g"), None),
    "sd3_medium-t5xxl": ("sd3_medium", "t5xxl", SD3.component("t5xxl"), None),
    # The family spec's config is SD3-medium's: everything 3.5 differs in must come from the shapes.
    "sd35_large-diffusion_model": ("sd35_large", "diffusion_model", SD3_MMDIT, SD35_LARGE_CONFIG),
    "sd35_medium-diffusion_model": ("sd35_medium", "diffusion_model", SD3_MMDIT, SD35_MEDIUM_CONFIG),
    "clip_l-clip_l": ("clip_l", "clip_l", clip_l(""), None),
    "t5xxl-t5xxl": ("t5xxl", "t5xxl", t5xxl(""), None),
}


def shapes_of(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {n: tuple(t.shape) for n, t in state.items()}


def derive(fixture: str, component: str):
    """(component spec, layout, original-layout tensors, config derived from their shapes)."""
    spec = FIXTURES[fixture].spec.component(component)
    layout = get_layout(spec.layout)
    original = factory.original_state(fixture, component)
    return spec, layout, original, layout.config_from_original(shapes_of(original), FIXTURES[fixture].config(component))


def loadable(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our `text_model.` names as the installed model spells them (transformers >= 5.6 flattened
    CLIPTextModel; nn.Module.load_state_dict does not rename)."""
    names = set(model.state_dict())
    return {n if n in names else n.removeprefix("text_model."): t for n, t in tensors.items()}


def text_inputs(config: dict, gen: torch.Generator) -> dict:
    return {"input_ids": torch.randint(3, config["vocab_size"], (2, 12), generator=gen)}


def mmdit_inputs(config: dict, gen: torch.Generator) -> dict:
    return {"hidden_states": torch.randn(2, config["in_channels"], 8, 8, generator=gen),
            "encoder_hidden_states": torch.randn(2, 7, config["joint_attention_dim"], generator=gen),
            "pooled_projections": torch.randn(2, config["pooled_projection_dim"], generator=gen),
            "timestep": torch.tensor([10.0, 700.0])}


INPUTS = {"CLIPTextModel": text_inputs, "CLIPTextModelWithProjection": text_inputs,
          "T5EncoderModel": text_inputs, "UMT5EncoderModel": text_inputs, "SD3Transformer2DModel": mmdit_inputs}


@torch.no_grad()
def outputs(model: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, ...]:
    return tuple(t for t in model(**inputs).to_tuple() if isinstance(t, torch.Tensor))


@pytest.mark.parametrize("fixture,component", TINY_CASES, ids=TINY_IDS)
def test_derived_config_builds_the_same_network(fixture, component):
    spec, layout, original, derived = derive(fixture, component)
    model = instantiate(spec.diffusers_class, derived).eval()
    state = layout.to_diffusers(original, derived)
    if spec.identity_projection:  # SD3's CLIP-L: the bundle has none; conversion adds the identity (map_component)
        state["text_projection.weight"] = torch.eye(derived["hidden_size"])
    missing, unexpected = model.load_state_dict(loadable(model, state), strict=False)
    assert not unexpected and set(missing) <= getattr(layout, "tied", frozenset())

    inputs = INPUTS[spec.diffusers_class](FIXTURES[fixture].config(component), torch.Generator().manual_seed(0))
    got, want = outputs(model, inputs), outputs(factory.component_model(fixture, component), inputs)

    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert g.dtype == w.dtype == torch.float32 and torch.equal(g, w)


@pytest.mark.parametrize("fixture,component", TINY_CASES, ids=TINY_IDS)
def test_inverted_to_original_rebuilds_the_diffusers_state_bit_for_bit(fixture, component):
    spec, layout, original, derived = derive(fixture, component)
    dshapes = diffusers_shapes(spec.diffusers_class, derived)
    tied = getattr(layout, "tied", frozenset())
    mapping = layout.to_original(dshapes, derived)
    if spec.identity_projection:  # made (an identity), not read: see map_component
        tied = tied | {"text_projection.weight"}
        mapping.pop("text_projection.weight")

    back = expr.apply(expr.invert(mapping, dshapes, tied), original.__getitem__)

    want = factory.diffusers_state(fixture, component)
    assert set(back) == set(want) - tied
    for name, tensor in back.items():
        assert tensor.dtype == want[name].dtype and torch.equal(tensor, want[name]), name


@pytest.mark.parametrize("manifest,component,spec,released", REAL_CASES.values(), ids=REAL_CASES.keys())
def test_real_manifest_gives_released_config_and_same_names_and_shapes(manifest, component, spec, released):
    want = manifest_shapes(manifest, component)
    layout = get_layout(spec.layout)

    resolved = configs.resolve(spec, want, "original")  # what the commands use: released where every size matches
    derived = resolved.values
    assert not resolved.undetermined and resolved.released_as is not None

    released = released or spec.config
    assert {k: derived[k] for k in released} == released
    dshapes = diffusers_shapes(spec.diffusers_class, derived)
    mapped = layout.to_original(dshapes, derived)
    if spec.identity_projection:  # the identity SD3's CLIP-L gets in diffusers; the bundle has none
        assert "text_projection.weight" not in want
        mapped.pop("text_projection.weight")
    assert expr.shapes(mapped, dshapes) == want


def test_hf_clip_reads_flattened_transformers_names():
    original = factory.original_state("sd3", "clip_g")
    flat = {n.removeprefix("text_model."): s for n, s in shapes_of(original).items()}
    layout, base = get_layout("hf_clip"), FIXTURES["sd3"].config("clip_g")
    assert layout.config_from_original(flat, base) == layout.config_from_original(shapes_of(original), base)


def test_t5_reads_vocab_from_the_tied_copy_when_shared_is_absent():
    shapes = manifest_shapes("t5xxl", "t5xxl")
    renamed = {("encoder.embed_tokens.weight" if n == "shared.weight" else n): s for n, s in shapes.items()}
    layout, base = get_layout("hf_t5"), t5xxl("").config
    assert layout.config_from_original(renamed, base) == layout.config_from_original(shapes, base)


CLIP_CASES = {  # id: (class, config): every CLIP config of the tiny fixtures and the released families
    f"{fx.name}-{c.name}": (c.diffusers_class, fx.config(c.name))
    for fx in FIXTURES.values() for c in fx.components if c.diffusers_class.startswith("CLIPTextModel")
}
CLIP_CASES.update({f"released-{fam}-{c.name}": (cls, dict(c.config))
                   for fam in ("sd1", "sd2", "sdxl", "sd3") for c in get_family(fam).components
                   for cls in ("CLIPTextModel", "CLIPTextModelWithProjection")
                   if c.diffusers_class.startswith("CLIPTextModel")})


@pytest.mark.parametrize("class_name,config", CLIP_CASES.values(), ids=CLIP_CASES.keys())
def test_clip_shapes_without_transformers_equal_the_real_class(class_name, config):
    from ckptkit.convert.layouts.hf_text import clip_original_name, clip_state_shapes
    from ckptkit.convert.models import meta_model

    real = {clip_original_name(n): tuple(t.shape)
            for n, t in meta_model(class_name, config).state_dict().items()}
    ours = clip_state_shapes(config, class_name.endswith("WithProjection"))
    assert list(ours.items()) == list(real.items())  # the same names in the same order (the write order)
    assert list(diffusers_shapes(class_name, config)) == list(real)
