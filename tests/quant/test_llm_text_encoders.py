"""LLM text encoders (Qwen2.5-VL, Qwen3, Gemma-2, Llama-3.1, Mistral-Small-3.x) as standalone
component files: detected by structure, quantized to GGUF in llama.cpp's names and architectures,
and read back both as ComfyUI-GGUF reads them and by ckptkit. Tiny models of the transformers
classes themselves (hidden 64, 2 layers)."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ckptkit.families.detect import detect
from ckptkit.formats import open_checkpoint
from tests.cli import ok, refused, run

VOCAB = 256


def _tiny(kind: str, heads: int = 4, kv: int = 2, hidden: int = 64, layers: int = 2, inter: int = 128):
    """A seeded tiny model of the kind's transformers class, in fp16."""
    import transformers as T

    torch.manual_seed(0)
    text = dict(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv, vocab_size=VOCAB)
    if kind == "qwen25vl":
        text["rope_scaling"] = {"type": "mrope", "mrope_section": [2, 2, 4]}
        cfg = T.Qwen2_5_VLConfig(text_config=text, vision_config=dict(
            depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden, fullatt_block_indexes=[0],
            window_size=112, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3))
        model = T.Qwen2_5_VLForConditionalGeneration(cfg)
    elif kind == "qwen3":
        model = T.Qwen3ForCausalLM(T.Qwen3Config(**text, head_dim=hidden // heads, tie_word_embeddings=True))
    elif kind == "gemma2":
        model = T.Gemma2Model(T.Gemma2Config(**text, head_dim=hidden // heads))
    elif kind == "llama":
        model = T.LlamaForCausalLM(T.LlamaConfig(**text, head_dim=hidden // heads, tie_word_embeddings=False))
    elif kind == "mistral3":
        cfg = T.Mistral3Config(text_config=dict(model_type="mistral", **text, head_dim=hidden // heads),
                               vision_config=dict(model_type="pixtral", hidden_size=32, intermediate_size=64,
                                                  num_hidden_layers=1, num_attention_heads=2, head_dim=16,
                                                  image_size=28, patch_size=14))
        model = T.Mistral3ForConditionalGeneration(cfg)
    else:
        raise ValueError(kind)
    with torch.no_grad():  # norms away from their all-ones init, so a mixed-up norm shows
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.half().eval()


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.contiguous().clone() for k, v in model.state_dict().items()}


def comfy_names(state: dict) -> dict:
    """The names ComfyUI's own text-encoder files use (its Llama2_ modules): `model.` + the text
    tower, `visual.` for Qwen2.5-VL's vision tower, no lm_head."""
    out = {}
    for n, t in state.items():
        n = n.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        if n != "lm_head.weight":
            out[n] = t
    return out


@pytest.fixture(scope="module")
def models():
    return {k: _tiny(k) for k in ("qwen25vl", "qwen3", "gemma2")} | {
        # 32/8 heads of 4 (with a head width of 2 llama.cpp's permute would be the identity)
        "llama": _tiny("llama", heads=32, kv=8, hidden=128), "mistral3": _tiny("mistral3", heads=32, kv=8, hidden=128),
        "llama_4_2": _tiny("llama", heads=4, kv=2)}


def _write(tmp_path, name: str, state: dict):
    path = tmp_path / f"{name}.safetensors"
    save_file(state, str(path))
    return path


# --- detection ---------------------------------------------------------------------------------------

DETECT = [  # (model, names, component, a family it is used by, transformers class)
    ("qwen25vl", "comfy", "qwen25vl", "qwen_image", "Qwen2_5_VLForConditionalGeneration"),
    ("qwen25vl", "transformers5", "qwen25vl", "qwen_image", "Qwen2_5_VLForConditionalGeneration"),
    ("qwen25vl", "text", "qwen25vl", "qwen_image", "Qwen2_5_VLForConditionalGeneration"),
    ("qwen3", "comfy", "qwen3", "z_image", "Qwen3ForCausalLM"),
    ("qwen3", "bare", "qwen3", "flux2", "Qwen3Model"),
    ("gemma2", "transformers5", "gemma2", "lumina2", "Gemma2Model"),
    ("llama", "transformers5", "llama", "hidream", "LlamaForCausalLM"),
    ("mistral3", "transformers5", "mistral3", "flux2", "Mistral3ForConditionalGeneration"),
    ("mistral3", "legacy", "mistral3", "flux2", "Mistral3ForConditionalGeneration"),
    ("mistral3", "comfy", "llama", "flux2", "LlamaForCausalLM"),
]


def _named(state: dict, names: str) -> dict:
    if names == "comfy":
        return {n: t for n, t in comfy_names(state).items() if not n.startswith(("model.vision_tower.",
                                                                                "model.multi_modal_projector."))}
    if names == "text":
        return {n: t for n, t in comfy_names(state).items() if not n.startswith("visual.")}
    if names == "bare":
        return {n.removeprefix("model."): t for n, t in state.items() if n != "lm_head.weight"}
    if names == "legacy":  # Mistral3ForConditionalGeneration.save_pretrained in transformers 5.25
        return {n.replace("model.language_model.", "language_model.model.").removeprefix("model."): t
                for n, t in state.items() if n != "lm_head.weight"}
    return state


@pytest.mark.parametrize("kind,names,component,family,cls", DETECT)
def test_detected_as_standalone_component(models, tmp_path, kind, names, component, family, cls):
    path = _write(tmp_path, kind, _named(_state(models[kind]), names))
    with open_checkpoint(path) as ckpt:
        det = detect(ckpt)
    assert det.family is None and det.form == "component" and det.components == {component: ""}
    assert det.standalone_layout == "hf_llm" and family in det.used_by and det.standalone_class == cls
    if kind == "qwen25vl":
        assert ("vision" in det.standalone) == (names != "text")


def test_structure_not_sizes_decides(tmp_path):
    """Detection reads which norms and biases exist: a Llama-3-sized vocabulary only describes."""
    h = 8
    state = {"model.embed_tokens.weight": torch.zeros(128256, h, dtype=torch.float16)}
    for part, shape in (("self_attn.q_proj.weight", (h, h)), ("self_attn.k_proj.weight", (h, h)),
                        ("self_attn.v_proj.weight", (h, h)), ("self_attn.o_proj.weight", (h, h)),
                        ("mlp.gate_proj.weight", (16, h)), ("mlp.up_proj.weight", (16, h)),
                        ("mlp.down_proj.weight", (h, 16)), ("input_layernorm.weight", (h,)),
                        ("post_attention_layernorm.weight", (h,))):
        state[f"model.layers.0.{part}"] = torch.zeros(shape, dtype=torch.float16)
    with open_checkpoint(_write(tmp_path, "l3", state)) as ckpt:
        det = detect(ckpt)
    assert det.components == {"llama": ""} and det.used_by == ("hidream",) and "128256" in det.standalone
    state["model.layers.0.self_attn.q_norm.weight"] = torch.zeros(h, dtype=torch.float16)
    with open_checkpoint(_write(tmp_path, "q3", state)) as ckpt:
        assert detect(ckpt).components == {"qwen3": ""}


# --- ComfyUI-GGUF's reader, re-implemented -------------------------------------------------------------
# city96/ComfyUI-GGUF@795e45156ece99afbc3efef911e63fcb46e6a20d loader.py: LLAMA_SD_MAP (str.replace in
# dict order), then for arch "llama" `llama_permute(sd, 32, 8)  # L3 / Mistral`:
#     permute = lambda x,h: x.reshape(h, x.shape[0] // h // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
# on "q_proj.weight"/"q_proj.bias" (h=32) and "k_proj.weight"/"k_proj.bias" (h=8).

COMFY_LLAMA_SD_MAP = {
    "blk.": "model.layers.", "attn_norm": "input_layernorm", "attn_q_norm.": "self_attn.q_norm.",
    "attn_k_norm.": "self_attn.k_norm.", "attn_v_norm.": "self_attn.v_norm.", "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj", "ffn_gate": "mlp.gate_proj",
    "ffn_norm": "post_attention_layernorm", "token_embd": "model.embed_tokens", "output_norm": "model.norm",
    "output.weight": "lm_head.weight",
}
COMFY_TXT_ARCH_LIST = {"t5", "t5encoder", "llama", "qwen2vl", "qwen3", "qwen3vl"}


def comfy_gguf_load(path) -> tuple[str, dict[str, torch.Tensor]]:
    reader = gguf.GGUFReader(path)
    arch = reader.get_field("general.architecture").contents()
    assert arch in COMFY_TXT_ARCH_LIST
    sd = {}
    for t in reader.tensors:
        assert t.tensor_type.name in ("F16", "F32"), t.name
        name = t.name
        for k, v in COMFY_LLAMA_SD_MAP.items():
            name = name.replace(k, v)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        sd[name] = torch.from_numpy(np.array(t.data)).reshape(shape)
    if arch == "llama":
        def permute(x, h):
            return x.reshape(h, x.shape[0] // h // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
        for k in sd:
            if k.endswith(("q_proj.weight", "q_proj.bias")):
                sd[k] = permute(sd[k], 32)
            if k.endswith(("k_proj.weight", "k_proj.bias")):
                sd[k] = permute(sd[k], 8)
    return arch, sd


F16_CASES = [  # (model, names written, arch, llama.cpp names that must be there)
    ("qwen25vl", "comfy", "qwen2vl", {"blk.0.attn_q.bias", "blk.1.attn_v.bias"}),
    ("qwen3", "comfy", "qwen3", {"blk.0.attn_q_norm.weight", "blk.1.attn_k_norm.weight"}),
    ("llama", "transformers5", "llama", {"output.weight"}),
    ("mistral3", "transformers5", "llama", set()),
]


@pytest.mark.parametrize("kind,names,arch,extra", F16_CASES)
def test_f16_gguf_reads_back_exactly_through_comfyui_gguf(models, tmp_path, kind, names, arch, extra):
    state = _named(_state(models[kind]), names)
    src = _write(tmp_path, kind, state)
    result = ok(run("quantize", src, "-o", tmp_path / "te.gguf", "--type", "f16"))
    got_arch, sd = comfy_gguf_load(tmp_path / "te.gguf")
    assert got_arch == arch
    stored = {t.name for t in gguf.GGUFReader(tmp_path / "te.gguf").tensors}
    assert {"token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight",
            "blk.0.attn_v.weight", "blk.0.attn_output.weight", "blk.0.ffn_gate.weight", "blk.0.ffn_up.weight",
            "blk.1.ffn_down.weight", "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight"} | extra <= stored
    # the text tower, in ComfyUI's `model.` names (the vision tower / projector is not in this file)
    want = {}
    for n, t in state.items():
        n = n.replace("model.language_model.", "model.")
        if not n.startswith(("visual.", "model.visual.", "model.vision_tower.", "model.multi_modal_projector.")):
            want[n] = t
    assert set(sd) == set(want)
    for n, t in want.items():
        # bit-exact; 1-D and <= 1024-element tensors are stored F32 (exact from fp16), the rest F16
        assert torch.equal(sd[n].to(t.dtype), t) and (sd[n].dtype == t.dtype or t.numel() <= 1024), n
    if kind == "qwen25vl":  # the vision tower goes to the mmproj GGUF beside it (tests/quant/test_mmproj.py)
        assert "the vision tower (18 tensors) is written to te-mmproj-F16.gguf" in result.output
    if arch == "llama":  # stored in llama.cpp's q/k order, not as the source has them
        q = next(t for t in gguf.GGUFReader(tmp_path / "te.gguf").tensors if t.name == "blk.0.attn_q.weight")
        stored_q = torch.from_numpy(np.array(q.data)).reshape(sd["model.layers.0.self_attn.q_proj.weight"].shape)
        assert not torch.equal(stored_q, sd["model.layers.0.self_attn.q_proj.weight"])
    # ckptkit reads it back under the source's own names, q/k un-permuted
    with open_checkpoint(tmp_path / "te.gguf") as ckpt:
        text = {n: t for n, t in state.items() if n in ckpt.tensors}
        assert set(ckpt.tensors) == {n for n in state if not n.startswith(("visual.", "model.visual.",
                                                                            "model.vision_tower.",
                                                                            "model.multi_modal_projector."))}
        for n, t in text.items():
            assert torch.equal(ckpt.load(n).to(t.dtype), t), n
        if arch == "llama":  # the stored bytes too (what merge copies), rows back in HF order
            q = next(n for n in ckpt.tensors if n.endswith("layers.0.self_attn.q_proj.weight"))
            raw = torch.from_numpy(np.array(ckpt.stored_bytes(q))).view(torch.float16).reshape(state[q].shape)
            assert torch.equal(raw, state[q])


def _hidden(model, kind: str, ids) -> torch.Tensor:
    with torch.no_grad():
        if kind == "qwen25vl":
            return model.model.language_model(input_ids=ids).last_hidden_state
        if kind == "gemma2":
            return model(input_ids=ids).last_hidden_state
        return model.model(input_ids=ids).last_hidden_state


@pytest.mark.parametrize("kind", ["qwen25vl", "qwen3", "llama"])
def test_q8_0_close_and_model_output_close(models, tmp_path, kind):
    model = models[kind]
    state = _state(model)
    src = _write(tmp_path, kind, state)
    ok(run("quantize", src, "-o", tmp_path / "q8.gguf", "--type", "q8_0"))
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "q8.gguf").tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.ffn_down.weight"] == "Q8_0"
    assert types["token_embd.weight"] == "F16" and types["output_norm.weight"] == "F32"  # kept, as llama.cpp's norms
    with open_checkpoint(tmp_path / "q8.gguf") as ckpt:
        loaded = {n: ckpt.load(n) for n in ckpt.tensors}
    for n, t in loaded.items():
        ref = state[n].float()
        err = (t.float() - ref).abs().max()
        assert err <= ref.abs().max() / 127 + 1e-3, n  # within one Q8_0 step of the largest block scale
    copy = _tiny(kind, **({"heads": 32, "kv": 8, "hidden": 128} if kind == "llama" else {})).float()
    missing, unexpected = copy.load_state_dict({n: t.float() for n, t in loaded.items()}, strict=False)
    assert not unexpected and all(m.startswith(("model.visual.", "lm_head.")) for m in missing), missing
    if kind == "qwen25vl":
        assert any(m.startswith("model.visual.") for m in missing)  # the vision tower is not in the GGUF
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(1))
    want, got = _hidden(model.float(), kind, ids), _hidden(copy, kind, ids)
    model.half()
    cos = torch.nn.functional.cosine_similarity(want.flatten(), got.flatten(), dim=0)
    assert cos > 0.999, float(cos)


def test_q4_k_m_mix_and_read_back(tmp_path):
    """_M mix: attn_v and ffn_down up-typed (Q6_K), the rest Q4_K; the embedding and norms kept."""
    model = _tiny("qwen3", heads=4, kv=4, hidden=256, layers=1, inter=256)
    src = _write(tmp_path, "q3", _state(model))
    ok(run("quantize", src, "-o", tmp_path / "q4.gguf", "--type", "q4_k_m"))
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "q4.gguf").tensors}
    assert types["blk.0.attn_v.weight"] == types["blk.0.ffn_down.weight"] == "Q6_K"
    assert types["blk.0.attn_q.weight"] == types["blk.0.ffn_gate.weight"] == "Q4_K"
    assert types["token_embd.weight"] == "F16" and types["blk.0.attn_q_norm.weight"] == "F32"
    res = ok(run("verify", tmp_path / "q4.gguf", "--against", src, "--device", "cpu", "--no-onestep"))
    assert "layout     qwen3" in res.output and "FAIL" not in res.output


def test_llama_arch_refused_for_other_head_counts(models, tmp_path):
    """ComfyUI-GGUF un-permutes arch llama as 32/8 heads whatever the file says: a 4/2-head model
    (shapes no 32/8 split fits) and a 16/4-head one (said by its config) are refused, one line."""
    src = _write(tmp_path, "l42", _state(models["llama_4_2"]))
    line = refused(run("quantize", src, "-o", tmp_path / "x.gguf", "--type", "q8_0"))
    assert "ComfyUI-GGUF un-permutes arch 'llama' q/k as 32/8 heads" in line
    assert not (tmp_path / "x.gguf").exists()
    src = _write(tmp_path, "l32", _state(models["llama"]))  # q 128 rows, k 32: 32/8 of 4, or 16/4 of 8
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 8}))
    line = refused(run("quantize", src, "-o", tmp_path / "y.gguf", "--type", "q8_0", "--config", cfg))
    assert "16 query / 4 key-value heads" in line and not (tmp_path / "y.gguf").exists()


