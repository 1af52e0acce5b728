"""The LTX-2 transformer's layout map against diffusers' own converter (single_file_utils, plus the two
2.3 renames of scripts/convert_ltx2_to_diffusers.py), both ways, bit-exact; the text connectors kept in
original names and listed (not silently lost) on the way to diffusers; the config read back from the
shapes (2.3's flags and gate-counted heads), the head split never guessed; detection exclusive of
LTX-Video; the manifests of the released 2.0 and 2.3 transformers."""

from __future__ import annotations

import json

import pytest
import torch

from ckptkit.convert.layouts import get_layout
from ckptkit.engine import expr
from ckptkit.families.manifests import MANIFESTS
from ckptkit.fixtures.configs import TINY_LTX2
from ckptkit.fixtures.factory import build_model

TINY_LTX2_3 = dict(TINY_LTX2, gated_attn=True, cross_attn_mod=True, audio_gated_attn=True, audio_cross_attn_mod=True,
                   use_prompt_embeddings=False, perturbed_attn=True)
# huggingface/diffusers@58eb52c0 scripts/convert_ltx2_to_diffusers.py LTX_2_3_TRANSFORMER_KEYS_RENAME_DICT: the
# 2.0 table (= single_file_utils.convert_ltx2_transformer_to_diffusers, which lacks these two) plus
RENAMES_2_3 = {"audio_prompt_adaln_single": "audio_prompt_adaln", "prompt_adaln_single": "prompt_adaln"}


def _state(config):
    model = build_model("LTX2VideoTransformer3DModel", config, seed=7)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _theirs(original: dict, prefix: str) -> dict:
    from diffusers.loaders.single_file_utils import convert_ltx2_transformer_to_diffusers

    out = convert_ltx2_transformer_to_diffusers({prefix + k: v for k, v in original.items()})
    renamed = {}
    for k, v in out.items():
        for o, d in RENAMES_2_3.items():
            k = k.replace(o, d)
        renamed[k] = v
    return renamed


@pytest.mark.parametrize("config", [TINY_LTX2, TINY_LTX2_3], ids=["2.0", "2.3"])
@pytest.mark.parametrize("prefix", ["model.diffusion_model.", ""], ids=["prefixed", "bare"])
def test_ours_and_diffusers_converter_agree(config, prefix):
    layout = get_layout("ltx2")
    state = _state(config)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    original = expr.apply(layout.to_original(shapes, config), state.__getitem__)
    assert original["patchify_proj.weight"].shape == (64, 16) and original["audio_patchify_proj.weight"].shape == (32, 16)
    assert "av_ca_a2v_gate_adaln_single.linear.weight" in original
    assert "transformer_blocks.1.scale_shift_table_a2v_ca_audio" in original
    assert "transformer_blocks.1.video_to_audio_attn.k_norm.weight" in original
    assert not any(k.startswith(("time_embed", "audio_time_embed", "proj_in", "av_cross_attn")) or "norm_q" in k
                   for k in original)
    if config is TINY_LTX2_3:
        assert "prompt_adaln_single.linear.weight" in original and "audio_prompt_adaln_single.linear.bias" in original
    theirs = _theirs(original, prefix)
    assert set(theirs) == set(state) and all(torch.equal(theirs[k], state[k]) for k in state)
    back = layout.to_diffusers(original, config)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    derived = layout.config_from_original({k: tuple(v.shape) for k, v in original.items()}, config)
    for key in layout.shape_keys:
        if key in derived and key in config:
            assert derived[key] == config[key], key
    flags = ("gated_attn", "audio_gated_attn", "cross_attn_mod", "audio_cross_attn_mod")
    assert all(derived[f] is (config is TINY_LTX2_3) for f in flags)
    assert derived["use_prompt_embeddings"] is (config is TINY_LTX2)


def _original_shapes(config):
    state = _state(config)
    dshapes = {k: tuple(v.shape) for k, v in state.items()}
    return expr.shapes(get_layout("ltx2").to_original(dshapes, config), dshapes)


