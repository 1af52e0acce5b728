"""`--imatrix ones|FILE`: ggml's weighted search, byte for byte, per tensor (quant/imatrix.py).

`ones` is what stable-diffusion.cpp's convert passes to ggml, so its K-quant bytes come from here;
a FILE in sd.cpp's imatrix layout weighs the tensors it names (keyed by sd.cpp's names), the rest
all ones, as sd.cpp does. Hostile imatrix files are one line, exit 2."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGUFReader
from safetensors.numpy import load_file

from ckptkit.cli import cli
from ckptkit.fixtures import factory
from ckptkit.quant import ggml, imatrix

NAME = "input_blocks.4.1.proj_in.weight"  # a 2-D SDXL layer weight, quantized as it is


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return factory.write_bundle("sdxl", tmp_path_factory.mktemp("imatrix") / "sdxl.safetensors")


def tensor_bytes(path, name):
    t = next(t for t in GGUFReader(path).tensors if t.name == name)
    return t.tensor_type.name, np.asarray(t.data).reshape(-1).view(np.uint8)


def source(bundle, name):
    return load_file(bundle)["model.diffusion_model." + name].astype(np.float32)


def test_ones_is_ggml_weighted_search(bundle, tmp_path):
    for args, out in (((), "plain"), (("--imatrix", "ones"), "ones")):
        result = run("quantize", bundle, "-o", tmp_path / out, "--type", "q4_k_m", *args)
        assert result.exit_code == 0, result.output
    assert "importance weights (all ones, as stable-diffusion.cpp's convert passes them)" in result.output
    x = source(bundle, NAME)
    kind, got = tensor_bytes(tmp_path / "ones" / "diffusion_model.gguf", NAME)
    want = ggml.quantize(x, kind, weights=np.ones(x.shape[1], np.float32)).reshape(-1)
    assert np.array_equal(got, want)
    assert not np.array_equal(tensor_bytes(tmp_path / "plain" / "diffusion_model.gguf", NAME)[1], want)
    # Q8_0 has no weighted search: the same bytes either way
    for args, out in (((), "q8"), (("--imatrix", "ones"), "q8w")):
        assert run("quantize", bundle, "-o", tmp_path / out, "--type", "q8_0", *args).exit_code == 0
    assert (tmp_path / "q8" / "diffusion_model.gguf").read_bytes() == (tmp_path / "q8w" / "diffusion_model.gguf").read_bytes()


def test_a_file_weighs_the_tensors_it_names(bundle, tmp_path):
    x = source(bundle, NAME)
    w = (np.random.default_rng(0).random(x.shape[1]) * 9).astype(np.float32)
    imatrix.write_file(tmp_path / "a.dat", {"model.diffusion_model." + NAME: w / 2})
    imatrix.write_file(tmp_path / "b.dat", {"model.diffusion_model." + NAME: w / 2, "cond_stage_model.x.weight": w})
    result = run("quantize", bundle, "-o", tmp_path / "q", "--type", "q4_0", "--imatrix",
                 f"{tmp_path / 'a.dat'},{tmp_path / 'b.dat'}")
    assert result.exit_code == 0, result.output
    assert "1 of " in result.output and "quantized tensors have an entry" in result.output
    kind, got = tensor_bytes(tmp_path / "q" / "diffusion_model.gguf", NAME)
    assert kind == "Q4_0" and np.array_equal(got, ggml.quantize(x, "Q4_0", weights=w).reshape(-1))  # summed
    other = "output_blocks.2.1.proj_in.weight"
    y = source(bundle, other)
    assert np.array_equal(tensor_bytes(tmp_path / "q" / "diffusion_model.gguf", other)[1],
                          ggml.quantize(y, "Q4_0", weights=np.ones(y.shape[1], np.float32)).reshape(-1))


@pytest.mark.parametrize("raw, message", [
    (b"", "entry count runs past the end"),
    (struct.pack("<i", 0), "0 entries cannot fit"),
    (struct.pack("<ii", 1, 5) + b"abc", "1 entries cannot fit in 11 bytes"),
    (struct.pack("<ii", 1, 50) + b"abc" * 10, "name runs past the end"),
    (struct.pack("<ii", 1, 1) + b"a" + struct.pack("<ii", 1, 1 << 28), "values runs past the end"),
    (struct.pack("<ii", 1, 1) + b"a" + struct.pack("<ii", 1, 1) + struct.pack("<f", float("nan")), "finite"),
    (struct.pack("<ii", 1, 1) + b"a" + struct.pack("<ii", 1, 1) + struct.pack("<f", 1.0) + b"xxxxxxx", "bytes after"),
])
def test_hostile_imatrix_files_are_one_line(bundle, tmp_path, raw, message):
    (tmp_path / "bad.dat").write_bytes(raw)
    result = run("quantize", bundle, "-o", tmp_path / "q", "--type", "q4_k_m", "--imatrix", tmp_path / "bad.dat")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and not (tmp_path / "q").exists()
