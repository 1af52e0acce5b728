"""ComfyUI-GGUF's own loader and dequantizer read every file of the `comfy` profile: its
`gguf_sd_loader` (architecture gate, comfy.gguf.orig_shape, prefix handling) and `gguf_clip_loader`
(T5 in llama.cpp names), with the `comfy.*` modules it imports stubbed. Each tensor, dequantized by
its torch code, has the source's shape and ours values; nothing of the profile is refused, and the
CLIP GGUF the profile no longer writes is refused by that loader, which is why.

ComfyUI-GGUF is not on the package registry: the test reads its loader.py, ops.py and dequant.py
from $CKPTKIT_COMFYUI_GGUF or ~/.cache/ckptkit-tests/ComfyUI-GGUF (from a checkout of
github.com/city96/ComfyUI-GGUF, read at 795e451) and skips, saying so, where neither holds them."""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import gguf
from safetensors import safe_open
import pytest
import torch

from ckptkit.fixtures import factory
from ckptkit.formats import open_checkpoint
from tests.cli import ok, run

SOURCE = Path(os.environ.get("CKPTKIT_COMFYUI_GGUF", Path.home() / ".cache" / "ckptkit-tests" / "ComfyUI-GGUF"))


def _stub_comfy() -> None:
    """The three comfy modules ops.py imports, as far as loading and dequantizing use them."""
    comfy = types.ModuleType("comfy")
    ops = types.ModuleType("comfy.ops")

    class manual_cast:  # noqa: N801 (ComfyUI's name)
        Linear, Conv2d, Embedding = torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding
        LayerNorm, GroupNorm = torch.nn.LayerNorm, torch.nn.GroupNorm

    ops.manual_cast = manual_cast
    ops.cast_to = lambda t, dtype=None, device=None, non_blocking=False, copy=False: t.to(device=device, dtype=dtype)
    lora = types.ModuleType("comfy.lora")
    lora.calculate_weight = lambda patches, weight, key, *a: weight
    mm = types.ModuleType("comfy.model_management")
    mm.device_supports_non_blocking = lambda device: False
    comfy.ops, comfy.lora, comfy.model_management = ops, lora, mm
    sys.modules.update({"comfy": comfy, "comfy.ops": ops, "comfy.lora": lora, "comfy.model_management": mm})


@pytest.fixture(scope="module")
def comfy_gguf(tmp_path_factory):
    if not all((SOURCE / f).is_file() for f in ("loader.py", "ops.py", "dequant.py")):
        pytest.skip(f"ComfyUI-GGUF's loader is not present in {SOURCE} (not on the registry; set "
                    "CKPTKIT_COMFYUI_GGUF to a checkout of github.com/city96/ComfyUI-GGUF)")
    saved = {k: sys.modules.get(k) for k in ("comfy", "comfy.ops", "comfy.lora", "comfy.model_management")}
    _stub_comfy()
    pkg = tmp_path_factory.mktemp("cgg") / "comfyui_gguf_under_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for f in ("loader.py", "ops.py", "dequant.py"):
        (pkg / f).write_text((SOURCE / f).read_text())
    if (SOURCE / "tools" / "convert.py").is_file():
        (pkg / "tools").mkdir()
        (pkg / "tools" / "__init__.py").write_text("")
        (pkg / "tools" / "convert.py").write_text((SOURCE / "tools" / "convert.py").read_text())
    sys.path.insert(0, str(pkg.parent))
    try:
        yield importlib.import_module("comfyui_gguf_under_test.loader"), importlib.import_module("comfyui_gguf_under_test.dequant")
    finally:
        sys.path.remove(str(pkg.parent))
        for k in [k for k in sys.modules if k.startswith("comfyui_gguf_under_test")]:
            del sys.modules[k]
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _same(loader, dequant, path: Path, text: bool = False) -> int:
    sd = loader.gguf_clip_loader(str(path)) if text else loader.gguf_sd_loader(str(path))
    ours = open_checkpoint(path)
    checked = 0
    for name, t in sd.items():
        want = ours.load(name if not text else name).float()
        got = dequant.dequantize_tensor(t, dtype=torch.float32).float()
        assert tuple(got.shape) == tuple(want.shape), name
        assert torch.allclose(got, want, rtol=2e-3, atol=2e-3 * float(want.abs().max())), name
        checked += 1
    ours.close()
    return checked


@pytest.mark.parametrize("fixture, qtype", [("sdxl", "q4_k_m"), ("sdxl", "q8_0"), ("sd3", "q5_k_m"),
                                            ("flux_dev", "q4_0")])
