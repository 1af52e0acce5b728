"""`quantize --to comfy`: ComfyUI's mixed-precision safetensors, written per component with the
GGUF policy's high-precision rules. The bytes equal an independent implementation of ComfyUI's
writer and comfy_kitchen's quantizer (fixtures/quantized.py), the files read back through
formats/scaled.py, and `verify` passes the set."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from ckptkit.cli import cli
from ckptkit.fixtures.factory import write_bundle
from ckptkit.fixtures.quantized import quantize_fp8, quantize_int8
from ckptkit.formats import open_checkpoint
from ckptkit.formats.scaled import detect_scheme

DM = "model.diffusion_model."


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return write_bundle("sdxl", tmp_path_factory.mktemp("comfyq") / "sdxl.safetensors", dtype=torch.bfloat16)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("type_name, fmt", [("fp8_e4m3", "float8_e4m3fn"), ("fp8_e5m2", "float8_e5m2"),
                                            ("int8", "int8_tensorwise")])
def test_bytes_equal_comfyuis_quantizer(bundle, tmp_path, type_name, fmt):
    out = tmp_path / "set"
    result = run("quantize", bundle, "-o", out, "--to", "comfy", "--type", type_name)
    assert result.exit_code == 0, result.output
    with open_checkpoint(bundle) as src, open_checkpoint(out / "diffusion_model.safetensors") as ck:
        layers = json.loads(ck.metadata["_quantization_metadata"])["layers"]
        scheme = detect_scheme(ck)
        assert scheme.name == "comfy-mixed" and set(scheme.formats()) == {fmt}
        assert set(layers) == {w[: -len(".weight")] for w in scheme.layers} and len(layers) > 100
        for layer in list(layers)[:40]:
            w = src.load(DM + layer + ".weight")
            q, scale = quantize_int8(w) if type_name == "int8" else \
                quantize_fp8(w, torch.float8_e4m3fn if type_name == "fp8_e4m3" else torch.float8_e5m2)
            got = ck.load(layer + ".weight")
            assert got.dtype == q.dtype and torch.equal(got.view(torch.uint8), q.view(torch.uint8)), layer
            assert torch.equal(ck.load(layer + ".weight_scale"), scale), layer
        # what the policy keeps high precision stays as stored (norms, biases, embeddings, convs)
        kept = [n for n, info in ck.tensors.items() if info.dtype == "BF16"]
        assert kept and all(n[: -len(".weight")] not in layers for n in kept)
    manifest = json.loads((out / "ckptkit.json").read_text())
    policy = manifest["components"]["diffusion_model"]["policy"]
    assert policy["requested"] == type_name and policy["backend"] == "comfy"
    assert policy["quantized_tensors"] == len(layers)
    assert manifest["components"]["vae"]["policy"]["requested"] == "keep"


def test_the_set_verifies_and_a_text_encoder_too(bundle, tmp_path):
    out = tmp_path / "set"
    result = run("quantize", bundle, "-o", out, "--to", "comfy", "--type", "fp8", "--component", "clip_g=fp8_e4m3")
    assert result.exit_code == 0, result.output
    verified = run("verify", out, "--against", bundle, "--device", "cpu", "--json")
    assert verified.exit_code == 0, verified.output
    rows = {(r["check"], r["component"], r["metric"]): r for r in json.loads(verified.stdout)["results"]}
    assert rows[("coverage", "diffusion_model", "quantized")]["passed"] is True
    assert rows[("coverage", "clip_g", "quantized")]["passed"] is True
    assert rows[("coverage", "clip_g", "types_recorded")]["passed"] is True


def test_a_set_whose_manifest_lies_about_the_format_fails(bundle, tmp_path):
    out = tmp_path / "set"
    assert run("quantize", bundle, "-o", out, "--to", "comfy", "--type", "fp8_e4m3").exit_code == 0
    manifest = json.loads((out / "ckptkit.json").read_text())
    manifest["components"]["diffusion_model"]["policy"]["requested"] = "int8"
    (out / "ckptkit.json").write_text(json.dumps(manifest))
    verified = run("verify", out, "--json")
    assert verified.exit_code == 1
    rows = {(r["check"], r["component"], r["metric"]): r for r in json.loads(verified.stdout)["results"]}
    assert rows[("coverage", "diffusion_model", "quantized")]["passed"] is False


@pytest.mark.parametrize("args, words", [
    (["--type", "fp8_e4m3", "--rule", "x=q8_0"], "--to comfy takes --type and --component only"),
    (["--type", "q8_0"], "unknown type 'q8_0'"),
    (["--type", "fp8_e4m3", "--component", "vae=fp8_e4m3"], "a VAE is not quantized"),
])
def test_refusals(bundle, tmp_path, args, words):
    result = run("quantize", bundle, "-o", tmp_path / "o", "--to", "comfy", *args)
    assert result.exit_code == 2 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
