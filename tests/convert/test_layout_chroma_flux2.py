"""Chroma and FLUX.2 layouts against diffusers' own single-file converters
(convert_chroma_transformer_checkpoint_to_diffusers, convert_flux2_transformer_checkpoint_to_diffusers):

* tiny: the original-layout file our map makes from a fixture, run through diffusers' converter, is
  the fixture model's state dict bit for bit (Chroma's converter with its hard-coded width patched);
* full size, on the meta device, for every released config: the names and shapes our map writes are
  exactly what diffusers' converter consumes, and it gives back the released model's;
* the config read back from those shapes is the released config, and the file is detected as its
  family and variant (not FLUX.1's, whose detection markers Chroma's and FLUX.2's files also carry).
"""

from __future__ import annotations

import pytest
import torch
from diffusers.loaders import single_file_utils

from ckptkit.convert import configs
from ckptkit.convert.layouts import get_layout
from ckptkit.convert.models import diffusers_shapes, instantiate
from ckptkit.engine import expr
from ckptkit.errors import CkptError
from ckptkit.families import FAMILIES, get_family
from ckptkit.families.chroma import CHROMA_HD_CONFIG
from ckptkit.families.detect import detect
from ckptkit.families.flux2 import FLUX2_DEV_CONFIG, FLUX2_KLEIN_4B_CONFIG, FLUX2_KLEIN_9B_CONFIG
from ckptkit.fixtures import factory
from ckptkit.fixtures.factory import FIXTURES
from tests.conftest import manifest_shapes
from tests.convert.test_layout_flux_sana import assert_same_state, meta_tensors, shapes_of
from tests.families.test_detect import ShapesOnly

CONVERTERS = {"chroma": single_file_utils.convert_chroma_transformer_checkpoint_to_diffusers,
              "flux2": single_file_utils.convert_flux2_transformer_checkpoint_to_diffusers}
TINY = ("chroma", "flux2_dev", "flux2_klein")
# (family, variant, released config); the configs are the spec's own (families/chroma.py, flux2.py)
RELEASED = {
    "chroma1-hd": ("chroma", "chroma1-hd", CHROMA_HD_CONFIG),
    "flux2-dev": ("flux2", "dev", FLUX2_DEV_CONFIG),
    "flux2-klein-4b": ("flux2", "klein", FLUX2_KLEIN_4B_CONFIG),
    "flux2-klein-9b": ("flux2", "klein", FLUX2_KLEIN_9B_CONFIG),
}
# a few original names and shapes known independently of diffusers (ComfyUI's detection reads
# distilled_guidance_layer's and img_in's; stable-diffusion.cpp tells [dev] by single_blocks.47)
KNOWN = {
    "chroma1-hd": {"img_in.weight": (3072, 64), "txt_in.weight": (3072, 4096),
                   "distilled_guidance_layer.in_proj.weight": (5120, 64),
                   "distilled_guidance_layer.norms.4.scale": (5120,),
                   "single_blocks.37.linear1.weight": (3 * 3072 + 4 * 3072, 3072), "final_layer.linear.weight": (64, 3072)},
    "flux2-dev": {"img_in.weight": (6144, 128), "txt_in.weight": (6144, 15360), "guidance_in.in_layer.weight": (6144, 256),
                  "double_stream_modulation_img.lin.weight": (6 * 6144, 6144),
                  "single_blocks.47.linear1.weight": (3 * 6144 + 2 * 3 * 6144, 6144),
                  "final_layer.adaLN_modulation.1.weight": (2 * 6144, 6144)},
    "flux2-klein-4b": {"img_in.weight": (3072, 128), "txt_in.weight": (3072, 7680), "double_blocks.4.img_mlp.0.weight":
                       (2 * 3 * 3072, 3072)},
    "flux2-klein-9b": {"img_in.weight": (4096, 128), "txt_in.weight": (4096, 12288), "single_blocks.23.linear2.weight":
                       (4096, 4096 + 3 * 4096)},
}


