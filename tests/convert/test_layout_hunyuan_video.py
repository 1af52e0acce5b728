"""The HunyuanVideo transformer's layout map against diffusers' own converter (T2V and the 33-channel
I2V), the 5-D patch embedding kept, and what the weights cannot decide refused or asked for."""

from __future__ import annotations

import json

import pytest
import torch

from ckptkit.convert.layouts import get_layout
from ckptkit.engine import expr
from ckptkit.families.manifests import MANIFESTS
from ckptkit.fixtures.configs import TINY_HUNYUAN_VIDEO
from ckptkit.fixtures.factory import build_model

KINDS = {"t2v": {}, "i2v-33ch": dict(in_channels=9, guidance_embeds=False, image_condition_type="latent_concat")}


def _state(kind: str) -> dict[str, torch.Tensor]:
    model = build_model("HunyuanVideoTransformer3DModel", {**TINY_HUNYUAN_VIDEO, **KINDS[kind]}, seed=5)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", KINDS)
def test_ours_and_diffusers_converter_agree(kind, monkeypatch):
    from diffusers.loaders import single_file_utils as sfu

    layout, config = get_layout("hunyuan_video"), {**TINY_HUNYUAN_VIDEO, **KINDS[kind]}
    state = _state(kind)
    original = expr.apply(layout.to_original({k: tuple(v.shape) for k, v in state.items()}, config), state.__getitem__)
    assert original["img_in.proj.weight"].ndim == 5
    assert original["single_blocks.0.linear1.weight"].shape[0] == 3 * 64 + 256  # q|k|v|mlp
    # diffusers' converter splits linear1 at a hard-coded 3072 (the release's width): at the tiny width
    split = torch.split

    def tiny_split(t, sizes, dim=0):
        if isinstance(sizes, (tuple, list)) and tuple(sizes[:3]) == (3072, 3072, 3072):
            sizes = (64, 64, 64, t.shape[dim] - 3 * 64)
        return split(t, sizes, dim=dim)

    monkeypatch.setattr(sfu.torch, "split", tiny_split)
    theirs = sfu.convert_hunyuan_video_transformer_to_diffusers({k: v.clone() for k, v in original.items()})
    monkeypatch.undo()
    assert set(theirs) == set(state)
    assert all(torch.equal(theirs[k], state[k]) for k in state), [k for k in state if not torch.equal(theirs[k], state[k])][:3]
    back = layout.to_diffusers(original, config)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    derived = layout.config_from_original({k: tuple(v.shape) for k, v in original.items()}, config)
    assert {k: derived[k] for k in layout.shape_keys} == {k: config[k] for k in layout.shape_keys}


def test_the_rotary_split_is_not_guessed():
    from ckptkit.errors import CkptError

    layout = get_layout("hunyuan_video")
    state = _state("t2v")
    original = layout.to_original({k: tuple(v.shape) for k, v in state.items()}, TINY_HUNYUAN_VIDEO)
    shapes = {k: expr.shape_of(e, {n: tuple(t.shape) for n, t in state.items()}) for k, e in original.items()}
    with pytest.raises(CkptError, match="rope_axes_dim"):
        layout.config_from_original(shapes, {**TINY_HUNYUAN_VIDEO, "rope_axes_dim": [8, 8, 8]})


def test_i2v_16ch_needs_its_config(tmp_path):
    """The 16-channel I2V (token replace) has the T2V's shapes: a file of the released size is read as the
    T2V and its `image_condition_type` is refused as ambiguous unless a config says it."""
    from ckptkit.convert.configs import AMBIGUOUS, resolve
    from ckptkit.families import get_family

    m = json.loads((MANIFESTS / "hunyuan_video_t2v.json").read_text())
    shapes = {k: tuple(v[0]) for k, v in m["components"]["diffusion_model"]["tensors"].items()}
    comp = get_family("hunyuan_video").diffusion_model
    resolved = resolve(comp, shapes, "original", strict=False)
    assert resolved.sources["image_condition_type"] == AMBIGUOUS
