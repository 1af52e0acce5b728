"""Quantized safetensors read as values (formats/scaled.py): ComfyUI's scaled fp8 in its old and
new styles, built as ComfyUI writes them (fixtures/quantized.py), split, converted, quantized and
inspected; schemes not understood are refused with one line, never read as plain weights."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from ckptkit import pipeline
from ckptkit.cli import cli
from ckptkit.convert.split import SplitOptions
from ckptkit.fixtures.factory import bundle_state, shipped_configs
from ckptkit.fixtures.quantized import STYLES, comfy_dequantized, comfy_scaled, linear_weights
from ckptkit.formats import open_checkpoint
from ckptkit.formats.safetensors import save_safetensors
from ckptkit.formats.scaled import Dequantized, detect_scheme, dequantizing
from ckptkit.quant.policy import Policy

DM = "model.diffusion_model."


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """style -> (path, tensors) of an SDXL bundle (bf16) whose UNet Linear weights are ComfyUI scaled fp8,
    and the plain bf16 state it was made from."""
    folder = tmp_path_factory.mktemp("scaled")
    state = bundle_state("sdxl", dtype=torch.bfloat16, junk=False)
    weights = linear_weights(state, DM)
    out = {}
    for style in STYLES:
        tensors, meta = comfy_scaled(state, weights, style, marker=DM)
        path = folder / f"{style}.safetensors"
        save_safetensors(path, tensors, {**shipped_configs("sdxl"), **meta})
        out[style] = (path, tensors)
    out["weights"] = weights
    out["folder"] = folder
    return out


def _scale(tensors, weight, style):
    layer = weight[: -len(".weight")]
    return tensors[f"{layer}.scale_weight" if style == "old" else f"{layer}.weight_scale"]


@pytest.mark.parametrize("style", STYLES)
def test_detected_with_every_layer(sdxl, style):
    path, tensors = sdxl[style]
    with open_checkpoint(path) as ck:
        scheme = detect_scheme(ck)
    assert scheme.name == ("comfy-scaled-fp8" if style == "old" else "comfy-mixed")
    assert set(scheme.layers) == set(sdxl["weights"])
    assert set(scheme.formats()) == {"float8_e4m3fn"}
    scales = {n for n in tensors if n.endswith((".scale_weight", ".weight_scale", ".scale_input", ".comfy_quant"))}
    assert scheme.aux == scales | ({DM + "scaled_fp8"} if style == "old" else set())


@pytest.mark.parametrize("style", STYLES)
def test_split_with_a_cast_dequantizes_as_comfyui(sdxl, style, tmp_path):
    """--dtype bf16 gives weight.to(bf16) * scale.to(bf16) (comfy/ops.py), not the fp8 values cast,
    which are off by amax / 448 (x1000s)."""
    path, tensors = sdxl[style]
    pipeline.split(path, tmp_path / "out", SplitOptions(layout="comfy", dtype="bf16"))
    with open_checkpoint(tmp_path / "out" / "diffusion_model.safetensors") as ck:
        assert not any(n.endswith(("scale_weight", "weight_scale", "comfy_quant", "scaled_fp8")) for n in ck.tensors)
        for weight in sdxl["weights"]:
            got = ck.load(weight[len(DM):])
            want = comfy_dequantized(tensors[weight], _scale(tensors, weight, style), torch.bfloat16)
            assert got.dtype == torch.bfloat16 and torch.equal(got, want), weight
        naive = tensors[sdxl["weights"][0]].to(torch.bfloat16)
        ratio = float(naive.float().abs().max() / ck.load(sdxl["weights"][0][len(DM):]).float().abs().max())
        assert ratio > 100  # what reading the stored values as weights would have written


@pytest.mark.parametrize("style", STYLES)
def test_plain_split_keeps_bytes_and_scales_together(sdxl, style, tmp_path):
    path, tensors = sdxl[style]
    pipeline.split(path, tmp_path / "out", SplitOptions(layout="comfy"))
    with open_checkpoint(tmp_path / "out" / "diffusion_model.safetensors") as ck:
        for name, t in tensors.items():
            if name.startswith(DM):
                got = ck.load(name[len(DM):])
                assert got.dtype == t.dtype and torch.equal(got.reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), name
        scheme = detect_scheme(ck)  # ComfyUI reads the component file as the same scheme
        assert set(scheme.layers) == {w[len(DM):] for w in sdxl["weights"]}
        if style == "header":
            layers = json.loads(ck.metadata["_quantization_metadata"])["layers"]
            assert set(layers) == {w[len(DM):-len(".weight")] for w in sdxl["weights"]}
        if style == "old":
            assert ck.tensors["scaled_fp8"].dtype == "F8_E4M3" and ck.tensors["scaled_fp8"].shape == (0,)


def test_diffusers_layout_gets_values(sdxl, tmp_path):
    path, tensors = sdxl["old"]
    pipeline.split(path, tmp_path / "d", SplitOptions(layout="diffusers"))
    with open_checkpoint(tmp_path / "d" / "unet" / "diffusion_pytorch_model.safetensors") as ck:
        assert {info.dtype for info in ck.tensors.values()} <= {"BF16", "F32", "I64"}
        assert not any("scale" in n for n in ck.tensors)


def test_gguf_from_scaled_equals_gguf_from_its_dequantized_bf16(sdxl, tmp_path):
    path, tensors = sdxl["tensor"]
    plain = {}
    for name, t in tensors.items():
        if name.endswith((".weight_scale", ".comfy_quant")):
            continue
        plain[name] = comfy_dequantized(t, _scale(tensors, name, "tensor"), torch.bfloat16) \
            if name in sdxl["weights"] else t
    bf16 = tmp_path / "bf16.safetensors"
    save_safetensors(bf16, plain, shipped_configs("sdxl"))
    for src, out in ((path, "a"), (bf16, "b")):
        pipeline.quantize(src, tmp_path / out, Policy(diffusion_model="q8_0"))
    with open_checkpoint(tmp_path / "a" / "diffusion_model.gguf") as a, \
            open_checkpoint(tmp_path / "b" / "diffusion_model.gguf") as b:
        assert list(a.tensors) == list(b.tensors)
        for name in a.tensors:
            assert a.tensors[name].dtype == b.tensors[name].dtype, name
            assert bytes(a.stored_bytes(name)) == bytes(b.stored_bytes(name)), name


def test_inspect_shows_the_scheme(sdxl):
    path, _ = sdxl["old"]
    result = CliRunner().invoke(cli, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    comps = {c["name"]: c for c in json.loads(result.stdout)["components"]}
    q = comps["diffusion_model"]["quantization"]
    n = len(sdxl["weights"])
    assert q == {"scheme": "comfy-scaled-fp8", "formats": {"float8_e4m3fn": n}, "quantized": n, "scales": 2 * n + 1}
    assert comps["clip_l"]["quantization"] is None
    text = CliRunner().invoke(cli, ["inspect", str(path)]).stdout
    assert f"quantization of diffusion_model: comfy-scaled-fp8, {n} quantized weights" in text


def test_dequantized_view_in_another_dtype(sdxl):
    path, tensors = sdxl["old"]
    weight = sdxl["weights"][3]
    with open_checkpoint(path) as ck:
        view = dequantizing(ck, "F32")
        assert isinstance(view, Dequantized) and view.tensors[weight].dtype == "F32"
        want = tensors[weight].float() * _scale(tensors, weight, "old").float()
        assert torch.equal(view.load(weight), want)
        assert DM + "scaled_fp8" not in view.tensors


# --------------------------------------------------------------------------- refused, never guessed
def _write(tmp_path, tensors, metadata=None, name="bad.safetensors"):
    path = tmp_path / name
    save_safetensors(path, tensors, metadata or {})
    return path


REFUSED = {
    "scale on a bf16 weight": ({"a.weight": torch.ones(4, 4, dtype=torch.bfloat16), "a.weight_scale": torch.tensor(2.0)},
                               None, "without metadata saying how"),
    "block-scaled (musubi)": ({"a.weight": torch.ones(4, 4).to(torch.float8_e4m3fn),
                               "a.scale_weight": torch.ones(4, 2, 1)}, None, "one scale per tensor"),
    "nvfp4": ({"a.weight": torch.zeros(4, 2, dtype=torch.uint8), "a.weight_scale": torch.ones(1)},
              {"_quantization_metadata": json.dumps({"layers": {"a": {"format": "nvfp4"}}})}, "'nvfp4'"),
    "bitsandbytes state without its JSON": ({"a.weight": torch.zeros(8, 1, dtype=torch.uint8),
                                             "a.weight.absmax": torch.ones(1)}, None, "bitsandbytes/quanto"),
    "bitsandbytes state that is not JSON": ({"a.weight": torch.zeros(8, 1, dtype=torch.uint8),
                                             "a.weight.absmax": torch.ones(1),
                                             "a.weight.quant_state.bitsandbytes__nf4": torch.zeros(4, dtype=torch.uint8)},
                                            None, "not bitsandbytes' JSON"),
    "quanto 4-bit": ({"a.weight._data._data": torch.zeros(4, 4, dtype=torch.uint8), "a.weight._scale": torch.ones(8, 1),
                      "a.weight._shift": torch.zeros(8, 1)}, None, "shape is not in the file"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unknown_schemes_are_refused(tmp_path, case):
    tensors, metadata, words = REFUSED[case]
    path = _write(tmp_path, tensors, metadata)
    with open_checkpoint(path) as ck:
        with pytest.raises(Exception) as info:
            dequantizing(ck)
    assert words in str(info.value)
    result = CliRunner().invoke(cli, ["quantize", str(path), "-o", str(tmp_path / "q"), "--type", "q8_0"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output and not (tmp_path / "q").exists()
    shown = CliRunner().invoke(cli, ["inspect", str(path), "--json"])  # described, never a dead end
    assert shown.exit_code == 0
    assert any(p["code"] == "quantization_unknown" for p in json.loads(shown.stdout)["problems"])


def test_split_cast_of_a_refused_scheme_exits_2(tmp_path, sdxl):
    path, tensors = sdxl["old"]
    bad = dict(tensors)
    bad[DM + "out.0.scale_weight"] = torch.ones(3, 1)  # a scale whose weight is not fp8
    path = _write(tmp_path, bad, shipped_configs("sdxl"))
    result = CliRunner().invoke(cli, ["split", str(path), "-o", str(tmp_path / "o"), "--dtype", "bf16"])
    assert result.exit_code == 2 and result.stderr.startswith("ckptkit: error: "), result.output
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- verify takes them as candidates
@pytest.fixture(scope="module")
def reference(sdxl):
    path = sdxl["folder"] / "reference.safetensors"
    save_safetensors(path, bundle_state("sdxl", dtype=torch.bfloat16, junk=False), shipped_configs("sdxl"))
    return path


@pytest.mark.parametrize("style", STYLES)
def test_verify_passes_a_faithful_scaled_file(sdxl, reference, style):
    from ckptkit.verify import VerifyOptions, run_verify

    path, _ = sdxl[style]
    report = run_verify(path, VerifyOptions(against=str(reference), device="cpu"))
    assert report.passed, [(r.check, r.component, r.metric, r.detail) for r in report.results if r.passed is False]
    assert report.thresholds["diffusion_model"]["max_rel_rms"] == 0.05  # held to fp8 e4m3's limits
    types = report.tables["types:diffusion_model"]
    assert types["F8_E4M3"]["tensors"] == len(sdxl["weights"]) and "F8_E4M3" in types


def test_verify_fails_a_scaled_file_whose_scales_are_wrong(sdxl, reference, tmp_path):
    from ckptkit.verify import VerifyOptions, run_verify

    _, tensors = sdxl["old"]
    broken = {n: (t * 2 if n.endswith(".scale_weight") else t) for n, t in tensors.items()}
    path = _write(tmp_path, broken, shipped_configs("sdxl"))
    report = run_verify(path, VerifyOptions(against=str(reference), device="cpu"))
    failed = {(r.check, r.component, r.metric) for r in report.results if r.passed is False}
    assert ("numeric", "diffusion_model", "max_rel_rms") in failed
    assert report.exit_code == 1


def test_int8_tensorwise_reads_as_comfy_kitchen(tmp_path):
    state = bundle_state("sd1", dtype=torch.bfloat16, junk=False)
    weights = linear_weights(state, DM)
    tensors, meta = comfy_scaled(state, weights, "header", fp8=torch.int8)
    path = _write(tmp_path, tensors, {**shipped_configs("sd1"), **meta})
    with open_checkpoint(path) as ck:
        view = dequantizing(ck)
        assert view.scheme.formats() == {"int8_tensorwise": len(weights)}
        w = weights[0]
        want = (tensors[w].float() * tensors[w[:-len(".weight")] + ".weight_scale"]).to(torch.bfloat16)
        assert torch.equal(view.load(w), want)


# --------------------------------------------------------------------------- bitsandbytes and optimum-quanto
def _clip_state():
    from ckptkit.fixtures.factory import diffusers_state

    return {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in diffusers_state("sd1", "clip_l").items()}


def _linears(state):
    return [n for n, t in state.items() if n.endswith(".weight") and t.ndim == 2 and "embedding" not in n]


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("nested", [False, True])
def test_bitsandbytes_4bit_equals_its_own_dequantization(tmp_path, quant_type, nested):
    import bitsandbytes.functional as F

    state = _clip_state()
    out, refs = dict(state), {}
    for name in _linears(state):
        packed, qs = F.quantize_4bit(state[name], blocksize=64, quant_type=quant_type, compress_statistics=nested)
        out[name] = packed
        out.update({f"{name}.{k}": v for k, v in qs.as_dict(packed=True).items()})
        refs[name] = F.dequantize_4bit(packed, qs)
    path = _write(tmp_path, out)
    with open_checkpoint(path) as ck:
        view = dequantizing(ck)
        assert view.scheme.name == "bitsandbytes" and view.scheme.formats() == {quant_type: len(refs)}
        assert list(view.tensors) == list(state)  # every quantization state tensor absorbed
        for name, ref in refs.items():
            assert view.tensors[name].shape == tuple(state[name].shape)
            got = view.load(name)
            assert got.dtype == ref.dtype and torch.equal(got, ref), name


def test_bitsandbytes_int8_equals_its_own_dequantization(tmp_path):
    import bitsandbytes.functional as F

    state = {k: v.half() if v.is_floating_point() else v for k, v in _clip_state().items()}
    out, refs = dict(state), {}
    for name in _linears(state):
        cb, scb, _ = F.int8_vectorwise_quant(state[name])
        layer = name[: -len(".weight")]
        out[name], out[f"{layer}.SCB"] = cb, scb
        out[f"{layer}.weight_format"] = torch.tensor(0, dtype=torch.uint8)
        refs[name] = F.int8_vectorwise_dequant(cb, scb)
    path = _write(tmp_path, out)
    with open_checkpoint(path) as ck:
        view = dequantizing(ck)
        assert view.scheme.formats() == {"llm_int8": len(refs)}
        for name, ref in refs.items():
            assert torch.equal(view.load(name), ref.to(torch.float16)), name  # bitsandbytes' float32, then the file's dtype


@pytest.mark.parametrize("weights", ["qint8", "qfloat8"])
def test_quanto_8bit_equals_its_own_dequantization(tmp_path, weights):
    import optimum.quanto as quanto
    from transformers import CLIPTextConfig, CLIPTextModel

    from ckptkit.fixtures.configs import TINY

    model = CLIPTextModel(CLIPTextConfig(**TINY["sd1"]["clip_l"])).to(torch.bfloat16)
    quanto.quantize(model, weights=getattr(quanto, weights))
    quanto.freeze(model)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = _write(tmp_path, state)
    qlinears = {n: m for n, m in model.named_modules() if isinstance(getattr(m, "weight", None), quanto.QTensor)}
    assert qlinears
    with open_checkpoint(path) as ck:
        view = dequantizing(ck)
        assert view.scheme.name == "optimum-quanto" and len(view.scheme.layers) == len(qlinears)
        assert not any(n.endswith(("._data", "._scale", "input_scale", "output_scale")) for n in view.tensors)
        for name, module in qlinears.items():
            assert torch.equal(view.load(f"{name}.weight"), module.weight.dequantize()), name


def test_quantized_text_encoder_quantizes_like_its_values(tmp_path):
    """GGUF Q8_0 from a bitsandbytes nf4 CLIP-L file equals GGUF Q8_0 from its dequantized values."""
    import bitsandbytes.functional as F

    state = _clip_state()
    out, plain = dict(state), dict(state)
    for name in _linears(state):
        packed, qs = F.quantize_4bit(state[name], blocksize=64, quant_type="nf4")
        out[name] = packed
        out.update({f"{name}.{k}": v for k, v in qs.as_dict(packed=True).items()})
        plain[name] = F.dequantize_4bit(packed, qs)
    configs = shipped_configs("sd1", ["clip_l"])
    a, b = _write(tmp_path, out, configs, "nf4.safetensors"), _write(tmp_path, plain, configs, "plain.safetensors")
    for src, dst in ((a, "a.gguf"), (b, "b.gguf")):
        pipeline.quantize(src, tmp_path / dst, Policy(diffusion_model="q8_0", client="sdcpp"))
    with open_checkpoint(tmp_path / "a.gguf") as ga, open_checkpoint(tmp_path / "b.gguf") as gb:
        assert list(ga.tensors) == list(gb.tensors)
        assert sum(info.dtype == "Q8_0" for info in ga.tensors.values()) >= len(_linears(state)) // 2
        assert all(bytes(ga.stored_bytes(n)) == bytes(gb.stored_bytes(n)) for n in ga.tensors)


def test_quanto_packed_4bit_is_refused(tmp_path):
    path = _write(tmp_path, {"l.weight._data._data": torch.zeros(2, 128, dtype=torch.uint8),
                             "l.weight._scale": torch.ones(4, 1), "l.weight._shift": torch.zeros(4, 1)})
    with open_checkpoint(path) as ck:
        with pytest.raises(Exception, match="shape is not in the file"):
            dequantizing(ck)


def test_convert_of_a_scaled_component_file_gets_values(sdxl, tmp_path):
    """A plain split keeps the scaled component; converting that file to diffusers dequantizes it."""
    path, tensors = sdxl["tensor"]
    pipeline.split(path, tmp_path / "set", SplitOptions(layout="comfy"))
    pipeline.convert(tmp_path / "set" / "diffusion_model.safetensors", tmp_path / "unet", "diffusers")
    with open_checkpoint(tmp_path / "unet" / "diffusion_pytorch_model.safetensors") as ck:
        assert {info.dtype for info in ck.tensors.values()} == {"BF16"}
        assert not any("scale" in n or "comfy_quant" in n for n in ck.tensors)
        from ckptkit.families import get_family
        from ckptkit.convert.components import map_component

        with open_checkpoint(tmp_path / "set" / "diffusion_model.safetensors") as src:
            view = dequantizing(src)
            spec = get_family("sdxl").component("diffusion_model")
            ops = map_component(view, spec, "", "original", "diffusers", set(), None, strict=False).ops
            weight = sdxl["weights"][0]
            name = next(n for n, e in ops.items() if e.sources() == [weight[len(DM):]])
            want = comfy_dequantized(tensors[weight], _scale(tensors, weight, "tensor"), torch.bfloat16)
            assert torch.equal(ck.load(name), want)
