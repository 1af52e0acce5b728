"""Qwen2.5-VL's vision tower as llama.cpp's clip mmproj GGUF beside the text encoder's GGUF
(quant/mmproj_names.py): its name, KV, tensor names, shapes and types as llama.cpp's
convert_hf_to_gguf.py (Qwen2VLVisionModel) writes them, and read back by ComfyUI-GGUF's own
gguf_clip_loader / gguf_mmproj_loader (comfy stubbed, as in test_comfyui_gguf.py; skipped, saying
why, where its loader is not present). A tiny Qwen2_5_VLForConditionalGeneration (vision width 32,
one block) in ComfyUI's names."""

from __future__ import annotations

import json

import gguf
import pytest
import torch
from safetensors.torch import save_file

from ckptkit.quant import mmproj_names
from tests.cli import ok, run
from tests.quant.test_comfyui_gguf import comfy_gguf  # noqa: F401 (the fixture: ComfyUI-GGUF's loader)
from tests.quant.test_llm_text_encoders import _state, _tiny, comfy_names

# what convert_hf_to_gguf.py's Qwen2VLVisionModel names a one-block tower, with torch shapes
VISION = {
    "v.patch_embd.weight": (32, 3, 14, 14), "v.patch_embd.weight.1": (32, 3, 14, 14),
    **{f"v.blk.0.attn_{x}.weight": (32, 32) for x in "qkv"}, **{f"v.blk.0.attn_{x}.bias": (32,) for x in "qkv"},
    "v.blk.0.attn_out.weight": (32, 32), "v.blk.0.attn_out.bias": (32,),
    "v.blk.0.ffn_gate.weight": (64, 32), "v.blk.0.ffn_gate.bias": (64,), "v.blk.0.ffn_up.weight": (64, 32),
    "v.blk.0.ffn_up.bias": (64,), "v.blk.0.ffn_down.weight": (32, 64), "v.blk.0.ffn_down.bias": (32,),
    "v.blk.0.ln1.weight": (32,), "v.blk.0.ln2.weight": (32,), "v.post_ln.weight": (32,),
    "mm.0.weight": (128, 128), "mm.0.bias": (128,), "mm.2.weight": (64, 128), "mm.2.bias": (64,),
}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The tiny model in ComfyUI's text-encoder names (`model.` text tower, `visual.` vision tower),
    and its config.json."""
    model = _tiny("qwen25vl")
    folder = tmp_path_factory.mktemp("src")
    state = comfy_names(_state(model))
    save_file(state, str(folder / "qwen25vl.safetensors"))
    (folder / "config.json").write_text(json.dumps(model.config.to_dict()))
    return folder, state


def _kv(reader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_mmproj_written_beside_the_text_encoder(source, tmp_path):
    folder, state = source
    out = tmp_path / "te.gguf"
    result = ok(run("quantize", folder / "qwen25vl.safetensors", "-o", out, "--type", "q8_0",
                    "--config", folder / "config.json"))
    mm = tmp_path / "te-mmproj-Q8_0.gguf"
    assert mm.is_file() and mmproj_names.comfy_finds(out.name, mm.name)
    assert "the vision tower (18 tensors) is written to te-mmproj-Q8_0.gguf" in result.output
    reader = gguf.GGUFReader(mm)
    kv = _kv(reader)
    assert kv["general.architecture"] == "clip" and kv["general.type"] == "mmproj"
    assert kv["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0 and kv["general.quantization_version"] == 2
    assert kv["clip.projector_type"] == "qwen2.5vl_merger" and kv["clip.has_vision_encoder"] and kv["clip.use_silu"]
    assert {k: kv[f"clip.vision.{k}"] for k in ("embedding_length", "feed_forward_length", "block_count",
                                                "projection_dim", "patch_size", "image_size",
                                                "attention.head_count", "n_wa_pattern")} == {
        "embedding_length": 32, "feed_forward_length": 64, "block_count": 1, "projection_dim": 64, "patch_size": 14,
        "image_size": 560, "attention.head_count": 2, "n_wa_pattern": 1}  # heads and pattern from --config
    assert kv["clip.vision.attention.layer_norm_epsilon"] == pytest.approx(1e-6)
    assert kv["clip.vision.image_mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert kv["clip.vision.image_std"] == pytest.approx([0.26862954, 0.26130258, 0.27577711])
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
    assert shapes == VISION
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    for name, shape in VISION.items():  # the converter's --outtype q8_0: 2-D weights Q8_0, patch halves F32
        want = "Q8_0" if len(shape) == 2 else "F32"
        assert types[name] == want, name
    te_names = {t.name for t in gguf.GGUFReader(out).tensors}
    assert not any(n.startswith(("v.", "mm.")) for n in te_names) and "blk.0.attn_q.weight" in te_names


def test_other_types_give_an_f16_mmproj_listed_in_the_manifest(source, tmp_path):
    """llama.cpp writes no mmproj at Q4/K-quant types: the mmproj is F16 (patch embedding F16 too);
    --dry-run shows it, the warning names the KV llama.cpp needs that neither a config nor the
    tower's shape gives, and a component set's manifest lists it (role mmproj)."""
    folder, _ = source
    src = folder / "qwen25vl.safetensors"
    result = ok(run("quantize", src, "-o", tmp_path / "Qwen-TE-Q4_K_M.gguf", "--type", "q4_k_m", "--dry-run"))
    assert "Qwen-TE-mmproj-F16.gguf  [qwen25vl_mmproj, comfy]  23 tensors" in result.output
    assert "clip.vision.attention.head_count, clip.vision.n_wa_pattern not written" in result.output
    assert not list(tmp_path.iterdir())
    ok(run("quantize", src, "-o", tmp_path / "set", "--type", "q4_k_m"))
    manifest = json.loads((tmp_path / "set" / "ckptkit.json").read_text())["components"]
    assert manifest["qwen25vl"]["file"] == "qwen25vl.gguf"
    mm = manifest["qwen25vl_mmproj"]
    assert mm["role"] == "mmproj" and mm["file"] == "qwen25vl-mmproj-F16.gguf"
    assert mm["dtypes"] == {"F16": 11, "F32": 12}
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "set" / mm["file"]).tensors}
    assert all(types[n] == ("F16" if len(shape) > 1 else "F32") for n, shape in VISION.items())
    assert mmproj_names.comfy_finds("Qwen-TE-Q4_K_M.gguf", "Qwen-TE-mmproj-F16.gguf")
    assert mmproj_names.tensor_type("v.patch_embd.weight", (32, 3, 14, 14), "BF16")[0] == "F32"
    assert mmproj_names.tensor_type("mm.0.weight", (128, 100), "Q8_0")[0] == "F16"  # rows not whole blocks
    assert mmproj_names.unfit(["visual.blocks.0.mlp.fc1.weight", "visual.patch_embed.proj.weight"])  # Qwen2-VL's


@pytest.mark.parametrize("qtype", ["f16", "q8_0"])
def test_comfyui_gguf_reads_the_vision_tower_back(comfy_gguf, source, tmp_path, qtype):  # noqa: F811
    """ComfyUI-GGUF's gguf_clip_loader on the text encoder finds the mmproj by name and hands back
    every source tensor under its ComfyUI name: the 5-D patch embedding and the fused qkv rebuilt;
    exact for what is stored F16/F32, within Q8_0's step (and the bf16 its q/k/v join goes through)."""
    loader, dequant = comfy_gguf
    folder, state = source
    ok(run("quantize", folder / "qwen25vl.safetensors", "-o", tmp_path / "te.gguf", "--type", qtype))
    sd = loader.gguf_clip_loader(str(tmp_path / "te.gguf"))
    # the loader joins q/k/v into attn.qkv but leaves the split ones in its dict (ComfyUI ignores them)
    leftover = {f"visual.blocks.0.attn_{x}.{s}" for x in "qkv" for s in ("weight", "bias")}
    assert set(sd) == set(state) | leftover
    for name, want in state.items():
        t = sd[name]
        got = (dequant.dequantize_tensor(t, dtype=torch.float32) if hasattr(t, "tensor_type") else t).float()
        assert tuple(got.shape) == tuple(want.shape), name
        ref = want.float()
        if qtype == "f16" or want.ndim == 1 or name in ("visual.patch_embed.proj.weight", "model.embed_tokens.weight"):
            assert torch.equal(got, ref), name  # stored F16 / F32 (patch embedding, norms, biases, embedding): exact
        else:
            amax = float(ref.abs().max())
            assert float((got - ref).abs().max()) <= amax / 127 + amax / 256, name
