"""Z-Image and Lumina 2 layouts (ComfyUI's NextDiT names, shared by both): bit-exact round trips on
tiny models, agreement with diffusers' own single-file converters (their output from our
original-layout tensors is the diffusers state dict we started from), full-size names and shapes on
the meta device, and the config rules (released configs read back from the original shapes)."""

import pytest
import torch
from diffusers.loaders import single_file_utils

from ckptkit.convert import configs
from ckptkit.convert.layouts import get_layout
from ckptkit.convert.layouts.lumina2 import ffn_pair, ffn_width
from ckptkit.convert.models import diffusers_shapes, random_model
from ckptkit.engine import expr
from ckptkit.errors import CkptError
from ckptkit.families import get_family
from ckptkit.families.detect import detect
from ckptkit.fixtures.configs import TINY_LUMINA2, TINY_Z_IMAGE
from tests.convert.test_layout_flux_sana import assert_same_state, meta_tensors, shapes_of
from tests.families.test_detect import ShapesOnly

CLASSES = {"z_image": "ZImageTransformer2DModel", "lumina2": "Lumina2Transformer2DModel"}
TINY = {"z_image": TINY_Z_IMAGE, "lumina2": TINY_LUMINA2}
CONVERTERS = {"z_image": "convert_z_image_transformer_checkpoint_to_diffusers", "lumina2": "convert_lumina2_to_diffusers"}
PREFIX = "model.diffusion_model."


def tiny(kind):
    """A tiny model whose every tensor is random (pad tokens and norm scales included), so that a
    misrouted tensor cannot match."""
    model = random_model(CLASSES[kind], TINY[kind], 0)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return model


def round_trip(kind):
    layout, config = get_layout(kind), TINY[kind]
    sd = tiny(kind).state_dict()
    orig = expr.apply(layout.to_original(shapes_of(sd), config), sd.__getitem__)
    back = layout.to_diffusers(orig, config)
    assert_same_state(back, sd)
    # a real file's unused norm_final.weight is accepted and dropped on the way in
    assert_same_state(layout.to_diffusers({**orig, "norm_final.weight": torch.ones(config.get("dim", 64))}, config), sd)
    return sd, orig


def full_shapes(kind):
    spec = get_family(kind).diffusion_model
    dshapes = diffusers_shapes(spec.diffusers_class, spec.config)
    return spec, dshapes, expr.shapes(get_layout(kind).to_original(dshapes, spec.config), dshapes)


# ---- tiny: round trips and diffusers' converters ----------------------------------------------------

@pytest.mark.parametrize("kind", ["z_image", "lumina2"])
def test_round_trip_and_names(kind):
    sd, orig = round_trip(kind)
    assert "layers.1.attention.qkv.weight" in orig and "context_refiner.0.attention.qkv.weight" in orig
    assert not any(".to_q." in n or ".attn." in n for n in orig)
    if kind == "z_image":
        assert torch.equal(orig["x_pad_token"], sd["x_pad_token"])
        assert torch.equal(orig["x_embedder.weight"], sd["all_x_embedder.2-1.weight"])
        assert torch.equal(orig["layers.0.attention.qkv.weight"], torch.cat(
            [sd[f"layers.0.attention.to_{x}.weight"] for x in "qkv"]))
    else:  # grouped-query attention: q 64 rows, k = v = 2 kv heads x 16
        qkv = orig["layers.0.attention.qkv.weight"]
        assert qkv.shape == (64 + 2 * 32, 64)
        assert torch.equal(qkv[64:96], sd["layers.0.attn.to_k.weight"])
        assert torch.equal(orig["context_refiner.0.attention_norm1.weight"], sd["context_refiner.0.norm1.weight"])
        assert torch.equal(orig["layers.0.attention_norm1.weight"], sd["layers.0.norm1.norm.weight"])


@pytest.mark.parametrize("prefixed", [False, True])
def test_z_image_matches_diffusers_converter(prefixed):
    """Unpatched: the tiny release has as many kv heads as heads, so the converter's equal qkv split fits."""
    sd, orig = round_trip("z_image")
    given = {(PREFIX if prefixed else "") + k: v for k, v in {**orig, "norm_final.weight": torch.ones(64)}.items()}
    convert = getattr(single_file_utils, CONVERTERS["z_image"])
    assert_same_state(convert(given), sd)
    assert not given  # it pops from its input: callers must pass a copy