def released_original(name):
    """(family spec, config, diffusers shapes, original shapes) of a released model at full size."""
    family, _, config = RELEASED[name]
    spec = get_family(family)
    dshapes = diffusers_shapes(spec.diffusion_model.diffusers_class, config)  # the meta model
    layout = get_layout(spec.diffusion_model.layout)
    return spec, config, dshapes, expr.shapes(layout.to_original(dshapes, config), dshapes)


def _tiny_width_split(monkeypatch, width):
    """Chroma's converter splits linear1 at its hard-coded 3072 / mlp 4.0: give its torch.split the
    tiny width instead (everything else runs as diffusers wrote it); returns the sizes it asked for."""
    asked = set()

    class TorchWithTinyWidth:
        def __getattr__(self, name):
            return getattr(torch, name)

        def split(self, tensor, sizes, dim=0):
            asked.add(tuple(sizes))
            return torch.split(tensor, [width] * 3 + [tensor.shape[dim] - 3 * width], dim)

    monkeypatch.setattr(single_file_utils, "torch", TorchWithTinyWidth())
    return asked


# ---- tiny: our original layout through diffusers' converter -------------------------------------

@pytest.mark.parametrize("fixture", TINY)
def test_tiny_original_through_the_diffusers_converter_is_the_model(fixture, monkeypatch):
    fx = FIXTURES[fixture]
    config = fx.config("diffusion_model")
    original = factory.original_state(fixture, "diffusion_model")
    want = factory.diffusers_state(fixture, "diffusion_model")
    convert = CONVERTERS[fx.family]
    if fx.family == "chroma":
        with pytest.raises(RuntimeError, match="split"):  # unpatched: the release's width only
            convert(dict(original))
        asked = _tiny_width_split(monkeypatch, config["num_attention_heads"] * config["attention_head_dim"])
        prefixed = {"model.diffusion_model." + k: v for k, v in original.items()}  # ComfyUI's form: stripped by it
        assert_same_state(convert(prefixed), want)
        assert asked == {(3072, 3072, 3072, 12288)}  # the only thing patched is the hard-coded width
    given = dict(original)
    assert_same_state(convert(given), want)
    assert not given  # it pops from its input: callers must pass a copy
    # ours agrees (bit for bit, both ways), and the model takes it
    layout = get_layout(fx.spec.diffusion_model.layout)
    assert_same_state(layout.to_diffusers(original, config), want)
    assert_same_state(expr.apply(layout.to_original(shapes_of(want), config), want.__getitem__), original)
    instantiate(fx.spec.diffusion_model.diffusers_class, config).load_state_dict(want, strict=True)


def test_tiny_flux2_guidance_and_swapped_final_modulation():
    dev = factory.original_state("flux2_dev", "diffusion_model")
    klein = factory.original_state("flux2_klein", "diffusion_model")
    assert set(dev) - set(klein) == {"guidance_in.in_layer.weight", "guidance_in.out_layer.weight"}
    assert not any(k.endswith(".bias") for k in dev)  # FLUX.2 has no biases
    shift, scale = dev["final_layer.adaLN_modulation.1.weight"].chunk(2)
    norm_out = factory.diffusers_state("flux2_dev", "diffusion_model")["norm_out.linear.weight"]
    assert torch.equal(norm_out, torch.cat([scale, shift]))  # diffusers: (scale, shift)


