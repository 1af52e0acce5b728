"""A model no family spec knows is never a dead end: `quantize` applies the rules every family
shares (2-D+ layer weights quantized; 1-D, small, bias, norm and embedding tensors kept; rows that
do not divide fall back) with ggml's exact bytes, `--arch` names general.architecture, `verify`
checks integrity, coverage and every tensor (layout and 1-step reported as skipped, never passed),
and `inspect` describes it by prefix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from gguf import GGUFReader

from ckptkit.cli import cli
from ckptkit.formats.safetensors import save_safetensors
from tests.conftest import VECTORS

NPZ = VECTORS / "ggml" / "ggml_reference_vectors.npz"
# request -> the ggml type every made-up weight must be stored in (the _s K-quants: no up-typing)
REQUESTS = {"f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q5_1": "Q5_1", "q5_0": "Q5_0", "q4_1": "Q4_1",
            "q4_0": "Q4_0", "q6_k": "Q6_K", "q5_k_s": "Q5_K", "q4_k_s": "Q4_K", "q3_k_s": "Q3_K", "q2_k": "Q2_K"}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def made_up(tmp_path_factory):
    """ggml's reference inputs as layer weights of a made-up model, with the tensors every family
    keeps: a norm, a bias, an embedding, a 1-D scale."""
    if not NPZ.exists():
        pytest.fail(f"{NPZ} is missing: tests need ../shared beside the checkout")
    with np.load(NPZ) as z:
        data = {k: z[k] for k in z.files}
    dists = sorted({k.split("/")[0] for k in data})
    state = {"tok_embeddings.weight": torch.randn(64, 1024, generator=torch.Generator().manual_seed(0))}
    for i, dist in enumerate(dists):
        state[f"layers.{i}.{dist}.weight"] = torch.from_numpy(data[f"{dist}/input"].copy())
        state[f"layers.{i}.ffn_norm.weight"] = torch.ones(1024)
        state[f"layers.{i}.{dist}.bias"] = torch.zeros(16)
    root = tmp_path_factory.mktemp("made_up")
    path = root / "made_up.safetensors"
    save_safetensors(path, state)
    return path, data, dists


def _raw(tensor) -> bytes:
    return np.ascontiguousarray(tensor.data).view(np.uint8).tobytes()


@pytest.mark.parametrize("request_name", REQUESTS)
def test_unknown_model_quantizes_to_every_type_with_ggml_bytes(made_up, tmp_path, request_name):
    path, data, dists = made_up
    out = tmp_path / "q.gguf"
    result = run("quantize", path, "-o", out, "--type", request_name, "--arch", "made-up-net")
    assert result.exit_code == 0, result.output
    reader = GGUFReader(out)
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "made-up-net"
    tensors = {t.name: t for t in reader.tensors}
    qtype = REQUESTS[request_name]
    for i, dist in enumerate(dists):
        t = tensors[f"layers.{i}.{dist}.weight"]
        assert t.tensor_type.name == qtype
        assert _raw(t) == data[f"{dist}/{qtype}"].tobytes(), f"{dist}: {qtype} bytes differ from ggml's"
        assert tensors[f"layers.{i}.ffn_norm.weight"].tensor_type.name == "F32"  # 1-D, kept
        assert tensors[f"layers.{i}.{dist}.bias"].tensor_type.name == "F32"
    if qtype not in ("F16", "BF16"):
        assert tensors["tok_embeddings.weight"].tensor_type.name == "F16"  # embedding kept (as llama.cpp's F16)
    verify = run("verify", out, "--against", path, "--json")
    assert verify.exit_code == 0, verify.output
    report = json.loads(verify.stdout)
    rows = {(r["check"], r["metric"]): r for r in report["results"]}
    assert rows["layout", "tensors"]["passed"] is None and "unknown family" in rows["layout", "tensors"]["detail"]
    assert rows["onestep", "run"]["passed"] is None and "unknown family" in rows["onestep", "run"]["detail"]
    assert rows["numeric", "min_cosine"]["passed"] is True and rows["integrity", "readable"]["passed"] is True


def test_without_arch_it_warns_that_comfyui_gguf_will_not_load_it(made_up, tmp_path):
    path, *_ = made_up
    result = run("quantize", path, "-o", tmp_path / "q.gguf", "--type", "q8_0")
    assert result.exit_code == 0, result.output
    assert "ComfyUI-GGUF refuses to load" in result.stderr and "--arch" in result.stderr
    arch = GGUFReader(tmp_path / "q.gguf").fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "unknown"
    bad = run("quantize", path, "-o", tmp_path / "r.gguf", "--type", "q8_0", "--arch", "a b\n")
    assert bad.exit_code == 2 and "--arch" in bad.stderr and not (tmp_path / "r.gguf").exists()


def test_a_broken_quantizer_fails_verify_on_an_unknown_model(made_up, tmp_path):
    """The gate still bites without a family: every Q8_0 block scale doubled fails the numeric check."""
    from ckptkit.fixtures import damage

    path, *_ = made_up
    out = tmp_path / "q.gguf"
    assert run("quantize", path, "-o", out, "--type", "q8_0", "--arch", "x").exit_code == 0
    broken = damage.rewrite_gguf(out, tmp_path / "broken.gguf", damage.broken_scales("Q8_0"))
    result = run("verify", broken, "--against", path, "--json")
    assert result.exit_code == 1
    failed = {(r["check"], r["metric"]) for r in json.loads(result.stdout)["results"] if r["passed"] is False}
    assert ("numeric", "max_rel_rms") in failed


def test_inspect_describes_an_unknown_model_by_prefix(made_up):
    path, *_ = made_up
    result = run("inspect", path, "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["family"] is None
    groups = {g["prefix"]: g for g in report["groups"]}
    assert set(groups) == {"layers.", "tok_embeddings."}
    assert groups["layers."]["tensors"] == 3 * 6 and groups["layers."]["dtypes"] == {"F32": groups["layers."]["bytes"]}
    assert any(p["code"] == "unknown_family" for p in report["problems"])
