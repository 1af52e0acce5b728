"""`--family NAME` overrides detection in every command (families/detect.py `_given`).

The case it exists for: an SDXL UNet of two levels (one downsampler, as diffusers' own tiny SDXL test
pipeline has) shares its keys with the base model and the refiner but passes neither one's level
count, so detection alone cannot place it. Given `--family sdxl`, every command reads it as SDXL: split
(3 layouts, bit-exact), merge, the diffusers layout (computing what the source network computes),
Q8_0 quantize and verify with every check. A family the file does not hold, or one that does not
exist, is one line and exit 2. A standalone text encoder given a family converts as that family's
component (SD3's CLIP-L with its projection)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ckptkit.families.detect import detect
from ckptkit.fixtures import factory
from ckptkit.fixtures.factory import FIXTURES, Fixture
from ckptkit.formats import open_checkpoint
from tests.cli import ok, refused, run

TWO_LEVEL = Fixture("sdxl_two_level", "sdxl", "base", {"diffusion_model": {
    "block_out_channels": [64, 128], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "transformer_layers_per_block": [1, 2],
    "attention_head_dim": [1, 2]}})


@pytest.fixture(autouse=True)
def two_level(monkeypatch):
    monkeypatch.setitem(FIXTURES, TWO_LEVEL.name, TWO_LEVEL)


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    FIXTURES[TWO_LEVEL.name] = TWO_LEVEL
    root = tmp_path_factory.mktemp("given")
    built = factory.write_all_forms(TWO_LEVEL.name, root)
    built["fp32"] = factory.write_bundle(TWO_LEVEL.name, root / "fp32.safetensors", dtype=None)
    yield built
    FIXTURES.pop(TWO_LEVEL.name, None)


def test_detection_alone_cannot_place_it_and_the_given_family_does_in_every_form(forms):
    for form, path in forms.items():
        with open_checkpoint(path) as ckpt:
            assert detect(ckpt).family is None, form
            det = detect(ckpt, "sdxl")
            assert det.family == "sdxl" and det.given == "--family sdxl" and det.detected_as is None, (form, det)
            assert "diffusion_model" in det.components and not det.unclaimed, (form, det)
        with open_checkpoint(path) as ckpt:
            ckpt.family_override = "sdxl"  # what the commands attach
            assert detect(ckpt).family == "sdxl"
    with open_checkpoint(forms["bundle"]) as ckpt:
        det = detect(ckpt, "sdxl")
    assert det.form == "bundle" and set(det.components) == {"diffusion_model", "clip_l", "clip_g", "vae"}
    assert det.confidence == 1.0 and not det.missing


def test_inspect_says_the_family_was_given(forms):
    plain = json.loads(ok(run("inspect", forms["bundle"], "--json")).output)
    assert plain["family"] is None and plain["given"] is None
    given = json.loads(ok(run("inspect", forms["bundle"], "--json", "--family", "sdxl")).output)
    assert given["family"] == "sdxl" and given["given"] == "--family sdxl" and given["detected_as"] is None
    assert "1 downsamplers (2 expected) - does not hold" in given["evidence"]
    assert "has label_emb.0.0.weight" in given["evidence"]
    assert {c["name"] for c in given["components"]} == {"diffusion_model", "clip_l", "clip_g", "vae"}
    text = ok(run("inspect", forms["bundle"], "--family", "sdxl")).output
    assert "given with --family sdxl; by structure alone: unknown" in text


def test_split_merge_and_diffusers_with_the_given_family(forms, tmp_path):
    bundle = forms["fp32"]
    want = load_file(bundle)
    for layout in ("comfy", "original"):
        ok(run("split", bundle, "-o", tmp_path / layout, "--layout", layout, "--family", "sdxl"))
        manifest = json.loads((tmp_path / layout / "ckptkit.json").read_text())
        assert manifest["family"] == "sdxl"
        dm = load_file(tmp_path / layout / "diffusion_model.safetensors")
        assert all(torch.equal(t, want["model.diffusion_model." + n]) for n, t in dm.items())
        ok(run("merge", tmp_path / layout, "-o", tmp_path / f"{layout}.safetensors", "--family", "sdxl"))
        merged = load_file(tmp_path / f"{layout}.safetensors")
        assert merged.keys() <= want.keys() and all(torch.equal(t, want[n]) for n, t in merged.items())
    ok(run("split", bundle, "-o", tmp_path / "diffusers", "--layout", "diffusers", "--family", "sdxl"))
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tmp_path / "diffusers" / "unet", local_files_only=True).eval()
    ref = factory.component_model(TWO_LEVEL.name, "diffusion_model").eval()
    gen = torch.Generator().manual_seed(0)
    sample, context = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 5, 2048, generator=gen)
    added = {"text_embeds": torch.randn(1, 1280, generator=gen), "time_ids": torch.randn(1, 6, generator=gen)}
    with torch.no_grad():
        got = unet(sample, 500, context, added_cond_kwargs=added).sample
        exp = ref(sample, 500, context, added_cond_kwargs=added).sample
    assert torch.allclose(got, exp, rtol=1e-5, atol=1e-6)
    # the component file converts back with the family given
    ok(run("convert", forms["component"], "-o", tmp_path / "unet", "--layout", "diffusers", "--family", "sdxl"))
    assert json.loads((tmp_path / "unet" / "config.json").read_text())["block_out_channels"] == [64, 128]


def test_quantize_and_verify_with_the_given_family(forms, tmp_path):
    bundle = forms["fp32"]
    ok(run("quantize", bundle, "-o", tmp_path / "q8", "--type", "q8_0", "--family", "sdxl"))
    from gguf import GGUFReader

    arch = GGUFReader(tmp_path / "q8" / "diffusion_model.gguf").fields["general.architecture"]
    assert bytes(arch.parts[-1]).decode() == "sdxl"
    report = json.loads(run("verify", tmp_path / "q8", "--against", bundle, "--family", "sdxl", "--device", "cpu",
                            "--json").output)
    assert report["passed"] is True, report
    checks = {r["check"] for r in report["results"] if r["passed"]}
    assert {"integrity", "layout", "coverage", "numeric", "onestep"} <= checks
    # a single quantized component file, which verify could not place before
    single = ok(run("verify", tmp_path / "q8" / "diffusion_model.gguf", "--family", "sdxl", "--json"))
    assert json.loads(single.output)["family"] == "sdxl"


def test_a_family_the_file_does_not_hold_or_that_does_not_exist_is_one_line(forms, tmp_path):
    line = refused(run("split", forms["bundle"], "-o", tmp_path / "x", "--family", "flux"))
    assert "--family flux: this file holds no FLUX.1 diffusion model" in line
    assert not (tmp_path / "x").exists()
    line = refused(run("quantize", forms["bundle"], "-o", tmp_path / "y", "--type", "q8_0", "--family", "nonesuch"))
    assert "unknown family 'nonesuch'; known: " in line
    for args in (("inspect", forms["bundle"]), ("verify", forms["bundle"]),
                 ("convert", forms["component"], "-o", tmp_path / "z", "--layout", "diffusers"),
                 ("trigflow", forms["component"], "-o", tmp_path / "t"),
                 ("sample", forms["component"], "-o", tmp_path / "s.png")):
        assert "--family sana: this file holds no" in refused(run(*args, "--family", "sana")), args


def test_a_standalone_text_encoder_converts_as_the_given_family_s_component(tmp_path):
    """A CLIP-L file with no ckptkit metadata serves SD1, SDXL, SD3 and FLUX; `--family sd3` makes it
    SD3's, written as CLIPTextModelWithProjection with the identity projection its pipeline needs."""
    from safetensors.torch import save_file

    state = factory.original_state("sd3", "clip_l")
    save_file({n: t.contiguous() for n, t in state.items()}, tmp_path / "clip_l.safetensors")
    ok(run("convert", tmp_path / "clip_l.safetensors", "-o", tmp_path / "plain", "--layout", "diffusers",
           "--config", _clip_config(tmp_path)))
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["architectures"] == ["CLIPTextModel"]
    ok(run("convert", tmp_path / "clip_l.safetensors", "-o", tmp_path / "sd3", "--layout", "diffusers",
           "--config", _clip_config(tmp_path), "--family", "sd3"))
    assert json.loads((tmp_path / "sd3" / "config.json").read_text())["architectures"] == ["CLIPTextModelWithProjection"]
    text = ok(run("inspect", tmp_path / "clip_l.safetensors", "--family", "sd3")).output
    assert "; used by sd3" in text and "given with --family sd3; by structure alone: standalone component" in text


def _clip_config(tmp_path):
    path = tmp_path / "clip_config.json"
    path.write_text(json.dumps(FIXTURES["sd3"].config("clip_l")))
    return path
