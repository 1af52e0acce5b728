"""Flux and Sana layouts: bit-exact round trips on tiny models, agreement with diffusers' own converters
(their output from our original-layout tensors is the diffusers state dict we started from), and
full-size names and shapes on the meta device against the manifests of the released files."""

import json

import accelerate
import pytest
import torch
from diffusers import FluxTransformer2DModel, SanaTransformer2DModel
from diffusers.loaders import single_file_utils

from ckptkit.engine import expr
from ckptkit.convert.layouts import get_layout
from ckptkit.errors import CkptError
from ckptkit.families import get_family
from ckptkit.fixtures.configs import TINY_FLUX, TINY_SANA
from tests.conftest import manifest_shapes

FLUX = {"schnell": TINY_FLUX, "dev": dict(TINY_FLUX, guidance_embeds=True)}
SANA = {
    "sana": TINY_SANA,
    "sana-1.5": dict(TINY_SANA, qk_norm="rms_norm_across_heads"),
    "sprint": dict(TINY_SANA, qk_norm="rms_norm_across_heads", guidance_embeds=True),
}
SANA_EXTRAS = ("norm_q", "norm_k", "guidance_embedder")  # what diffusers' Sana converter ignores


def tiny(cls, config):
    """A tiny model whose every tensor is random, so that a misrouted or swapped tensor cannot match
    (default init leaves zero biases and unit norm scales, all alike)."""
    torch.manual_seed(0)
    model = cls(**config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return model


def shapes_of(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def assert_same_state(got, want):
    assert got.keys() == want.keys()
    differ = [k for k in want if not same_bits(got[k], want[k])]
    assert not differ, differ


def round_trip(kind, model, config):
    layout = get_layout(kind)
    sd = model.state_dict()
    mapping = layout.to_original(shapes_of(sd), config)
    json.dumps({k: e.to_json() for k, e in mapping.items()})  # dry-run output is serialisable
    orig = expr.apply(mapping, sd.__getitem__)
    names = set(orig)
    back = layout.to_diffusers(orig, config)
    assert set(orig) == names  # our to_diffusers leaves its input alone
    assert_same_state(back, sd)
    model.load_state_dict(back, strict=True)
    return sd, orig


def meta_model(cls, config):
    with accelerate.init_empty_weights():
        return cls(**config)


def meta_tensors(shapes, dtype):
    return {k: torch.empty(s, dtype=dtype, device="meta") for k, s in shapes.items()}


# ---- Flux -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", FLUX)
def test_flux_round_trip(variant):
    sd, orig = round_trip("flux", tiny(FluxTransformer2DModel, FLUX[variant]), FLUX[variant])
    assert ("guidance_in.in_layer.weight" in orig) == (variant == "dev")
    assert torch.equal(orig["single_blocks.1.linear2.weight"], sd["single_transformer_blocks.1.proj_out.weight"])


@pytest.mark.parametrize("variant", FLUX)
def test_flux_matches_diffusers_converter(variant, monkeypatch):
    config = FLUX[variant]
    sd, orig = round_trip("flux", tiny(FluxTransformer2DModel, config), config)
    convert = single_file_utils.convert_flux_transformer_checkpoint_to_diffusers

    # Unpatched, diffusers cannot split a tiny `linear1`: it assumes width 3072.
    with pytest.raises(RuntimeError, match="split"):
        convert(dict(orig))

    # So give its torch.split the tiny width instead; everything else runs as diffusers wrote it.
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    asked = set()

    class TorchWithTinyWidth:
        def __getattr__(self, name):
            return getattr(torch, name)

        def split(self, tensor, sizes, dim=0):
            asked.add(tuple(sizes))
            return torch.split(tensor, [inner] * 3 + [tensor.shape[dim] - 3 * inner], dim)

    monkeypatch.setattr(single_file_utils, "torch", TorchWithTinyWidth())
    given = dict(orig)
    assert_same_state(convert(given), sd)
    assert asked == {(3072, 3072, 3072, 12288)}  # the only thing patched is the hard-coded width
    assert not given  # it pops from its input: callers must pass a copy


@pytest.mark.parametrize("manifest, guidance", [("flux1_dev", True), ("flux1_schnell", False)])
def test_flux_real_config_names_and_shapes(manifest, guidance):
    config = dict(get_family("flux").component("diffusion_model").config, guidance_embeds=guidance)
    layout = get_layout("flux")
    diffusers_shapes = shapes_of(meta_model(FluxTransformer2DModel, config).state_dict())
    original_shapes = manifest_shapes(manifest, "transformer")
    assert expr.shapes(layout.to_original(diffusers_shapes, config), diffusers_shapes) == original_shapes

    # The way back at full size, and diffusers' converter (which works at width 3072) agrees on meta tensors.
    ours = layout.to_diffusers(meta_tensors(original_shapes, torch.bfloat16), config)
    theirs = single_file_utils.convert_flux_transformer_checkpoint_to_diffusers(
        meta_tensors(original_shapes, torch.bfloat16))
    assert shapes_of(ours) == shapes_of(theirs) == diffusers_shapes


def test_flux_unknown_tensor_is_an_error():
    config = FLUX["schnell"]
    sd = tiny(FluxTransformer2DModel, config).state_dict()
    with pytest.raises(CkptError, match="not_a_flux_tensor"):
        get_layout("flux").to_original({**shapes_of(sd), "not_a_flux_tensor": (1,)}, config)
    orig = expr.apply(get_layout("flux").to_original(shapes_of(sd), config), sd.__getitem__)
    with pytest.raises(CkptError, match="double_blocks.0.img_attn.lora"):
        get_layout("flux").to_diffusers({**orig, "double_blocks.0.img_attn.lora": torch.zeros(1)}, config)


# ---- Sana -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", SANA)
def test_sana_round_trip(variant):
    config = SANA[variant]
    sd, orig = round_trip("sana", tiny(SanaTransformer2DModel, config), config)
    assert ("blocks.0.attn.q_norm.weight" in orig) == (variant != "sana")
    assert ("cfg_embedder.mlp.0.weight" in orig) == (variant == "sprint")
    width = config["num_attention_heads"] * config["attention_head_dim"]
    assert orig["pos_embed"].shape == (1, config["sample_size"] ** 2, width)
    assert orig["y_embedder.y_embedding"].shape == (300, config["caption_channels"])
    for name in ("pos_embed", "y_embedder.y_embedding"):  # diffusers has no bytes for these buffers
        assert orig[name].dtype == torch.float32 and not orig[name].any()


@pytest.mark.parametrize("variant", SANA)
def test_sana_matches_diffusers_converter_where_it_can(variant):
    config = SANA[variant]
    sd, orig = round_trip("sana", tiny(SanaTransformer2DModel, config), config)
    given = dict(orig)
    theirs = single_file_utils.convert_sana_transformer_to_diffusers(given)
    if variant == "sprint":  # diffusers always writes flow Sana's time embedding names
        theirs = {k.replace(".emb.timestep_embedder.", ".timestep_embedder."): v for k, v in theirs.items()}
    ignored = set(sd) - set(theirs)
    assert all(any(x in k for x in SANA_EXTRAS) for k in ignored)  # only the gap our to_diffusers fills
    assert bool(ignored) == (variant != "sana")
    assert_same_state(theirs, {k: sd[k] for k in theirs})
    assert all(k.startswith(("cfg_embedder.", "blocks.")) for k in given)  # it pops what it converts


def test_sana_to_diffusers_tolerates_real_file_variations():
    config = SANA["sprint"]
    sd, orig = round_trip("sana", tiny(SanaTransformer2DModel, config), config)
    layout = get_layout("sana")
    with_logvar = {**orig, "logvar_linear.weight": torch.zeros(1, 16), "logvar_linear.bias": torch.zeros(1)}
    assert_same_state(layout.to_diffusers(with_logvar, config), sd)  # training-only head dropped
    stripped = {k: v for k, v in orig.items() if k not in ("pos_embed", "y_embedder.y_embedding")}
    assert_same_state(layout.to_diffusers(stripped, config), sd)
    with pytest.raises(CkptError, match="blocks.0.attn.lora"):
        layout.to_diffusers({**orig, "blocks.0.attn.lora": torch.zeros(1)}, config)


def test_sana_real_config_names_and_shapes():
    config = get_family("sana").component("diffusion_model").config
    layout = get_layout("sana")
    diffusers_shapes = shapes_of(meta_model(SanaTransformer2DModel, config).state_dict())
    original_shapes = manifest_shapes("sana_1600m", "transformer")
    assert expr.shapes(layout.to_original(diffusers_shapes, config), diffusers_shapes) == original_shapes
    back = layout.to_diffusers(meta_tensors(original_shapes, torch.float32), config)
    assert shapes_of(back) == diffusers_shapes
