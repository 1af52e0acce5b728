"""Text encoders as family components: AuraFlow's Pile-T5-XL (UMT5) and HiDream's four encoders in the
prefixes a ComfyUI checkpoint save gives them, and UMT5 told apart from T5 when it stands alone."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from ckptkit.families.detect import detect
from ckptkit.fixtures import factory
from ckptkit.fixtures.configs import TINY_CLIP_G_NARROW, TINY_CLIP_L_NARROW, TINY_T5
from ckptkit.formats import open_checkpoint
from tests.cli import ok, run


def _umt5(d_model: int, seed: int = 0) -> dict[str, torch.Tensor]:
    import transformers as T

    torch.manual_seed(seed)
    cfg = T.UMT5Config(vocab_size=64, d_model=d_model, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                       feed_forward_proj="gated-gelu")
    state = T.UMT5EncoderModel(cfg).state_dict()
    state.pop("encoder.embed_tokens.weight")  # the tied copy real files leave out
    return {k: v.contiguous() for k, v in state.items()}


def _detect_file(tmp_path, state: dict, name: str):
    path = tmp_path / name
    save_file(state, str(path))
    return detect(open_checkpoint(path))


def test_umt5_alone_is_not_taken_for_t5(tmp_path):
    """UMT5 has T5's names but a relative-position bias in every layer, which T5EncoderModel would
    silently not load: a UMT5 file is a UMT5EncoderModel, Pile-T5-XL's width names AuraFlow's."""
    pile = _detect_file(tmp_path, _umt5(2048), "pile.safetensors")
    assert (list(pile.components), pile.standalone_class, pile.used_by) == (["pile_t5xl"], "UMT5EncoderModel",
                                                                          ("auraflow",))
    narrow = _detect_file(tmp_path, _umt5(64), "narrow.safetensors")
    assert (list(narrow.components), narrow.standalone_class) == (["umt5"], "UMT5EncoderModel")
    t5 = factory.build_model("T5EncoderModel", TINY_T5, 0).state_dict()
    t5.pop("encoder.embed_tokens.weight")
    plain = _detect_file(tmp_path, {k: v.contiguous() for k, v in t5.items()}, "t5.safetensors")
    assert list(plain.components) == ["t5"]


def test_umt5_alone_converts_to_a_umt5_folder_that_computes_the_same(tmp_path):
    import transformers as T

    src = tmp_path / "umt5.safetensors"
    state = _umt5(64, seed=3)
    save_file(state, str(src))
    out = tmp_path / "te"
    config = {"feed_forward_proj": "gated-gelu", "relative_attention_max_distance": 128}
    (tmp_path / "config.json").write_text(json.dumps(config))
    ok(run("convert", src, "-o", out, "--layout", "diffusers", "--config", tmp_path / "config.json"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["d_model"] == 64 and cfg["num_heads"] == 4 and cfg["num_layers"] == 2
    model = T.UMT5EncoderModel.from_pretrained(out).eval()
    ref = T.UMT5EncoderModel(T.UMT5Config(**{k: v for k, v in cfg.items() if not k.startswith("_")}))
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert set(missing) <= {"encoder.embed_tokens.weight"} and not unexpected
    ids = torch.tensor([[5, 9, 2, 1]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, ref.eval()(ids).last_hidden_state, rtol=0, atol=0)


def _llama_state() -> dict[str, torch.Tensor]:
    """A tiny Llama in the names ComfyUI's own Llama2_ module uses (`model.` + transformers' names)."""
    import transformers as T

    torch.manual_seed(1)
    cfg = T.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False)
    state = T.LlamaForCausalLM(cfg).state_dict()
    return {k: v.to(torch.float16).contiguous() for k, v in state.items() if k != "lm_head.weight"}


def _states(module, config: dict, seed: int) -> dict[str, torch.Tensor]:
    state = factory.build_model(module, config, seed).state_dict()
    state.pop("encoder.embed_tokens.weight", None)
    state.pop("text_model.embeddings.position_ids", None)
    return {k: v.to(torch.float16).contiguous() for k, v in state.items()}


@pytest.fixture(scope="module")
def hidream_all_in_one(tmp_path_factory):
    """A HiDream checkpoint as ComfyUI's checkpoint save writes one: the transformer, the FLUX.1 VAE and
    the four text encoders under `text_encoders.{clip_l,clip_g,t5xxl,llama}.transformer.`."""
    from ckptkit.families.hidream import SPEC

    parts = {
        "clip_l": _states("CLIPTextModelWithProjection", TINY_CLIP_L_NARROW, 1),
        "clip_g": _states("CLIPTextModelWithProjection", TINY_CLIP_G_NARROW, 2),
        "t5xxl": _states("T5EncoderModel", TINY_T5, 3),
        "llama": _llama_state(),
    }
    state = factory.bundle_state("hidream")
    for name, part in parts.items():
        prefix = SPEC.component(name).prefix
        state.update({prefix + k: v for k, v in part.items()})
    path = tmp_path_factory.mktemp("hidream") / "hidream_aio.safetensors"
    save_file(state, str(path))
    return path, parts


def test_hidream_all_in_one_detected_with_its_text_encoders(hidream_all_in_one):
    path, _ = hidream_all_in_one
    det = detect(open_checkpoint(path))
    assert det.family == "hidream" and not det.unclaimed and not det.missing
    assert det.components == {"diffusion_model": "model.diffusion_model.", "clip_l": "text_encoders.clip_l.transformer.",
                              "clip_g": "text_encoders.clip_g.transformer.", "t5xxl": "text_encoders.t5xxl.transformer.",
                              "llama": "text_encoders.llama.transformer.", "vae": "vae."}


def test_hidream_all_in_one_splits_bit_exact(hidream_all_in_one, tmp_path):
    path, parts = hidream_all_in_one
    out = tmp_path / "split"
    ok(run("split", path, "-o", out, "--layout", "original"))
    for name, part in parts.items():
        got = load_file(out / f"{name}.safetensors")
        assert set(got) == set(part), name
        for k, v in part.items():
            assert torch.equal(got[k], v) and got[k].dtype == v.dtype, (name, k)
    manifest = json.loads((out / "ckptkit.json").read_text())
    assert set(manifest["components"]) == {"diffusion_model", "clip_l", "clip_g", "t5xxl", "llama", "vae"}
