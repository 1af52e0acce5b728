"""`ckptkit verify` end to end, through the CLI (click's CliRunner) and the library: faithful
conversions and Q8_0 sets of every family pass the default thresholds; each kind of damage fails
with the right check and metric (exit 1); unreadable references and bad options exit 2; the
report folder and --json output follow docs/verify-report.schema.json; thresholds are
overridable."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ckptkit import pipeline
from ckptkit.cli import cli
from ckptkit.convert.split import SplitOptions
from ckptkit.fixtures import damage
from ckptkit.fixtures.factory import FIXTURES, bundle_state, write_bundle
from ckptkit.formats import open_checkpoint
from ckptkit.formats.safetensors import save_safetensors
from ckptkit.quant.policy import Policy
from ckptkit.verify import VerifyOptions, run_verify
from ckptkit.verify.images import (HEADER_LINE, MARGIN, PANEL_MIN, OneStepImages, StageImage,
                                   onestep_png_size)
from ckptkit.verify.recipes import recipe_for
from ckptkit.verify.thresholds import DEFAULTS

# every fixture but FLUX.2 [klein], which shares FLUX.2 [dev]'s network class and layout (its own
# differences, no guidance embedding and its pipeline, are tested in tests/verify/test_onestep.py)
ALL = [n for n in FIXTURES if n != "flux2_klein"]
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "verify-report.schema.json").read_text())


def every_te_client(fixture: str) -> str | None:
    """A client that loads every text encoder from GGUF (CLIPs too: stable-diffusion.cpp) where it runs
    the family; else the default (ComfyUI-GGUF keeps CLIPs as safetensors; Sana goes to diffusers)."""
    from ckptkit.quant.clients import SDCPP

    return "sdcpp" if SDCPP.takes(FIXTURES[fixture].spec.gguf_arch) else None


class Sets:
    """Per family, built on first use: the fp32 bundle, its `split` comfy set and a set with the
    diffusion model and text encoders quantized to Q8_0."""

    def __init__(self, root: Path):
        self.root = root
        self._done: dict[str, dict[str, Path]] = {}

    def __call__(self, name: str) -> dict[str, Path]:
        if name not in self._done:
            bundle = write_bundle(name, self.root / f"{name}.safetensors", dtype=None)
            split = pipeline.split(bundle, self.root / f"{name}-split", SplitOptions(layout="comfy"))
            tes = [c for c, info in split.plan.info["components"].items() if info["role"] == "text_encoder"]
            policy = Policy(diffusion_model="q8_0", components={t: "q8_0" for t in tes}, client=every_te_client(name))
            pipeline.quantize(bundle, self.root / f"{name}-q8", policy)
            self._done[name] = {"bundle": bundle, "split": self.root / f"{name}-split",
                                "q8": self.root / f"{name}-q8", "text_encoders": tes}
        return self._done[name]

    def copy(self, name: str, which: str, tag: str) -> Path:
        dst = self.root / f"{name}-{which}-{tag}"
        shutil.copytree(self(name)[which], dst)
        return dst


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return Sets(tmp_path_factory.mktemp("verify"))


def ckptkit(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def verify_json(*args):
    """`ckptkit verify ... --json`: (exit code, report); the output must be strict JSON and follow the schema."""
    result = ckptkit("verify", *args, "--json", "--device", "cpu")
    assert result.exit_code in (0, 1), (result.exit_code, result.stderr, result.exception)
    data = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    jsonschema.validate(data, SCHEMA, cls=jsonschema.Draft202012Validator)
    assert data["exit_code"] == result.exit_code
    return result.exit_code, data


def rows(report, passed=None, check=None):
    results = report["results"] if isinstance(report, dict) else [r.to_json() for r in report.results]
    return [r for r in results if (passed is None or r["passed"] is passed) and (check is None or r["check"] == check)]


def failing(report) -> set[tuple[str, str | None, str]]:
    return {(r["check"], r["component"], r["metric"]) for r in rows(report, passed=False)}


def row(report, check, component, metric):
    found = [r for r in rows(report) if (r["check"], r["component"], r["metric"]) == (check, component, metric)]
    assert len(found) == 1, (check, component, metric, found)
    return found[0]


def test_schema_is_valid():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["properties"]["schema"]["const"] == "ckptkit.verify-report/1"


# --------------------------------------------------------------------------- faithful conversions pass
@pytest.mark.parametrize("name", ALL)
def test_split_set_matches_its_bundle(sets, name):
    s = sets(name)
    report = run_verify(s["split"], VerifyOptions(against=str(s["bundle"]), device="cpu"))
    assert report.passed and report.exit_code == 0, failing(report)
    fx = FIXTURES[name]
    comps = {c.name for c in fx.components}
    assert report.family == fx.family
    assert {r["component"] for r in rows(report, check="layout")} == comps
    for comp in comps:
        assert row(report, "integrity", comp, "sha256")["passed"] is True
        assert row(report, "numeric", comp, "min_cosine")["value"] == 1.0
        assert row(report, "numeric", comp, "max_rel_rms")["value"] == 0.0
    stages = {r["metric"]: r for r in rows(report, check="onestep") if r["passed"] is not None}
    assert stages["diffusion_model:latent cosine"]["value"] == 1.0
    if recipe_for(fx.family, fx.variant).has_vae:
        assert stages["psnr_db"]["value"] == math.inf and stages["ssim"]["value"] == 1.0
    assert report.to_json()["onestep"]["e2e"]["applicable"] is recipe_for(fx.family, fx.variant).has_vae


@pytest.mark.parametrize("name", ALL)
def test_q8_0_set_passes_default_thresholds(sets, name):
    s = sets(name)
    code, data = verify_json(s["q8"], "--against", s["bundle"])
    assert code == 0 and data["passed"], failing(data)
    fx = FIXTURES[name]
    dm = fx.spec.diffusion_model.name
    for comp in [dm, *s["text_encoders"]]:
        cov = row(data, "coverage", comp, "quantized")
        assert cov["passed"] is True and cov["value"] > 0
        assert data["thresholds"][comp] == DEFAULTS["Q8_0"].__dict__
        cos = row(data, "numeric", comp, "min_cosine")
        assert DEFAULTS["Q8_0"].min_cosine <= cos["value"] < 1.0
        assert 0.0 < row(data, "numeric", comp, "max_rel_rms")["value"] <= DEFAULTS["Q8_0"].max_rel_rms
    assert data["thresholds"]["e2e"] == DEFAULTS["Q8_0"].__dict__  # the least precise component's
    latent = row(data, "onestep", dm, "diffusion_model:latent cosine")
    assert latent["threshold"] == DEFAULTS["Q8_0"].min_cosine and latent["value"] >= latent["threshold"]
    if recipe_for(fx.family, fx.variant).has_vae:
        psnr = row(data, "onestep", "e2e", "psnr_db")
        assert psnr["threshold"] == DEFAULTS["Q8_0"].min_psnr and psnr["value"] >= psnr["threshold"]
        assert row(data, "coverage", "vae", "types")["passed"] is None  # kept, not quantized
    assert data["onestep"]["diffusion"]["applicable"] is True


# --------------------------------------------------------------------------- each kind of damage fails
def test_corrupted_tensor_fails_sha256_numeric_and_onestep(sets):
    folder = sets.copy("sd1", "split", "corrupt")
    path = folder / "diffusion_model.safetensors"
    with open_checkpoint(path) as ck:
        begin, end = ck.raw_span("out.2.weight")  # the final conv: its error reaches the output directly
    damage.flip_bytes(path, begin, end - begin)
    code, data = verify_json(folder, "--against", sets("sd1")["bundle"])
    assert code == 1
    sha = row(data, "integrity", "diffusion_model", "sha256")
    assert sha["passed"] is False and sha["value"] != sha["threshold"]
    assert row(data, "integrity", "clip_l", "sha256")["passed"] is True
    assert row(data, "numeric", "diffusion_model", "min_cosine")["passed"] is False
    assert row(data, "numeric", "clip_l", "min_cosine")["passed"] is True
    latent = row(data, "onestep", "diffusion_model", "diffusion_model:latent cosine")
    assert latent["passed"] is False and latent["value"] < DEFAULTS["plain"].min_cosine
    assert row(data, "onestep", "e2e", "psnr_db")["passed"] is False
    assert not any(c == "layout" for c, _, _ in failing(data))


def test_nan_fails_integrity(sets, tmp_path):
    state = bundle_state("flux_schnell", dtype=None)
    name = next(n for n in sorted(state) if n.startswith("model.diffusion_model.") and state[n].ndim == 2)
    state[name] = state[name].clone()
    state[name][0, 1] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_safetensors(path, state)
    result = ckptkit("verify", path)
    assert result.exit_code == 1, result.output
    report = run_verify(path, VerifyOptions())
    assert failing(report) == {("integrity", "diffusion_model", "nonfinite")}
    bad = row(report, "integrity", "diffusion_model", "nonfinite")
    assert bad["value"] == 1 and bad["threshold"] == 0
    assert report.tables["nonfinite"] == {f"diffusion_model:{name}": {"nan": 1, "inf": 0}}
    # with a reference the scan rides on the numeric check's pass: the same row, the same counts
    clean = tmp_path / "clean.safetensors"
    state[name][0, 1] = 0.0
    save_safetensors(clean, state)
    fused = run_verify(path, VerifyOptions(against=str(clean), onestep=False))
    assert row(fused, "integrity", "diffusion_model", "nonfinite") == bad
    assert fused.tables["nonfinite"] == report.tables["nonfinite"]
    assert ("integrity", "diffusion_model", "nonfinite") in failing(fused)


def test_truncated_component_is_an_integrity_failure(sets):
    folder = sets.copy("sd1", "q8", "trunc")
    damage.truncate(folder / "diffusion_model.gguf", 4096)
    code, data = verify_json(folder, "--against", sets("sd1")["bundle"])
    assert code == 1
    readable = row(data, "integrity", "diffusion_model", "readable")
    assert readable["value"] is False and readable["passed"] is False
    assert "diffusion_model.gguf: not a valid GGUF file" in readable["detail"]
    assert row(data, "integrity", "clip_l", "readable")["passed"] is True
    assert data["onestep"] is None  # nothing to build a model from
    # one truncated file given alone: still exit 1, one line per check, no traceback
    single = sets.root / "sd1-trunc.safetensors"
    shutil.copy(sets("sd1")["bundle"], single)
    damage.truncate(single, 100)
    result = ckptkit("verify", single)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "readable" in result.stdout


def test_unreadable_reference_or_missing_input_exits_2(sets, tmp_path):
    bad = tmp_path / "ref.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{nojson}")
    result = ckptkit("verify", sets("sd1")["q8"], "--against", bad)
    assert result.exit_code == 2
    assert result.stderr.startswith("ckptkit: error: --against") and "unreadable reference" in result.stderr
    assert "Traceback" not in result.output
    assert ckptkit("verify", tmp_path / "nothing.gguf").exit_code == 2
    assert ckptkit("verify", sets("sd1")["q8"], "--against", tmp_path / "nothing").exit_code == 2


def test_missing_tensor_fails_layout(sets):
    folder = sets.copy("sd3", "split", "missing")
    path = folder / "diffusion_model.safetensors"
    with open_checkpoint(path) as ck:
        state = {n: ck.load(n).clone() for n in ck.tensors}
    dropped = "joint_blocks.1.x_block.mlp.fc2.weight"
    del state[dropped]
    save_safetensors(path, state)
    damage.refresh_manifest(folder, "diffusion_model")
    code, data = verify_json(folder, "--against", sets("sd3")["bundle"])
    assert code == 1
    missing = row(data, "layout", "diffusion_model", "missing")
    assert missing["value"] == 1 and missing["passed"] is False and dropped in missing["detail"]
    assert data["tables"]["layout:diffusion_model"]["missing"] == [dropped]
    assert row(data, "integrity", "diffusion_model", "sha256")["passed"] is True
    # the 1-step check cannot build the model: a failed row, not a crash
    assert row(data, "onestep", None, "run")["passed"] is False


def test_component_left_unquantized_fails_coverage(sets):
    """stable-diffusion.cpp #605: asked q8_0, the CLIP-G file holds only plain tensors."""
    folder = sets.copy("sdxl", "q8", "605")
    damage.rewrite_gguf(folder / "clip_g.gguf", folder / "clip_g.gguf", damage.dequantized_to_f16)
    damage.refresh_manifest(folder, "clip_g")
    code, data = verify_json(folder)
    assert code == 1
    assert failing(data) == {("coverage", "clip_g", "quantized")}
    cov = row(data, "coverage", "clip_g", "quantized")
    assert cov["value"] == 0 and "meant to be q8_0" in cov["detail"]
    assert data["tables"]["types:clip_g"].keys() <= {"F16", "F32"}
    assert row(data, "coverage", "clip_l", "quantized")["passed"] is True