def test_head_split_from_gates_else_never_guessed():
    from ckptkit.convert.configs import ConfigUndetermined, resolve
    from ckptkit.families import get_family

    comp = get_family("ltx2").diffusion_model
    with pytest.raises(ConfigUndetermined) as err:
        resolve(comp, _original_shapes(TINY_LTX2), "original")
    msg = str(err.value)
    assert "\n" not in msg and "attention_head_dim" in msg and "--config" in msg
    given = {k: TINY_LTX2[k] for k in ("attention_head_dim", "audio_attention_head_dim", "patch_size", "patch_size_t",
                                       "audio_patch_size", "audio_patch_size_t", "perturbed_attn")}
    values = resolve(comp, _original_shapes(TINY_LTX2), "original", given=given).values
    assert (values["num_attention_heads"], values["audio_num_attention_heads"]) == (2, 2)
    # 2.3: the gate logits count the heads; a wrong base head width does not matter
    layout = get_layout("ltx2")
    derived = layout.config_from_original(_original_shapes(TINY_LTX2_3), {**TINY_LTX2_3, "attention_head_dim": 7,
                                                                          "audio_attention_head_dim": 5})
    assert (derived["num_attention_heads"], derived["attention_head_dim"]) == (2, 32)
    assert (derived["audio_num_attention_heads"], derived["audio_attention_head_dim"]) == (2, 16)
    assert layout.determined(_original_shapes(TINY_LTX2_3)) == {"attention_head_dim", "audio_attention_head_dim"}
    with pytest.raises(Exception, match="head"):
        layout.config_from_original(_original_shapes(TINY_LTX2), {**TINY_LTX2, "attention_head_dim": 48})


def _connectors(width=32):
    g = torch.Generator().manual_seed(3)
    return {f"{s}_embeddings_connector.{n}": torch.randn(shape, generator=g)
            for s in ("video", "audio") for n, shape in (("learnable_registers", (4, width)),
                                                          ("transformer_1d_blocks.0.attn1.to_q.weight", (width, width)),
                                                          ("transformer_1d_blocks.0.attn1.q_norm.weight", (width,)))}


def test_text_connectors_and_vaes_are_kept_or_reported(tmp_path):
    """A Lightricks-like single file: transformer + text connectors under model.diffusion_model., the video /
    audio VAE and vocoder beside it. Detected as ltx2 2.0 (never ltxv); the connectors belong to the diffusion
    model (kept in original names), the video VAE is the `vae` component, the audio VAE / vocoder are unclaimed
    (reported); to diffusers the connectors
    are listed as dropped with where they belong, the transformer bit-exact."""
    from ckptkit.convert.components import map_component
    from ckptkit.families import get_family
    from ckptkit.families.detect import detect
    from ckptkit.fixtures.factory import shipped_configs
    from ckptkit.formats import open_checkpoint
    from ckptkit.formats.safetensors import save_safetensors

    state = _state(TINY_LTX2)
    original = expr.apply(get_layout("ltx2").to_original({k: tuple(v.shape) for k, v in state.items()}, TINY_LTX2),
                          state.__getitem__)
    pre = "model.diffusion_model."
    extra = {"vae.per_channel_statistics.mean-of-means": torch.zeros(8),
             "audio_vae.per_channel_statistics.mean-of-means": torch.zeros(8), "vocoder.conv_pre.weight": torch.zeros(4, 4, 3)}
    bundle = {**{pre + k: v for k, v in original.items()}, **{pre + k: v for k, v in _connectors().items()}, **extra}
    path = tmp_path / "ltx2.safetensors"
    save_safetensors(path, bundle, shipped_configs("ltx2"))
    with open_checkpoint(path) as ck:
        det = detect(ck)
        assert (det.family, det.variant, det.form) == ("ltx2", "2.0", "bundle")
        # the video VAE is the optional `vae` component (layout ltx2_vae); the audio VAE and vocoder are not
        assert sorted(det.unclaimed) == sorted(k for k in extra if not k.startswith("vae."))
        assert det.components["vae"] == "vae."
        assert all(det.component_of(pre + k) == "diffusion_model" for k in _connectors())
        comp = get_family("ltx2").diffusion_model
        cmap = map_component(ck, comp, pre, "original", "diffusers")
        assert sorted(cmap.dropped) == sorted(pre + k for k in _connectors())
        assert all("LTX2TextConnectors" in why for why in cmap.dropped.values())
        out = expr.apply(cmap.ops, lambda n: bundle[n])
        assert set(out) == set(state) and all(torch.equal(out[k], state[k]) for k in state)
        kept = map_component(ck, comp, pre, "original", "original")  # same naming: every tensor, connectors too
        assert set(kept.ops) == {k.removeprefix(pre) for k in bundle if k.startswith(pre)}


