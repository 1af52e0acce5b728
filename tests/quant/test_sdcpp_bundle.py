"""stable-diffusion.cpp's one-file bundle: `quantize --client sdcpp -o FILE.gguf` and `merge --client
sdcpp -o FILE.gguf`. Every component under the family's bundle prefix (what `sd -m` reads and what
`sd -M convert` writes from a bundle), compared tensor by tensor with sd.cpp's own convert of the
same bundle (stable-diffusion-cpp-python 0.4.7 built from the registry's sdist; skips saying why
where it cannot be built). Merging a quantized set keeps the quantized bytes."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFReader

from ckptkit.fixtures import factory
from ckptkit.formats import open_checkpoint
from tests.cli import ok, refused, run

FAMILIES = ["sd1", "sdxl", "sd3", "flux_dev"]
TYPES = {"q8_0": "q8_0", "q4_0": "q4_0", "q5_1": "q5_1", "q4_k_s": "q4_K"}  # ours -> sd.cpp's type name
# the diffusion model's prefix in each bundle, where sd.cpp's --tensor-type-rules give its type
DIFFUSION = r"^model\.diffusion_model\."
JUNK = {"alphas_cumprod"}  # an LDM schedule buffer sd.cpp's convert copies; ckptkit drops it as junk


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    return {f: factory.write_bundle(f, root / f"{f}.safetensors") for f in FAMILIES + ["sana"]}


def tensors(path) -> dict:
    return {t.name: (t.tensor_type.name, tuple(int(d) for d in t.shape), np.asarray(t.data).tobytes())
            for t in GGUFReader(path).tensors}


def same_as_sd_convert(ours, theirs) -> None:
    got, want = tensors(ours), tensors(theirs)
    assert set(want) - set(got) <= JUNK and set(got) <= set(want), (set(got) ^ set(want))
    types = {n: (got[n][0], want[n][0]) for n in got if got[n][0] != want[n][0]}
    assert not types, list(types.items())[:5]
    differ = [n for n in got if got[n] != want[n]]
    assert not differ, differ[:5]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("type_name", list(TYPES))
def test_bundle_has_sd_converts_tensors(sd_convert, bundles, tmp_path, family, type_name):
    """The diffusion model quantized, every other component as stored: sd.cpp's convert of the same
    bundle with the type given to the diffusion model by a rule (the rest F16, as stored)."""
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    ok(run("quantize", bundles[family], "-o", ours, "--type", type_name, "--client", "sdcpp"))
    sd_convert(bundles[family], theirs, "F16", f"{DIFFUSION}={TYPES[type_name]}")
    same_as_sd_convert(ours, theirs)
    reader = GGUFReader(ours)
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == {"flux_dev": "flux"}.get(family, family)
    assert any(t.tensor_type.name == TYPES[type_name].upper() for t in reader.tensors)


@pytest.mark.parametrize("family, prefix, components", [
    ("sdxl", r"^conditioner\.", ("clip_l", "clip_g")),
    ("sd3", r"^text_encoders\.", ("clip_l", "clip_g", "t5xxl")),
])
def test_text_encoders_quantized_in_the_bundle(sd_convert, bundles, tmp_path, family, prefix, components):
    """SDXL's OpenCLIP stays OpenCLIP (fused in_proj, as sd.cpp reads a bundle), SD3's T5 in
    transformers names; sd.cpp's name rules decide which of their tensors are converted."""
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    args = [a for c in components for a in ("--component", f"{c}=q8_0")]
    ok(run("quantize", bundles[family], "-o", ours, "--type", "q8_0", "--client", "sdcpp", *args))
    sd_convert(bundles[family], theirs, "F16", f"{DIFFUSION}=q8_0,{prefix}=q8_0")
    same_as_sd_convert(ours, theirs)
    names = tensors(ours)
    if family == "sdxl":
        assert names["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"][0] == "Q8_0"
    else:
        assert names["text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight"][0] == "Q8_0"


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_of_a_quantized_set_is_the_bundle(bundles, tmp_path, family):
    """quantize to a component set, then merge: the same tensors (names, types, bytes) as quantizing
    the bundle to one file; quantized bytes are copied, never dequantized and quantized again."""
    args = ["--type", "q4_0", "--component", "clip_l=q8_0", "--client", "sdcpp"]
    ok(run("quantize", bundles[family], "-o", tmp_path / "set", *args))
    ok(run("quantize", bundles[family], "-o", tmp_path / "direct.gguf", *args))
    res = ok(run("merge", tmp_path / "set", "-o", tmp_path / "merged.gguf", "--client", "sdcpp"))
    assert "sd -m merged.gguf" in res.output
    merged = tensors(tmp_path / "merged.gguf")
    assert list(merged) == list(tensors(tmp_path / "direct.gguf"))
    assert merged == tensors(tmp_path / "direct.gguf")
    assert ok(run("verify", tmp_path / "merged.gguf", "--against", bundles[family])).exit_code == 0


