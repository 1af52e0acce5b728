"""`--client sdcpp` against stable-diffusion.cpp's own convert (`sd -M convert`, stable-diffusion-cpp-python
0.4.7 built from the registry's sdist into a cache; tests/quant/sdcpp_reference.py): for every type
sd.cpp writes, the same component file gives the same tensors, names, types and bytes. The test
skips, saying why, where no compiler or registry is at hand."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFReader

from ckptkit import pipeline
from ckptkit.convert.split import SplitOptions
from ckptkit.fixtures import factory
from tests.cli import ok, run

TYPES = {"Q8_0": "q8_0", "Q4_0": "q4_0", "Q4_1": "q4_1", "Q5_0": "q5_0", "Q5_1": "q5_1", "Q2_K": "q2_k_s",
         "Q3_K": "q3_k_s", "Q4_K": "q4_k_s", "Q5_K": "q5_k_s", "Q6_K": "q6_k"}


@pytest.fixture(scope="module")
def component_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdcpp")
    out = {}
    for fixture in ("sdxl", "flux_dev"):
        bundle = factory.write_bundle(fixture, root / f"{fixture}.safetensors")
        pipeline.split(bundle, root / fixture, SplitOptions(layout="comfy"))
        out[fixture] = root / fixture / "diffusion_model.safetensors"
    out["wan"] = _wan_256(root / "wan_diffusion_model.safetensors")
    return out


def _wan_256(path):
    """A Wan transformer (original names, F16) 256 wide, so that K-quant blocks fit its rows as they fit
    the released widths' (the tiny fixture's 64 fit none)."""
    from ckptkit.convert.configs import metadata_value
    from ckptkit.convert.layouts import get_layout
    from ckptkit.engine import expr
    from ckptkit.formats.safetensors import save_safetensors

    cfg = dict(factory.FIXTURES["wan"].config("diffusion_model"), attention_head_dim=128, ffn_dim=512, text_dim=256)
    state = factory.build_model("WanTransformer3DModel", cfg, 0).state_dict()
    mapping = get_layout("wan").to_original({n: tuple(t.shape) for n, t in state.items()}, cfg)
    original = {n: t.half() for n, t in expr.apply(mapping, state.__getitem__).items()}
    save_safetensors(path, original, metadata_value({"diffusion_model": cfg}))
    return path


def tensors(path):
    return {t.name: (t.tensor_type.name, tuple(int(d) for d in t.shape), np.asarray(t.data).tobytes())
            for t in GGUFReader(path).tensors}


@pytest.mark.parametrize("fixture", ["sdxl", "flux_dev", "wan"])
@pytest.mark.parametrize("type_name", list(TYPES))
def test_same_tensors_as_sd_convert(sd_convert, component_files, tmp_path, fixture, type_name):
    src = component_files[fixture]
    theirs = tmp_path / "theirs.gguf"
    sd_convert(src, theirs, type_name)
    ours = tmp_path / "ours.gguf"
    ok(run("quantize", src, "-o", ours, "--type", TYPES[type_name], "--client", "sdcpp"))
    want, got = tensors(theirs), tensors(ours)
    assert got.keys() == want.keys()
    types = {n: (got[n][0], want[n][0]) for n in got if got[n][0] != want[n][0]}
    assert not types, list(types.items())[:5]
    differ = [n for n in got if got[n] != want[n]]
    assert not differ, differ[:5]
    assert any(t == type_name for t, _, _ in got.values())


def test_tensor_type_rules_in_sdcpp_form_act_as_sd_convert(sd_convert, component_files, tmp_path):
    """sd.cpp's --tensor-type-rules string in one --rule: comma-separated, first match wins, on the
    names it sees (a component file's own names), and only where sd.cpp converts."""
    src = component_files["flux_dev"]
    rules = r"double_blocks\.0\.=q8_0,single_blocks\.=q4_K,\.mlp\.=f16"
    sd_convert(src, tmp_path / "theirs.gguf", "Q5_0", rules)
    ok(run("quantize", src, "-o", tmp_path / "ours.gguf", "--type", "q5_0", "--client", "sdcpp", "--rule", rules))
    want, got = tensors(tmp_path / "theirs.gguf"), tensors(tmp_path / "ours.gguf")
    assert got == want
    # the rules took effect (double block 0 at Q8_0), and a Q4_K rule where rows of the tiny model do
    # not divide into 256 left those tensors as stored, as in sd.cpp
    ok(run("quantize", src, "-o", tmp_path / "plain.gguf", "--type", "q5_0", "--client", "sdcpp"))
    assert got != tensors(tmp_path / "plain.gguf")
    assert got["double_blocks.0.img_attn.qkv.weight"][0] == "Q8_0"


def test_wan_patch_embedding_is_folded_as_sdcpp_reads_it(sd_convert, component_files, tmp_path):
    """sd.cpp folds a 5-D Conv3d kernel (O, I, kt, kh, kw) into ggml's 4 dims, ne [kw, kh, kt, I x O] (its
    Conv3d weight): sd -M convert writes that, and so do we for --client sdcpp (ComfyUI-GGUF's own form, a
    5-D F32, is for --client comfy); a one-file Wan bundle is refused (sd.cpp runs Wan from component files)."""
    src = component_files["wan"]
    ok(run("quantize", src, "-o", tmp_path / "ours.gguf", "--type", "q8_0", "--client", "sdcpp"))
    got = tensors(tmp_path / "ours.gguf")["patch_embedding.weight"]
    assert got[0] == "F16" and got[1] == (2, 2, 1, 16 * 256)  # gguf-py lists ne, innermost first
    ok(run("quantize", src, "-o", tmp_path / "comfy.gguf", "--type", "q8_0"))
    comfy = tensors(tmp_path / "comfy.gguf")["patch_embedding.weight"]
    assert comfy[:2] == ("F32", (2, 2, 1, 16, 256))
    assert np.array_equal(np.frombuffer(comfy[2], np.float32), np.frombuffer(got[2], np.float16).astype(np.float32))
    bundle = factory.write_bundle("wan", tmp_path / "wan.safetensors")
    from tests.cli import refused

    line = refused(run("quantize", bundle, "-o", tmp_path / "one.gguf", "--type", "q8_0", "--client", "sdcpp"))
    assert "runs Wan 2.1 / 2.2 from component files" in line