def test_detection_is_exclusive_of_ltxv_both_ways():
    from ckptkit.families.detect import detect
    from ckptkit.fixtures.configs import TINY_LTXV
    from tests.families.test_detect import ShapesOnly

    for config, variant in ((TINY_LTX2, "2.0"), (TINY_LTX2_3, "2.3")):
        dshapes = {k: tuple(v.shape) for k, v in _state(config).items()}
        det = detect(ShapesOnly(dshapes))
        assert (det.family, det.variant, det.names) == ("ltx2", variant, "diffusers")
        for prefix in ("", "model.diffusion_model."):
            det = detect(ShapesOnly({prefix + k: v for k, v in _original_shapes(config).items()}))
            assert (det.family, det.variant, det.names, det.unclaimed) == ("ltx2", variant, "original", [])
    ltxv = {k: tuple(v.shape) for k, v in build_model("LTXVideoTransformer3DModel", TINY_LTXV, 0).state_dict().items()}
    assert detect(ShapesOnly(ltxv)).family == "ltxv"
    ltxv_orig = expr.shapes(get_layout("ltxv").to_original(ltxv, TINY_LTXV), ltxv)
    assert detect(ShapesOnly({"model.diffusion_model." + k: v for k, v in ltxv_orig.items()})).family == "ltxv"


# ComfyUI-GGUF tools/convert.py ModelLTXV.keys_detect (city96/ComfyUI-GGUF@795e45156ece99afbc3efef911e63fcb46e6a20d);
# it has no LTX-2 template and loader.py IMG_ARCH_LIST no "ltxav"
COMFY_LTXV_KEYS = ("adaln_single.emb.timestep_embedder.linear_2.weight", "transformer_blocks.27.scale_shift_table",
                   "caption_projection.linear_2.weight")


@pytest.mark.parametrize("manifest, tensors, params, released_as, comfy_ltxv", [
    ("ltx2_19b", 3510, 18_876_174_592, "config", True), ("ltx2_3", 4186, 18_988_838_144, "released[0]", False)])
def test_manifests_are_the_released_transformers(manifest, tensors, params, released_as, comfy_ltxv):
    """The 2.0 (19B, 3510 tensors) and 2.3 manifests hold the original names at the released shapes, each
    resolves to its released config (heads included) from the shapes alone, the 2.0 names pass diffusers'
    single-file converter (2.3's with the script's two extra renames), and ComfyUI-GGUF's converter would
    take 2.0 as "ltxv" and finds no template for 2.3."""
    from diffusers.loaders.single_file_utils import convert_ltx2_transformer_to_diffusers

    from ckptkit.convert.configs import resolve
    from ckptkit.convert.models import diffusers_shapes
    from ckptkit.families import get_family

    m = json.loads((MANIFESTS / f"{manifest}.json").read_text())
    comp_json = m["components"]["diffusion_model"]
    assert (comp_json["tensor_count"], comp_json["param_count"]) == (tensors, params)
    t = comp_json["tensors"]
    assert t["patchify_proj.weight"][0] == [4096, 128] and t["audio_patchify_proj.weight"][0] == [2048, 128]
    assert t["transformer_blocks.47.audio_to_video_attn.q_norm.weight"][0] == [2048]
    assert ("caption_projection.linear_1.weight" in t) is (manifest == "ltx2_19b")
    assert all(len(v[0]) <= 2 for v in t.values())  # no 5-D
    comp = get_family("ltx2").diffusion_model
    shapes = {k: tuple(v[0]) for k, v in t.items()}
    resolved = resolve(comp, shapes, "original")
    assert resolved.released_as == released_as
    assert (resolved.values["num_attention_heads"], resolved.values["attention_head_dim"]) == (32, 128)
    assert (resolved.values["audio_num_attention_heads"], resolved.values["audio_attention_head_dim"]) == (32, 64)
    meta = {comp.prefix + k: torch.empty(v, device="meta") for k, v in shapes.items()}
    out = {}
    for k, v in convert_ltx2_transformer_to_diffusers(meta).items():
        for o, d in RENAMES_2_3.items():
            k = k.replace(o, d)
        out[k] = tuple(v.shape)
    release = next(r for r in get_family("ltx2").releases if r.manifest == manifest)
    assert out == diffusers_shapes(comp.diffusers_class, release.config)
    assert (set(COMFY_LTXV_KEYS) <= set(t)) == comfy_ltxv