def test_lumina2_matches_diffusers_converter(monkeypatch):
    sd, orig = round_trip("lumina2")
    convert = getattr(single_file_utils, CONVERTERS["lumina2"])

    # Unpatched, diffusers cannot split a tiny qkv: it assumes q 2304 and k = v 768 rows.
    with pytest.raises(RuntimeError, match="split"):
        convert(dict(orig))

    # So give its torch.split the tiny widths instead; everything else runs as diffusers wrote it.
    asked = set()

    class TorchWithTinyWidths:
        def __getattr__(self, name):
            return getattr(torch, name)

        def split(self, tensor, sizes, dim=0):
            asked.add(tuple(sizes))
            return torch.split(tensor, [64, 32, 32], dim)

    monkeypatch.setattr(single_file_utils, "torch", TorchWithTinyWidths())
    given = {**orig, "norm_final.weight": torch.ones(64)}
    assert_same_state(convert(given), sd)
    assert asked == {(2304, 768, 768)}  # the only thing patched is the hard-coded widths
    assert not given


# ---- full size, meta device ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["z_image", "lumina2"])
def test_full_size_names_and_shapes_against_diffusers_converter(kind):
    """At the released sizes diffusers' converter takes our original names (every one consumed) to exactly
    the model's names and shapes, and so does our way back."""
    spec, dshapes, oshapes = full_shapes(kind)
    given = meta_tensors(oshapes, torch.bfloat16)
    theirs = getattr(single_file_utils, CONVERTERS[kind])(given)
    assert not given
    assert shapes_of(theirs) == dshapes
    assert shapes_of(get_layout(kind).to_diffusers(meta_tensors(oshapes, torch.bfloat16), spec.config)) == dshapes
    # the keys ComfyUI, ComfyUI-GGUF and stable-diffusion.cpp detect the NextDiT layout by
    assert {"cap_embedder.1.weight", "cap_embedder.0.weight", "context_refiner.0.attention.qkv.weight",
            "noise_refiner.0.attention.k_norm.weight"} <= set(oshapes)
    if kind == "z_image":
        assert oshapes["cap_embedder.1.weight"] == (3840, 2560) and oshapes["x_pad_token"] == (1, 3840)
        assert oshapes["layers.29.feed_forward.w1.weight"] == (10240, 3840)
        assert oshapes["layers.0.adaLN_modulation.0.weight"] == (15360, 256)
    else:
        assert oshapes["cap_embedder.1.weight"] == (2304, 2304)
        assert oshapes["layers.25.attention.qkv.weight"] == (2304 + 2 * 768, 2304)
        assert oshapes["layers.0.feed_forward.w1.weight"] == (9216, 2304)
        assert oshapes["layers.0.adaLN_modulation.1.weight"] == (4 * 2304, 1024)


@pytest.mark.parametrize("kind", ["z_image", "lumina2"])
def test_full_size_detected_in_both_namings_and_prefixes(kind):
    _, dshapes, oshapes = full_shapes(kind)
    for shapes, names in ((oshapes, "original"), ({PREFIX + k: v for k, v in oshapes.items()}, "original"),
                          (dshapes, "diffusers"), ({"transformer/" + k: v for k, v in dshapes.items()}, "diffusers")):
        det = detect(ShapesOnly(shapes))
        assert (det.family, det.names) == (kind, names)
        assert not det.unclaimed and det.confidence == 1.0


# ---- config rules -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["z_image", "lumina2"])
def test_config_from_original_reproduces_the_released_config(kind):
    spec, _, oshapes = full_shapes(kind)
    layout = get_layout(kind)
    assert layout.config_from_original(oshapes, spec.config) == spec.config
    # with nothing given, the shapes match the released config and it fills in what they cannot tell
    resolved = configs.resolve(spec, oshapes, "original")
    assert resolved.values == spec.config and resolved.released_as == "config"
    assert {k for k, s in resolved.sources.items() if s == configs.WEIGHTS} >= set(layout.shape_keys)
    assert {k for k, s in resolved.sources.items() if s == configs.RELEASED} == set(layout.undetermined)


@pytest.mark.parametrize("kind", ["z_image", "lumina2"])
def test_config_from_original_reproduces_the_tiny_config(kind):
    spec, layout, config = get_family(kind).diffusion_model, get_layout(kind), TINY[kind]
    dshapes = diffusers_shapes(spec.diffusers_class, config)
    oshapes = expr.shapes(layout.to_original(dshapes, config), dshapes)
    assert layout.config_from_original(oshapes, config) == config
    # the shapes decide the rest: with the released config as base but for the undetermined values,
    # the tiny config comes back
    base = {**spec.config, **{k: config[k] for k in layout.undetermined}}
    assert layout.config_from_original(oshapes, base) == config
    # not a released size: what the weights cannot tell must be given
    with pytest.raises(configs.ConfigUndetermined):
        configs.resolve(spec, oshapes, "original")
    stand_in = configs.resolve(spec, oshapes, "original", strict=False).values
    assert diffusers_shapes(spec.diffusers_class, stand_in) == dshapes


