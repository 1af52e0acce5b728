"""GGUF client profiles (quant/clients.py): each file loads in the client it is written for.

diffusers: `from_single_file(FILE, config=DIR, quantization_config=GGUFQuantizationConfig(...))` loads
the diffusion model of every family, at the fixtures' non-released sizes (FLUX included, which
diffusers' own original-layout converter cannot split below 3072 wide), and computes what the
unquantized model computes. comfy: text encoders ComfyUI-GGUF cannot read from GGUF (CLIP) stay
safetensors and the run says so; an architecture its loader refuses is an error with --client comfy,
and by default is written for diffusers instead, said in the notes."""

from __future__ import annotations

import json

import pytest
import torch

from ckptkit.convert.models import model_class
from ckptkit.fixtures import factory
from ckptkit.formats import open_checkpoint
from tests.convert.test_interop import forward
from tests.cli import ok, refused, run

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.mark.parametrize("fixture", ["sd1", "sdxl", "sd3", "flux_dev", "sana"])
def test_diffusers_client_files_load_with_from_single_file(tmp_path, fixture):
    from diffusers import GGUFQuantizationConfig

    bundle = factory.write_bundle(fixture, tmp_path / "b.safetensors", dtype=None)
    out = tmp_path / "q"
    ok(run("quantize", bundle, "-o", out, "--type", "q8_0", "--client", "diffusers"))
    comp = factory.FIXTURES[fixture].spec.diffusion_model
    cls, _ = model_class(comp.diffusers_class)
    with open_checkpoint(out / "diffusion_model.gguf") as ck:
        names, kinds = set(ck.tensors), {t.dtype for t in ck.tensors.values()}
        assert not any(k.startswith("comfy.gguf.orig_shape") for k in getattr(ck, "kv", {}) or {})
    ref = factory.component_model(fixture, "diffusion_model").eval()
    assert names == set(ref.state_dict()) and "Q8_0" in kinds  # the class's own names, quantized
    model = cls.from_single_file(str(out / "diffusion_model.gguf"), config=str(out / "diffusion_model"),
                                 quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
                                 torch_dtype=torch.float32).eval()
    got, want = forward(model), forward(ref)
    for key in want:
        a, b = got[key].flatten(), want[key].flatten()
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.9999, key
        assert (a - b).norm() / b.norm() < 0.01, key
    manifest = json.loads((out / "ckptkit.json").read_text())
    entry = manifest["components"]["diffusion_model"]
    assert entry["client"] == "diffusers" and entry["naming"] == "diffusers"
    assert ok(run("verify", out, "--against", bundle, "--device", "cpu")).exit_code == 0


def test_comfy_keeps_clip_as_safetensors_and_t5_as_gguf(tmp_path):
    bundle = factory.write_bundle("flux_dev", tmp_path / "f.safetensors")
    result = ok(run("quantize", bundle, "-o", tmp_path / "q", "--type", "q8_0", "--component", "clip_l=q8_0",
                    "--component", "t5xxl=q8_0"))
    assert "clip_l: ComfyUI-GGUF loads no clip_l text encoder from GGUF" in result.output
    files = sorted(p.name for p in (tmp_path / "q").iterdir())
    assert "clip_l.safetensors" in files and "clip_l.gguf" not in files and "t5xxl.gguf" in files
    from gguf import GGUFReader

    arch = GGUFReader(tmp_path / "q" / "t5xxl.gguf").fields["general.architecture"]
    assert bytes(arch.parts[-1]).decode() == "t5encoder"  # in ComfyUI-GGUF's TXT_ARCH_LIST
    # a single CLIP file asked for as .gguf for comfy: the client's limit, not a file it cannot load
    comps = factory.write_component_files("flux_dev", tmp_path / "c")
    line = refused(run("quantize", comps["clip_l"], "-o", tmp_path / "clip.gguf", "--type", "q8_0"))
    assert "--client comfy: ComfyUI-GGUF loads no clip_l text encoder from GGUF" in line


def test_an_architecture_the_client_refuses(tmp_path):
    bundle = factory.write_bundle("sana", tmp_path / "s.safetensors")
    line = refused(run("quantize", bundle, "-o", tmp_path / "x", "--type", "q8_0", "--client", "comfy"))
    assert "--client comfy: ComfyUI-GGUF loads no sana GGUF" in line and "use --client diffusers" in line
    assert not (tmp_path / "x").exists()
    result = ok(run("quantize", bundle, "-o", tmp_path / "d", "--type", "q8_0"))
    assert "written for diffusers instead (--client diffusers)" in result.output
    assert (tmp_path / "d" / "diffusion_model" / "config.json").is_file()
    # diffusers loads no text encoder from GGUF: refused, naming the limit
    flux = factory.write_bundle("flux_dev", tmp_path / "f.safetensors")
    line = refused(run("quantize", flux, "-o", tmp_path / "y", "--type", "q8_0", "--component", "t5xxl=q8_0",
                       "--client", "diffusers"))
    assert "--client diffusers: diffusers loads no t5xxl text encoder from GGUF" in line


def test_sdcpp_names_its_own_rule_when_nothing_converts(tmp_path):
    """The tiny FLUX's CLIP rows (64 wide) divide into no K-quant block: sd.cpp would convert nothing,
    and asking for it is one line saying so."""
    bundle = factory.write_bundle("flux_dev", tmp_path / "f.safetensors")
    line = refused(run("quantize", bundle, "-o", tmp_path / "q", "--client", "sdcpp", "--component", "clip_l=q6_k"))
    assert "clip_l: asked for q6_k but no tensor can be quantized (stable-diffusion.cpp's convert" in line
    assert not (tmp_path / "q").exists()