@pytest.mark.parametrize("fixture", TINY)
def test_tiny_config_read_back_from_the_original_shapes(fixture):
    fx = FIXTURES[fixture]
    config = fx.config("diffusion_model")
    layout = get_layout(fx.spec.diffusion_model.layout)
    shapes = shapes_of(factory.original_state(fixture, "diffusion_model"))
    assert layout.config_from_original(shapes, config) == config
    # what the weights cannot tell comes from the base config, never from the shapes
    other = {"patch_size": 1, "axes_dims_rope": [4, 12, 16] if fx.family == "chroma" else [2, 10, 10, 10]}
    assert layout.config_from_original(shapes, {**config, **other}) == {**config, **other}
    with pytest.raises(CkptError, match="axes_dims_rope"):
        layout.config_from_original(shapes, dict(config, axes_dims_rope=[16, 56, 56]))


def test_chroma_mlp_ratio_other_than_4_is_refused():
    shapes = shapes_of(factory.original_state("chroma", "diffusion_model"))
    config = FIXTURES["chroma"].config("diffusion_model")
    w = shapes["single_blocks.0.linear1.weight"]
    with pytest.raises(CkptError, match="MLP"):
        get_layout("chroma").config_from_original({**shapes, "single_blocks.0.linear1.weight": (w[0] - 8, w[1])}, config)


def test_flux2_mlp_ratio_is_read_from_the_shapes():
    base = FIXTURES["flux2_dev"].config("diffusion_model")
    config = dict(base, mlp_ratio=2.5)
    shapes = diffusers_shapes("Flux2Transformer2DModel", config)
    original = expr.shapes(get_layout("flux2").to_original(shapes, config), shapes)
    assert get_layout("flux2").config_from_original(original, base)["mlp_ratio"] == 2.5


# ---- full size, meta device: every released config ----------------------------------------------

@pytest.mark.parametrize("name", RELEASED)
def test_released_names_and_shapes_are_what_diffusers_converts(name):
    spec, config, dshapes, original = released_original(name)
    for key, shape in KNOWN[name].items():
        assert original[key] == shape, key
    theirs = CONVERTERS[spec.name](meta_tensors(original, torch.bfloat16))
    assert shapes_of(theirs) == dshapes
    ours = get_layout(spec.diffusion_model.layout).to_diffusers(meta_tensors(original, torch.bfloat16), config)
    assert shapes_of(ours) == dshapes


@pytest.mark.parametrize("name", RELEASED)
def test_released_config_from_the_original_shapes(name):
    spec, config, _, original = released_original(name)
    comp = spec.diffusion_model
    layout = get_layout(comp.layout)
    assert layout.config_from_original(original, config) == config
    resolved = configs.resolve(comp, original, "original")  # nothing given: sizes pick the release
    assert {k: resolved.values[k] for k in config} == config
    assert resolved.released_as is not None and not resolved.undetermined
    assert {resolved.sources[k] for k in layout.undetermined} == {configs.RELEASED}


@pytest.mark.parametrize("name", RELEASED)
def test_released_file_is_detected_as_its_family_not_flux1(name):
    family, variant, _ = RELEASED[name]
    spec, _, dshapes, original = released_original(name)
    for shapes, names in ((original, "original"), ({"model.diffusion_model." + k: s for k, s in original.items()},
                                                   "original"), (dshapes, "diffusers")):
        det = detect(ShapesOnly(shapes))
        assert (det.family, det.variant, det.names) == (family, variant, names)
        assert not det.unclaimed
    # FLUX.1's marker holds on these originals too: only the order of FAMILIES keeps them apart
    order = [f.name for f in FAMILIES]
    assert order.index(family) < order.index("flux")


@pytest.mark.parametrize("manifest", ["flux1_dev", "flux1_schnell"])
def test_flux1_is_neither_chroma_nor_flux2(manifest):
    original = manifest_shapes(manifest, "transformer")
    config = get_family("flux").diffusion_model.config
    dshapes = diffusers_shapes("FluxTransformer2DModel", config)
    for family in ("chroma", "flux2"):
        spec = get_family(family)
        assert not all(c.holds(original.get) for c in spec.detect)
        assert not all(c.holds(dshapes.get) for c in spec.detect_diffusers)
    assert detect(ShapesOnly(original)).family == "flux"
