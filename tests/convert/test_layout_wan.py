"""The Wan transformer's layout map against diffusers' own converter, for every released kind (T2V, 2.1
I2V with its CLIP branch, FLF2V's position table, 2.2 I2V A14B without one, TI2V 5B's 48 channels), and
the original names checked against a manifest of the release."""

from __future__ import annotations

import json

import pytest
import torch

from ckptkit.convert.layouts import get_layout
from ckptkit.engine import expr
from ckptkit.families.manifests import MANIFESTS
from ckptkit.fixtures.configs import TINY_WAN
from ckptkit.fixtures.factory import build_model

KINDS = {
    "t2v": {},
    "i2v": dict(in_channels=36, image_dim=24, added_kv_proj_dim=64),
    "flf2v": dict(in_channels=36, image_dim=24, added_kv_proj_dim=64, pos_embed_seq_len=6),
    "i2v-a14b": dict(in_channels=36),
    "ti2v": dict(in_channels=48, out_channels=48),
}


def _model(kind: str):
    return build_model("WanTransformer3DModel", {**TINY_WAN, **KINDS[kind]}, seed=7)


@pytest.mark.parametrize("kind", KINDS)
def test_ours_and_diffusers_converter_agree(kind):
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    layout = get_layout("wan")
    config = {**TINY_WAN, **KINDS[kind]}
    state = {k: v.detach().clone() for k, v in _model(kind).state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    original = expr.apply(layout.to_original(shapes, config), state.__getitem__)
    assert original["patch_embedding.weight"].ndim == 5 and original["head.modulation"].shape == (1, 2, 64)
    assert original["blocks.0.modulation"].shape == (1, 6, 64)
    # diffusers' single-file converter takes our original names back to its own, tensor for tensor;
    # FLF2V's position table is the one it drops (its rename table has no img_emb.emb_pos)
    theirs = convert_wan_transformer_to_diffusers({"model.diffusion_model." + k: v for k, v in original.items()})
    if kind == "flf2v":
        assert "img_emb.emb_pos" in theirs and "condition_embedder.image_embedder.pos_embed" not in theirs
        theirs["condition_embedder.image_embedder.pos_embed"] = theirs.pop("img_emb.emb_pos")
    assert set(theirs) == set(state)
    assert all(torch.equal(theirs[k], state[k]) for k in state)
    # ours both ways: exact, and the config read back from the original shapes
    back = layout.to_diffusers(original, config)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    derived = layout.config_from_original({k: tuple(v.shape) for k, v in original.items()}, config)
    assert {k: derived[k] for k in layout.shape_keys} == {k: config.get(k) for k in layout.shape_keys}


def test_head_width_is_not_guessed():
    """The q/k norms span the whole width: without a head width the config is refused in one line."""
    from ckptkit.errors import CkptError

    layout = get_layout("wan")
    state = _model("t2v").state_dict()
    original = layout.to_original({k: tuple(v.shape) for k, v in state.items()}, TINY_WAN)
    shapes = {k: expr.shape_of(e, {n: tuple(t.shape) for n, t in state.items()}) for k, e in original.items()}
    with pytest.raises(CkptError, match="head"):
        layout.config_from_original(shapes, {k: v for k, v in TINY_WAN.items() if k != "attention_head_dim"})


def test_manifest_names_are_the_original_layout_of_the_released_config():
    """Wan 2.2 TI2V 5B's manifest (made from the diffusers class at the released config through our map)
    holds the original names Wan2.2's model.py has: 825 tensors, the 5-D patch embedding (3072, 48, 1, 2, 2),
    the (1, 6, 3072) modulation tables, head.head (192, 3072)."""
    m = json.loads((MANIFESTS / "wan2_2_ti2v_5b.json").read_text())
    tensors = m["components"]["diffusion_model"]["tensors"]
    assert len(tensors) == 825
    assert tensors["patch_embedding.weight"][0] == [3072, 48, 1, 2, 2]
    assert tensors["blocks.29.modulation"][0] == [1, 6, 3072] and tensors["head.modulation"][0] == [1, 2, 3072]
    assert tensors["head.head.weight"][0] == [192, 3072] and "blocks.30.modulation" not in tensors