def test_merge_of_a_comfy_set(bundles, tmp_path):
    """A set made for ComfyUI-GGUF: its tensors keep their bytes, except the convs it stores as
    256-wide rows, which sd.cpp cannot read that way: F16 of the same values, and the note says so."""
    ok(run("quantize", bundles["sdxl"], "-o", tmp_path / "set", "--type", "q4_k_m"))
    res = ok(run("merge", tmp_path / "set", "-o", tmp_path / "m.gguf", "--client", "sdcpp"))
    merged = open_checkpoint(tmp_path / "m.gguf")
    unet = open_checkpoint(tmp_path / "set" / "diffusion_model.gguf")
    reshaped = {n for n in unet.kv if n.startswith("comfy.gguf.orig_shape.")}
    assert reshaped and f"{len(reshaped)} quantized tensors could not keep their bytes" in res.output
    kept = 0
    for name in unet.tensors:
        full = "model.diffusion_model." + name
        if "comfy.gguf.orig_shape." + name in reshaped:
            assert merged.ggml_type(full).name == "F16"
            assert merged.tensors[full].shape == unet.tensors[name].shape
            assert np.array_equal(merged.load(full).numpy(), unet.load(name).half().numpy()), name
        elif unet.ggml_type(name).name not in ("F16", "F32"):
            assert merged.ggml_type(full) == unet.ggml_type(name)
            assert np.array_equal(merged.raw(full), unet.raw(name)), name
            kept += 1
    assert kept > 100
    merged.close()
    unet.close()
    ok(run("verify", tmp_path / "m.gguf", "--against", tmp_path / "set", "--no-onestep"))


def test_refusals(bundles, tmp_path):
    """A GGUF bundle only for the client that loads one; a family sd.cpp does not run is refused."""
    ok(run("split", bundles["sd1"], "-o", tmp_path / "split"))
    line = refused(run("merge", tmp_path / "split", "-o", tmp_path / "m.gguf"))
    assert "m.gguf: one GGUF of every component is stable-diffusion.cpp's bundle: add --client sdcpp" in line
    line = refused(run("merge", tmp_path / "split", "-o", tmp_path / "m.gguf", "--client", "comfy"))
    assert "--client comfy: ComfyUI-GGUF loads one component per GGUF file, no bundle" in line
    line = refused(run("quantize", bundles["sd1"], "-o", tmp_path / "q.gguf", "--type", "q8_0"))
    assert "ComfyUI-GGUF loads one component per GGUF: give a directory as output, or --client sdcpp" in line
    line = refused(run("quantize", bundles["sana"], "-o", tmp_path / "s.gguf", "--type", "q8_0", "--client", "sdcpp"))
    assert "--client sdcpp: stable-diffusion.cpp loads no sana GGUF" in line
    assert not any(tmp_path.glob("*.gguf"))
    # merge to safetensors is as before, and takes no client
    ok(run("merge", tmp_path / "split", "-o", tmp_path / "m.safetensors"))
    line = refused(run("merge", tmp_path / "split", "-o", tmp_path / "n.safetensors", "--client", "sdcpp"))
    assert "name the output .gguf" in line


def test_component_files_of_a_unet_family_say_how_to_make_the_file_sdcpp_loads(bundles, tmp_path):
    res = ok(run("quantize", bundles["sdxl"], "-o", tmp_path / "set", "--type", "q8_0", "--client", "sdcpp"))
    text = " ".join(res.output.split())
    assert "stable-diffusion.cpp loads Stable Diffusion XL (base / Turbo) only from one file" in text
    res = ok(run("quantize", bundles["flux_dev"], "-o", tmp_path / "flux", "--type", "q8_0", "--client", "sdcpp"))
    assert "only from one file" not in res.output