def test_gemma2_kept_as_safetensors_and_said(models, tmp_path):
    src = _write(tmp_path, "gemma", _state(models["gemma2"]))
    result = ok(run("quantize", src, "-o", tmp_path / "out", "--type", "q8_0"))
    assert "gemma2: ComfyUI-GGUF loads no gemma2 text encoder from GGUF" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ckptkit.json", "gemma2.safetensors"]
    policy = json.loads((tmp_path / "out" / "ckptkit.json").read_text())["components"]["gemma2"]["policy"]
    assert policy["requested"] == "keep" and policy["asked"] == "q8_0" and "gemma_tenc" in policy["not_done"]
    line = refused(run("quantize", src, "-o", tmp_path / "g.gguf", "--type", "q8_0"))
    assert "ComfyUI-GGUF loads no gemma2 text encoder from GGUF" in line and "as .safetensors" in line


def test_mistral_small_sized_llama_kept_for_comfy():
    """ComfyUI-GGUF rebuilds Mistral-Small's tekken tokenizer from tokenizer.ggml.* metadata for a
    (131072, 5120) embedding and refuses a file without it; ckptkit has no tokenizer to write, so
    such a text encoder is not written as a GGUF for it (shapes only: no 1.3 GB tensor is made)."""
    from types import SimpleNamespace

    from ckptkit.engine import expr
    from ckptkit.families.components import llm_component
    from ckptkit.quant.clients import COMFY
    from ckptkit.quant.plan import gguf_text_limit

    comp = llm_component("llama", "LlamaForCausalLM")
    for shape, limited in (((131072, 5120), True), ((128256, 4096), False)):
        names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"]
        ckpt = SimpleNamespace(tensors={names[0]: SimpleNamespace(shape=shape), names[1]: SimpleNamespace(shape=(8, 8))})
        limit = gguf_text_limit(ckpt, comp, COMFY, {n: expr.src(n) for n in names})
        assert (limit is not None and "tekken tokenizer" in limit) == limited
    assert "gemma_tenc" in gguf_text_limit(None, llm_component("gemma2", "Gemma2Model"), COMFY, {})