def test_quantized_vae_fails_coverage(sets):
    folder = sets.copy("sd1", "q8", "qvae")
    with open_checkpoint(folder / "vae.safetensors") as ck:
        state = {n: ck.load(n).clone() for n in ck.tensors}
    damage.write_quantized_gguf(state, folder / "vae.gguf", "sd1", "Q8_0")
    (folder / "vae.safetensors").unlink()
    damage.refresh_manifest(folder, "vae", "vae.gguf")
    code, data = verify_json(folder, "--no-onestep")
    assert code == 1
    assert failing(data) == {("coverage", "vae", "vae_types")}
    assert row(data, "coverage", "vae", "vae_types")["value"] == ["Q8_0"]


# the newer families (issue 16), one fixture each at least
NEWER = [n for n in ALL if FIXTURES[n].family not in ("sd1", "sd2", "sdxl", "sdxl_refiner", "sd3", "flux", "sana")]


@pytest.mark.parametrize("name", ["sd1", "sana", *NEWER])
def test_broken_quantizer_fails_numeric_and_onestep(sets, name):
    """Q8_0 blocks with their fp16 scale doubled: every tensor x2. Its cosine stays 1, so the
    numeric check needs the relative RMS limit; the 1-step check sees it in every stage."""
    folder = sets.copy(name, "q8", "broken")
    for path in folder.glob("*.gguf"):
        damage.rewrite_gguf(path, path, damage.broken_scales("Q8_0"))
        damage.refresh_manifest(folder, path.stem)
    code, data = verify_json(folder, "--against", sets(name)["bundle"])
    assert code == 1
    dm = FIXTURES[name].spec.diffusion_model.name
    for comp in [dm, *sets(name)["text_encoders"]]:
        rel = row(data, "numeric", comp, "max_rel_rms")
        assert rel["passed"] is False and rel["value"] == pytest.approx(1.0, abs=0.01)
        assert rel["threshold"] == DEFAULTS["Q8_0"].max_rel_rms
        assert row(data, "numeric", comp, "min_cosine")["passed"] is True
    latent = row(data, "onestep", dm, "diffusion_model:latent cosine")
    assert latent["passed"] is False and latent["threshold"] == DEFAULTS["Q8_0"].min_cosine
    fx = FIXTURES[name]
    if recipe_for(fx.family, fx.variant).has_vae:
        assert row(data, "onestep", "e2e", "psnr_db")["passed"] is False
        assert all(row(data, "onestep", te, "text_encoder:hidden cosine")["passed"] is False
                   for te in sets(name)["text_encoders"])
    assert not failing(data) & {("integrity", c, m) for c in (dm, "vae") for m in ("sha256", "nonfinite")}


