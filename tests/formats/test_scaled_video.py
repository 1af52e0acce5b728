"""Video checkpoints as ComfyUI ships them pre-quantized: `wan2.1_t2v_1.3B_fp8_scaled.safetensors`
(the transformer alone, bare original names, scaled fp8 Linear weights, the `scaled_fp8` marker; the
5-D Conv3d patch embedding and the 3-D modulation tables stay bf16) and
`umt5_xxl_fp8_e4m3fn_scaled.safetensors` (the UMT5-XXL encoder in transformers names). Built as
ComfyUI writes them (fixtures/quantized.py): detected, quantized to the same GGUF bytes as their
dequantized bf16 values, and passed by verify's 1-step video check against those values."""

from __future__ import annotations

import pytest
import torch

from ckptkit import pipeline
from ckptkit.fixtures.factory import diffusers_state, original_state, shipped_configs
from ckptkit.fixtures.quantized import comfy_dequantized, comfy_scaled, linear_weights
from ckptkit.formats import open_checkpoint
from ckptkit.formats.safetensors import save_safetensors
from ckptkit.formats.scaled import detect_scheme
from ckptkit.inspect import inspect_checkpoint
from ckptkit.quant.policy import Policy


def _scaled_pair(folder, state, weights, configs, stem, style="old"):
    """(scaled file, the bf16 file of its dequantized values, the scaled tensors)."""
    tensors, meta = comfy_scaled(state, weights, style)
    scaled = folder / f"{stem}_fp8_scaled.safetensors"
    save_safetensors(scaled, tensors, {**configs, **meta})
    scale = "scale_weight" if style == "old" else "weight_scale"
    plain = {n: comfy_dequantized(t, tensors[f"{n[:-len('.weight')]}.{scale}"], torch.bfloat16) if n in weights else t
             for n, t in tensors.items() if n not in ("scaled_fp8",) and not n.endswith((".scale_weight", ".scale_input",
                                                                                           ".weight_scale", ".comfy_quant"))}
    bf16 = folder / f"{stem}_bf16.safetensors"
    save_safetensors(bf16, plain, configs)
    return scaled, bf16, tensors


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan_scaled")
    state = {n: t.to(torch.bfloat16) for n, t in original_state("wan", "diffusion_model").items()}
    weights = linear_weights(state, "")
    return (*_scaled_pair(folder, state, weights, shipped_configs("wan", ["diffusion_model"]), "wan"), weights)


@pytest.fixture(scope="module")
def umt5(tmp_path_factory):
    folder = tmp_path_factory.mktemp("umt5_scaled")
    state = {n: t.to(torch.bfloat16) for n, t in diffusers_state("wan", "umt5xxl").items()}
    # ComfyUI's umt5_xxl_fp8_e4m3fn_scaled keeps the embedding and norms in bf16: the block Linears only
    weights = [n for n in linear_weights(state, "") if n.startswith("encoder.block.")]
    return (*_scaled_pair(folder, state, weights, shipped_configs("wan", ["umt5xxl"]), "umt5"), weights)


def test_the_wan_transformer_is_read_as_scaled_fp8_and_detected(wan):
    scaled, _, tensors, weights = wan
    assert tensors["patch_embedding.weight"].ndim == 5 and tensors["patch_embedding.weight"].dtype == torch.bfloat16
    with open_checkpoint(scaled) as ck:
        scheme = detect_scheme(ck)
        assert scheme.name == "comfy-scaled-fp8" and set(scheme.layers) == set(weights)
        assert ck.tensors["blocks.0.self_attn.q.weight"].dtype == "F8_E4M3"
    report = inspect_checkpoint(scaled)
    assert (report.family, report.variant) == ("wan", "t2v")
    dm = next(c for c in report.components if c.name == "diffusion_model")
    assert dm.quantization["scheme"] == "comfy-scaled-fp8"


def _same_gguf(a, b):
    with open_checkpoint(a) as ga, open_checkpoint(b) as gb:
        assert list(ga.tensors) == list(gb.tensors)
        for name in ga.tensors:
            assert ga.tensors[name].dtype == gb.tensors[name].dtype, name
            assert ga.tensors[name].shape == gb.tensors[name].shape, name
            assert bytes(ga.stored_bytes(name)) == bytes(gb.stored_bytes(name)), name
        return dict(ga.tensors)


def test_wan_gguf_from_scaled_fp8_equals_gguf_from_its_values(wan, tmp_path):
    scaled, bf16, _, weights = wan
    for src, out in ((scaled, "a.gguf"), (bf16, "b.gguf")):
        pipeline.quantize(src, tmp_path / out, Policy(diffusion_model="q8_0"))
    infos = _same_gguf(tmp_path / "a.gguf", tmp_path / "b.gguf")
    assert not any("scale" in n for n in infos)
    # the 5-D patch embedding as ComfyUI-GGUF's fix_5d_tensors writes it, the Linears quantized
    assert infos["patch_embedding.weight"].dtype == "F32" and len(infos["patch_embedding.weight"].shape) == 5
    assert sum(infos[w].dtype == "Q8_0" for w in weights) >= len(weights) // 2


def test_umt5_gguf_from_scaled_fp8_equals_gguf_from_its_values(umt5, tmp_path):
    scaled, bf16, _, weights = umt5
    with open_checkpoint(scaled) as ck:
        assert detect_scheme(ck).name == "comfy-scaled-fp8"
    report = inspect_checkpoint(scaled)
    # the generic UMT5 signature: the tiny encoder is not 4096 wide as UMT5-XXL is
    assert [c.name for c in report.components] == ["umt5"]
    for src, out in ((scaled, "a.gguf"), (bf16, "b.gguf")):  # --type: the one component of the file
        pipeline.quantize(src, tmp_path / out, Policy(diffusion_model="q8_0"))
    infos = _same_gguf(tmp_path / "a.gguf", tmp_path / "b.gguf")
    assert any(info.dtype == "Q8_0" for info in infos.values())


def test_verify_passes_the_scaled_wan_against_its_values_and_fails_wrong_scales(wan, tmp_path):
    from ckptkit.verify import VerifyOptions, run_verify

    scaled, bf16, tensors, _ = wan
    report = run_verify(scaled, VerifyOptions(against=str(bf16), device="cpu"))
    assert report.passed, [(r.check, r.component, r.metric, r.detail) for r in report.results if r.passed is False]
    onestep = [r for r in report.results if r.check == "onestep" and r.component == "diffusion_model"]
    assert onestep and all(r.passed for r in onestep)
    broken = {n: (t * 2 if n.endswith(".scale_weight") else t) for n, t in tensors.items()}
    path = tmp_path / "broken.safetensors"
    save_safetensors(path, broken, {**shipped_configs("wan", ["diffusion_model"])})
    bad = run_verify(path, VerifyOptions(against=str(bf16), device="cpu"))
    assert bad.exit_code == 1
    assert ("numeric", "diffusion_model", "max_rel_rms") in {(r.check, r.component, r.metric)
                                                             for r in bad.results if r.passed is False}