def test_comfy_profile_files_load_in_comfyui_gguf(comfy_gguf, tmp_path, fixture, qtype):
    loader, dequant = comfy_gguf
    bundle = factory.write_bundle(fixture, tmp_path / "b.safetensors")
    extra = ["--component", "t5xxl=q8_0"] if fixture in ("sd3", "flux_dev") else []
    ok(run("quantize", bundle, "-o", tmp_path / "q", "--type", qtype, "--client", "comfy", *extra))
    assert _same(loader, dequant, tmp_path / "q" / "diffusion_model.gguf") > 50
    if extra:  # T5 through its text-encoder loader, renamed to transformers' names by its T5_SD_MAP
        sd = loader.gguf_clip_loader(str(tmp_path / "q" / "t5xxl.gguf"))
        assert "encoder.block.0.layer.0.SelfAttention.q.weight" in sd
        with open_checkpoint(tmp_path / "q" / "t5xxl.gguf") as ours:  # ours reads the same names
            for name, t in sd.items():
                got = dequant.dequantize_tensor(t, dtype=torch.float32).float()
                want = ours.load(name).float()
                assert torch.allclose(got, want, rtol=2e-3, atol=2e-3 * float(want.abs().max())), name


def test_the_clip_gguf_comfy_does_not_write_is_refused_by_its_loader(comfy_gguf, tmp_path):
    loader, _ = comfy_gguf
    bundle = factory.write_bundle("sdxl", tmp_path / "b.safetensors")
    ok(run("quantize", bundle, "-o", tmp_path / "q", "--component", "clip_l=q8_0", "--client", "sdcpp"))
    with pytest.raises(ValueError, match="Unexpected text model architecture type in GGUF file: 'clip'"):
        loader.gguf_clip_loader(str(tmp_path / "q" / "clip_l.gguf"))


def test_wan_5d_patch_embedding_loads_in_comfyui_gguf(comfy_gguf, tmp_path):
    """Wan's Conv3d patch embedding is written as ComfyUI-GGUF's fix_5d_tensors.py leaves it (F32, all five
    dimensions, no orig_shape KV) and the (1, 6, width) modulation tables keep their leading 1: its
    loader gives back the torch shapes the model needs, and every value (UMT5 through its T5 loader)."""
    loader, dequant = comfy_gguf
    bundle = factory.write_bundle("wan", tmp_path / "b.safetensors")
    ok(run("quantize", bundle, "-o", tmp_path / "q", "--type", "q8_0", "--component", "umt5xxl=q8_0"))
    path = tmp_path / "q" / "diffusion_model.gguf"
    reader = gguf.GGUFReader(str(path))
    patch = next(t for t in reader.tensors if t.name == "patch_embedding.weight")
    assert (patch.tensor_type.name, len(patch.shape)) == ("F32", 5)
    assert not [f for f in reader.fields if f.startswith("comfy.gguf.orig_shape.")]
    sd = loader.gguf_sd_loader(str(path))
    assert tuple(sd["patch_embedding.weight"].shape) == (64, 16, 1, 2, 2)
    assert tuple(sd["blocks.0.modulation"].shape) == (1, 6, 64) and tuple(sd["head.modulation"].shape) == (1, 2, 64)
    assert _same(loader, dequant, path) > 50
    sd = loader.gguf_clip_loader(str(tmp_path / "q" / "umt5xxl.gguf"))
    assert "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in sd  # UMT5: every layer


def test_hunyuan_video_5d_patch_embedding_loads_in_comfyui_gguf(comfy_gguf, tmp_path):
    """HunyuanVideo's Conv3d patch embedding (`img_in.proj.weight`) as Wan's: F32 with its 5 dimensions,
    the shape its loader gives back; the file's arch is ComfyUI-GGUF's `hyvid`."""
    loader, dequant = comfy_gguf
    bundle = factory.write_bundle("hunyuan_video", tmp_path / "b.safetensors")
    ok(run("quantize", bundle, "-o", tmp_path / "q", "--type", "q8_0"))
    path = tmp_path / "q" / "diffusion_model.gguf"
    reader = gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "hyvid"
    sd = loader.gguf_sd_loader(str(path))
    assert tuple(sd["img_in.proj.weight"].shape) == (64, 4, 1, 2, 2)
    assert _same(loader, dequant, path) > 50
    # the causal VAE beside it, kept (ComfyUI loads a VAE from safetensors, not GGUF): its convs 5-D as they were
    with safe_open(tmp_path / "q" / "vae.safetensors", "pt") as f:
        assert f.get_slice("encoder.conv_in.conv.weight").get_shape() == [8, 3, 3, 3, 3]
        assert f.get_slice("decoder.conv_out.conv.weight").get_shape() == [3, 8, 3, 3, 3]