# --------------------------------------------------------------------------- report folder and JSON
@pytest.mark.parametrize("name", ["sdxl", "sana"])
def test_report_folder(sets, name, tmp_path):
    s = sets(name)
    out = tmp_path / "report"
    result = ckptkit("verify", s["q8"], "--against", s["bundle"], "--report", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["onestep.png", "report.json", "report.md"]
    data = json.loads((out / "report.json").read_text())
    jsonschema.validate(data, SCHEMA, cls=jsonschema.Draft202012Validator)
    assert data["passed"] is True and data["path"] == str(s["q8"]) and data["against"] == str(s["bundle"])
    from PIL import Image

    # the panels are as wide as the widest picture (the latent; the decoded image where there is a VAE) makes them
    shapes = [data["onestep"]["latent_shape"]] + ([[3, *data["onestep"]["image_size"]]]
                                                  if data["onestep"]["images"] == "image" else [])
    pictures = OneStepImages([StageImage("stage", "component", "latent" if len(shape) == 4 else "image",
                                         torch.zeros(shape), torch.zeros(shape)) for shape in shapes])
    with Image.open(out / "onestep.png") as png:
        assert png.width == onestep_png_size(pictures)[0] >= 4 * PANEL_MIN
        if name == "sana":  # no text encoder, no VAE: one row, the diffusion model's latent
            assert png.size == onestep_png_size(pictures)
        verdict = np.asarray(png.convert("RGB"))[MARGIN:MARGIN + HEADER_LINE, :MARGIN + 50].astype(int)
    green, red = verdict[..., 1] - verdict[..., 0] > 80, verdict[..., 0] - verdict[..., 1] > 80
    assert green.sum() > 20 and not red.any()  # "PASS" in green: the verify's verdict
    md = (out / "report.md").read_text()
    assert md.startswith("# ckptkit verify: PASS") and "heat map](onestep.png)" in md
    assert "| numeric | diffusion_model | max_rel_rms |" in md
    assert "PASS:" in result.stdout  # the terminal table is printed too


def test_json_output_is_strict_and_lists_every_row(sets):
    s = sets("sd1")
    code, data = verify_json(s["split"], "--against", s["bundle"])
    assert code == 0
    psnr = row(data, "onestep", "e2e", "psnr_db")
    assert psnr["value"] == "inf"  # identical images, written as a string (strict JSON)
    assert data["onestep"]["e2e"]["outputs"]["image"]["psnr"] == "inf"
    assert set(data["timings"]) == {"memory_plan", "integrity", "layout", "coverage", "numeric", "sha256_wait",
                                    "onestep", "total"}
    assert {r["check"] for r in data["results"]} == {"integrity", "layout", "coverage", "numeric", "onestep"}


# --------------------------------------------------------------------------- thresholds
def test_min_psnr_override_fails_q8_0(sets):
    s = sets("sd1")
    code, data = verify_json(s["q8"], "--against", s["bundle"], "--min-psnr", "200")
    assert code == 1
    assert failing(data) == {("onestep", "e2e", "psnr_db")}
    assert row(data, "onestep", "e2e", "psnr_db")["threshold"] == 200.0
    assert all(t["min_psnr"] == 200.0 for t in data["thresholds"].values())


def test_thresholds_file(sets, tmp_path):
    s = sets("sd1")
    strict = tmp_path / "strict.toml"
    strict.write_text("[Q8_0]\nmin_psnr = 200.0\n\n[plain]\nmin_cosine = 0.9\n")
    code, data = verify_json(s["q8"], "--against", s["bundle"], "--thresholds", strict)
    assert code == 1 and failing(data) == {("onestep", "e2e", "psnr_db")}
    # e2e runs through the Q8_0 components: held to Q8_0's limits, not to the plain VAE's
    assert data["thresholds"]["diffusion_model"]["min_psnr"] == data["thresholds"]["e2e"]["min_psnr"] == 200.0
    assert data["thresholds"]["vae"]["min_cosine"] == 0.9
    assert data["thresholds"]["diffusion_model"]["min_cosine"] == DEFAULTS["Q8_0"].min_cosine
    loose = tmp_path / "loose.toml"
    loose.write_text("[default]\nmax_rel_rms = 2.0\nmin_cosine = 0.5\n")
    code, data = verify_json(s["q8"], "--against", s["bundle"], "--thresholds", loose, "--no-onestep")
    assert code == 0
    assert row(data, "numeric", "diffusion_model", "max_rel_rms")["threshold"] == 2.0


@pytest.mark.parametrize("text, message", [
    ("[Q8_0\nmin_psnr = 1", "not a readable thresholds file"),
    ("[Q8_0]\nmin_pnsr = 30", "unknown threshold keys ['min_pnsr']"),
    ("[Q9_X]\nmin_psnr = 30", "unknown section [Q9_X]"),
    ("[Q8_0]\nmin_psnr = \"high\"", "must be a number"),
    ("min_psnr = 30", "outside a section"),
])
def test_bad_thresholds_file_exits_2(sets, tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = ckptkit("verify", sets("sd1")["q8"], "--thresholds", path)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("ckptkit: error:") and message in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("summary, want", [
    ({"Q8_0": 9000, "Q5_0": 500, "Q4_K": 100, "F32": 10**6}, "Q4_K"),  # fallbacks outweigh the Q4_K rows
    ({"Q5_0": 9000, "Q4_K": 10}, "Q4_K"),
    ({"Q6_K": 10, "Q8_0": 10**6}, "Q6_K"),
    ({"IQ4_XS": 10, "Q4_K": 10**6}, "IQ4_XS"),  # a type the thresholds do not list counts as least precise
    ({"F16": 10, "BF16": 10}, None),
    # fp8 is lossy whether scaled or not (an fp8 checkpoint): held to fp8's limits, not plain's
    ({"F16": 10, "BF16": 10, "F8_E4M3": 10}, "F8_E4M3"),
    ({"F8_E5M2": 10, "F8_E4M3": 10}, "F8_E5M2"),
])
def test_a_component_is_judged_by_its_least_precise_quantized_type(summary, want):
    from ckptkit.verify.coverage import component_quant_type

    assert component_quant_type({t: {"tensors": 1, "bytes": b} for t, b in summary.items()}) == want


def test_q4_k_m_fallback_rows_do_not_loosen_the_limits(sets, tmp_path):
    """A q4_k_m diffusion model (Q4_K with Q5_0/Q6_K/Q8_0 fallback rows) is held to Q4_K's limits."""
    s = sets("sdxl")
    pipeline.quantize(s["bundle"], tmp_path / "q4", Policy(diffusion_model="q4_k_m"))
    code, data = verify_json(tmp_path / "q4", "--against", s["bundle"], "--no-onestep")
    types = data["tables"]["types:diffusion_model"] if "tables" in data else None
    assert data["thresholds"]["diffusion_model"] == DEFAULTS["Q4_K"].__dict__, types
    assert code == 0, failing(data)


def test_q4_k_m_first_and_last_block_types_pass_coverage(sets, tmp_path):
    """Qwen-Image's first and last block are raised at q4_k_m (Q5_K, falling back to Q5_1 on rows
    that do not divide into 256): types the request makes, so coverage accepts them; a type no part
    of the request makes (Q8_0 from a rule nobody gave) still fails."""
    from ckptkit.verify.coverage import allowed_types

    s = sets("qwen_image")
    run = pipeline.quantize(s["bundle"], tmp_path / "q4", Policy(diffusion_model="q4_k_m"))
    assert "Q5_1" in run.plan.info["components"]["diffusion_model"]["policy"]["types"]  # the tiny blocks' Q5_K rows
    code, data = verify_json(tmp_path / "q4", "--against", s["bundle"], "--no-onestep")
    assert code == 0 and not failing(data), failing(data)
    assert row(data, "coverage", "diffusion_model", "quantized")["passed"] is True
    assert allowed_types({"requested": "q4_k_m"}) == {"Q4_K", "Q5_0", "Q5_K", "Q5_1", "Q6_K", "Q8_0"}
    assert allowed_types({"requested": "q4_k_s"}) == {"Q4_K", "Q5_0"}