def test_z_image_refuses_grouped_query_attention():
    """The original layout can say kv heads < heads (qkv rows); diffusers' class cannot hold it."""
    spec, _, oshapes = full_shapes("z_image")
    gqa = dict(oshapes)
    for name in [n for n in oshapes if n.endswith("attention.qkv.weight")]:
        gqa[name] = (3840 + 2 * 10 * 128, 3840)
    with pytest.raises(CkptError, match="10 key/value heads for 30 query heads"):
        get_layout("z_image").config_from_original(gqa, spec.config)


def test_lumina2_gqa_split_follows_the_shapes():
    """Our split takes q = width rows and k = v = the rest halved, whatever the kv heads."""
    layout = get_layout("lumina2")
    for heads, kv in ((4, 1), (4, 2), (4, 4)):
        config = dict(TINY_LUMINA2, num_attention_heads=heads, num_kv_heads=kv)
        dshapes = diffusers_shapes("Lumina2Transformer2DModel", config)
        oshapes = expr.shapes(layout.to_original(dshapes, config), dshapes)
        assert oshapes["layers.0.attention.qkv.weight"] == (64 + 2 * kv * 16, 64)
        assert expr.shapes(layout.to_diffusers_map(oshapes, config), oshapes) == dshapes
        assert layout.config_from_original(oshapes, config)["num_kv_heads"] == kv


def test_lumina2_ffn_pair():
    release = get_family("lumina2").diffusion_model.config
    assert ffn_pair(2304, 9216, release) == (256, None)  # the release's own pair
    assert ffn_pair(64, 256, TINY_LUMINA2) == (256, None)
    for dim, ffn in ((64, 128), (64, 384), (96, 200), (2304, 6144), (64, 257), (3840, 10240)):
        k, m = ffn_pair(dim, ffn, release)
        assert ffn_width(dim, k, m) == ffn, (dim, ffn, k, m)
    # and a model built from a derived pair has the weights' FFN width
    config = dict(TINY_LUMINA2, multiple_of=16, ffn_dim_multiplier=1.5)  # round_up(int(1.5 x 256), 16) = 384
    dshapes = diffusers_shapes("Lumina2Transformer2DModel", config)
    oshapes = expr.shapes(get_layout("lumina2").to_original(dshapes, config), dshapes)
    derived = get_layout("lumina2").config_from_original(oshapes, TINY_LUMINA2)
    assert diffusers_shapes("Lumina2Transformer2DModel", derived) == dshapes


@pytest.mark.parametrize("kind", ["z_image", "lumina2"])
def test_unknown_tensor_is_an_error(kind):
    sd = tiny(kind).state_dict()
    layout = get_layout(kind)
    with pytest.raises(CkptError, match="not_a_nextdit_tensor"):
        layout.to_original({**shapes_of(sd), "not_a_nextdit_tensor": (1,)}, TINY[kind])
    orig = expr.shapes(layout.to_original(shapes_of(sd), TINY[kind]), shapes_of(sd))
    with pytest.raises(CkptError, match="not_a_nextdit_tensor"):
        layout.to_diffusers_map({**orig, "not_a_nextdit_tensor": (1,)}, TINY[kind])


def test_families_are_told_apart_by_structure_not_width():
    """A Lumina 2 at Z-Image's width is Lumina 2, and a Z-Image at Lumina 2's is Z-Image."""
    for kind, other in (("z_image", dict(TINY_Z_IMAGE, dim=2304, n_heads=24, axes_dims=[32, 32, 32], cap_feat_dim=2304)),
                        ("lumina2", dict(TINY_LUMINA2, hidden_size=3840, num_attention_heads=30, num_kv_heads=30,
                                         axes_dim_rope=[32, 48, 48], cap_feat_dim=2560))):
        dshapes = diffusers_shapes(CLASSES[kind], other)
        oshapes = expr.shapes(get_layout(kind).to_original(dshapes, other), dshapes)
        assert detect(ShapesOnly(oshapes)).family == kind
        assert detect(ShapesOnly(dshapes)).family == kind
