"""The LTX-Video transformer's layout map against diffusers' own single-file converter, both ways, the
config read back from the original shapes, the head split never guessed, and the manifests of the two
released sizes."""

from __future__ import annotations

import json

import pytest
import torch

from ckptkit.convert.layouts import get_layout
from ckptkit.engine import expr
from ckptkit.families.manifests import MANIFESTS
from ckptkit.fixtures.configs import TINY_LTXV
from ckptkit.fixtures.factory import build_model


def _state():
    model = build_model("LTXVideoTransformer3DModel", TINY_LTXV, seed=7)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("prefix", ["model.diffusion_model.", ""], ids=["comfy-prefix", "bare"])
def test_ours_and_diffusers_converter_agree(prefix):
    from diffusers.loaders.single_file_utils import convert_ltx_transformer_checkpoint_to_diffusers

    layout = get_layout("ltxv")
    state = _state()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    original = expr.apply(layout.to_original(shapes, TINY_LTXV), state.__getitem__)
    assert original["patchify_proj.weight"].shape == (64, 16) and "proj_in.weight" not in original
    assert "adaln_single.linear.weight" in original and "transformer_blocks.1.attn2.k_norm.weight" in original
    assert not any("time_embed" in k or "norm_q" in k or "norm_k" in k for k in original)
    # diffusers' converter takes our original names back to its own, tensor for tensor
    theirs = convert_ltx_transformer_checkpoint_to_diffusers({prefix + k: v for k, v in original.items()})
    assert set(theirs) == set(state)
    assert all(torch.equal(theirs[k], state[k]) for k in state)
    # ours the other way: exact
    back = layout.to_diffusers(original, TINY_LTXV)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    # and diffusers' names through ours give the original names the converter started from
    again = expr.apply(layout.to_original({k: tuple(v.shape) for k, v in theirs.items()}, TINY_LTXV),
                       theirs.__getitem__)
    assert set(again) == set(original) and all(torch.equal(again[k], original[k]) for k in original)
    derived = layout.config_from_original({k: tuple(v.shape) for k, v in original.items()}, TINY_LTXV)
    assert {k: derived[k] for k in layout.shape_keys} == {k: TINY_LTXV[k] for k in layout.shape_keys}


def test_head_split_is_not_guessed():
    """A width no release has, without a head width: refused in one line naming the head width and --config."""
    from ckptkit.convert.configs import ConfigUndetermined, resolve
    from ckptkit.families import get_family

    layout = get_layout("ltxv")
    state = _state()
    original = layout.to_original({k: tuple(v.shape) for k, v in state.items()}, TINY_LTXV)
    shapes = expr.shapes(original, {k: tuple(v.shape) for k, v in state.items()})
    comp = get_family("ltxv").diffusion_model
    with pytest.raises(ConfigUndetermined) as err:
        resolve(comp, shapes, "original")
    msg = str(err.value)
    assert "\n" not in msg and "attention_head_dim" in msg and "head width" in msg and "--config" in msg
    # given the split, the rest comes from the weights
    given = {k: TINY_LTXV[k] for k in ("attention_head_dim", "patch_size", "patch_size_t")}
    config = resolve(comp, shapes, "original", given=given)
    assert {k: config.values[k] for k in layout.shape_keys} == {k: TINY_LTXV[k] for k in layout.shape_keys}
    # the rule itself refuses a head width that does not divide the width
    with pytest.raises(Exception, match="head"):
        layout.config_from_original(shapes, {**TINY_LTXV, "attention_head_dim": 48})


@pytest.mark.parametrize("manifest, layers, width, config", [
    ("ltxv_2b", 28, 2048, "released as config"), ("ltxv_13b", 48, 4096, "released[0]")])
def test_manifests_are_the_released_sizes(manifest, layers, width, config):
    """The 2B and 13B manifests (made from the diffusers class at the released configs through our map) hold
    the original names (patchify_proj, adaln_single, q_norm / k_norm) at the released shapes, and each
    resolves to its released config, head split included, from the shapes alone."""
    from ckptkit.convert.configs import resolve
    from ckptkit.families import get_family

    m = json.loads((MANIFESTS / f"{manifest}.json").read_text())
    tensors = m["components"]["diffusion_model"]["tensors"]
    assert len(tensors) == 15 + 25 * layers  # 715 (2B), 1215 (13B)
    assert tensors["patchify_proj.weight"][0] == [width, 128] and tensors["proj_out.weight"][0] == [128, width]
    assert tensors["adaln_single.linear.weight"][0] == [6 * width, width]
    assert tensors[f"transformer_blocks.{layers - 1}.attn1.q_norm.weight"][0] == [width]
    assert f"transformer_blocks.{layers}.scale_shift_table" not in tensors
    comp = get_family("ltxv").diffusion_model
    resolved = resolve(comp, {k: tuple(v[0]) for k, v in tensors.items()}, "original")
    assert resolved.released_as == config.removeprefix("released as ")
    assert resolved.values["num_attention_heads"] == 32 and resolved.values["attention_head_dim"] == width // 32


def _ltx2_diffusers_shapes():
    import diffusers

    model = diffusers.LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=8, audio_cross_attention_dim=16, num_layers=1, caption_channels=16)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_detection_is_exclusive_of_pixart_sana_and_ltx2():
    """LTX-Video's original names hold PixArt's diffusers markers (adaln_single, caption_projection,
    transformer_blocks.N.ff) and its diffusers names Sana's (time_embed, caption_projection, a block
    scale_shift_table): each is told apart, bare or prefixed; an LTX-2 transformer (audio branch) is not
    LTX-Video in either naming."""
    import diffusers

    from ckptkit.families.detect import detect
    from tests.families.test_detect import ShapesOnly

    state = _state()
    dshapes = {k: tuple(v.shape) for k, v in state.items()}
    original = expr.shapes(get_layout("ltxv").to_original(dshapes, TINY_LTXV), dshapes)
    for prefix in ("", "model.diffusion_model."):
        det = detect(ShapesOnly({prefix + k: v for k, v in original.items()}))
        assert (det.family, det.names, det.unclaimed) == ("ltxv", "original", [])
    det = detect(ShapesOnly(dshapes))
    assert (det.family, det.names) == ("ltxv", "diffusers")
    pixart = diffusers.PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
        cross_attention_dim=16, caption_channels=24, sample_size=8, norm_type="ada_norm_single",
        use_additional_conditions=False)
    assert detect(ShapesOnly({k: tuple(v.shape) for k, v in pixart.state_dict().items()})).family == "pixart"
    sana = diffusers.SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
        sample_size=8)
    assert detect(ShapesOnly({k: tuple(v.shape) for k, v in sana.state_dict().items()})).family == "sana"
    ltx2 = _ltx2_diffusers_shapes()
    assert detect(ShapesOnly(ltx2)).family != "ltxv"
    # LTX-2's original names (diffusers' convert_ltx2 rename table, reversed on the parts detection reads)
    ltx2_original = {k.replace("audio_time_embed.", "audio_adaln_single.").replace("time_embed.", "adaln_single.")
                     .replace("proj_in.", "patchify_proj.").replace("norm_q.", "q_norm.").replace("norm_k.", "k_norm."): v
                     for k, v in ltx2.items()}
    assert "adaln_single.emb.timestep_embedder.linear_1.bias" in ltx2_original
    for prefix in ("", "model.diffusion_model."):
        assert detect(ShapesOnly({prefix + k: v for k, v in ltx2_original.items()})).family != "ltxv"
