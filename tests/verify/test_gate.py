"""`verify` as a CI gate that cannot be fooled by an edited manifest, plans its memory before any
work, reports what ran when refused or interrupted, and holds one model at a time.

Each bypass an edited `ckptkit.json` allowed gets a test: exit 1 and the check that catches it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ckptkit import pipeline
from ckptkit.engine.manifest import MANIFEST
from ckptkit.fixtures import damage
from ckptkit.fixtures.factory import FIXTURES, Fixture, write_bundle
from ckptkit.formats import open_checkpoint
from ckptkit.quant.policy import Policy
from ckptkit.verify import VerifyOptions, run_verify
from tests.verify.test_verify import SCHEMA, Sets, ckptkit, failing, row, verify_json

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return Sets(tmp_path_factory.mktemp("gate"))


def manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def save_manifest(folder: Path, data: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")


def garbage(path: Path, size: int = 4096) -> None:
    path.write_bytes(os.urandom(size))


# --------------------------------------------------------------------------- the manifest cannot vouch for itself
@pytest.mark.parametrize("against", [False, True])
def test_garbage_file_with_its_entry_deleted_fails(sets, against):
    folder = sets.copy("sdxl", "q8", f"garbage-{against}")
    garbage(folder / "clip_g.gguf")
    data = manifest(folder)
    del data["components"]["clip_g"]
    save_manifest(folder, data)
    args = [folder] + (["--against", sets("sdxl")["bundle"]] if against else [])
    code, report = verify_json(*args)
    assert code == 1
    bad = failing(report)
    assert ("coverage", "clip_g", "component") in bad  # the family has clip_g; the set does not
    assert ("integrity", None, "unlisted_file") in bad  # a weight file nothing accounts for
    assert "clip_g.gguf" in row(report, "integrity", None, "unlisted_file")["detail"]


def test_missing_component_file_and_entry_fails(sets):
    folder = sets.copy("sdxl", "q8", "gone")
    (folder / "vae.safetensors").unlink()
    data = manifest(folder)
    del data["components"]["vae"]
    save_manifest(folder, data)
    code, report = verify_json(folder)
    assert code == 1 and ("coverage", "vae", "component") in failing(report)


def test_three_of_four_garbage_and_a_manifest_of_one_fails(sets):
    folder = sets.copy("sdxl", "q8", "three")
    for name in ("clip_l.gguf", "clip_g.gguf", "vae.safetensors"):
        garbage(folder / name)
    data = manifest(folder)
    data["components"] = {"diffusion_model": data["components"]["diffusion_model"]}
    save_manifest(folder, data)
    code, report = verify_json(folder, "--against", sets("sdxl")["bundle"])
    assert code == 1
    bad = failing(report)
    assert {("coverage", c, "component") for c in ("clip_l", "clip_g", "vae")} <= bad
    assert ("integrity", None, "unlisted_file") in bad


def test_bit_flip_with_its_hash_deleted_fails(sets):
    folder = sets.copy("sdxl", "q8", "nohash")
    path = folder / "diffusion_model.gguf"
    damage.flip_bytes(path, path.stat().st_size - 4096, 16)
    data = manifest(folder)
    del data["components"]["diffusion_model"]["sha256"]
    save_manifest(folder, data)
    code, report = verify_json(folder)
    assert code == 1
    r = row(report, "integrity", "diffusion_model", "sha256")
    assert r["passed"] is False and "records no sha256" in r["detail"]


def test_file_outside_the_folder_is_refused(sets):
    folder = sets.copy("sdxl", "q8", "outside")
    outside = folder.parent / "elsewhere.gguf"
    shutil.copy(folder / "clip_l.gguf", outside)
    data = manifest(folder)
    data["components"]["clip_l"]["file"] = "../elsewhere.gguf"
    save_manifest(folder, data)
    code, report = verify_json(folder)
    assert code == 1
    bad = failing(report)
    assert ("integrity", "clip_l", "file") in bad or ("integrity", None, "file") in bad, bad


def test_requested_type_is_compared_with_the_stored_one(sets, tmp_path):
    """The manifest asks q8_0, the file holds q4_0 and its hash is brought up to date."""
    s = sets("sdxl")
    folder = sets.copy("sdxl", "q8", "q4")
    q4 = tmp_path / "q4"
    pipeline.quantize(s["bundle"], q4, Policy(diffusion_model="q4_0"))
    shutil.copy(q4 / "diffusion_model.gguf", folder / "diffusion_model.gguf")
    damage.refresh_manifest(folder, "diffusion_model")
    code, report = verify_json(folder)
    assert code == 1
    r = row(report, "coverage", "diffusion_model", "requested")
    assert r["passed"] is False and "Q4_0" in r["detail"]


def _gguf_type_field(path: Path, tensor: str) -> int:
    """The byte offset of `tensor`'s ggml type in the GGUF header (after its name and dims)."""
    data = path.read_bytes()[:1 << 22]
    name = tensor.encode()
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    (n_dims,) = struct.unpack_from("<I", data, at)
    return at + 4 + 8 * n_dims


def test_f16_data_relabelled_as_q8_0_fails(sets, tmp_path):
    """A GGUF whose F16 tensor is relabelled Q8_0 (the data left in place): the Q8_0 blocks are
    shorter than the bytes, so a gap opens before the next tensor. The reader refuses it."""
    folder = sets.copy("sdxl", "q8", "relabel")
    path = folder / "diffusion_model.gguf"
    f16 = tmp_path / "f16.gguf"
    damage.rewrite_gguf(path, f16, damage.dequantized_to_f16)
    with open_checkpoint(f16) as ck:
        layout = sorted(ck.layout, key=lambda t: t.offset)
        victim = next(t for t in layout[:-1] if t.type.name == "F16" and t.numel % 32 == 0)
    at = _gguf_type_field(f16, victim.name)
    raw = bytearray(f16.read_bytes())
    assert struct.unpack_from("<I", raw, at)[0] == 1  # F16
    struct.pack_into("<I", raw, at, 8)  # Q8_0
    path.write_bytes(bytes(raw))
    damage.refresh_manifest(folder, "diffusion_model")
    code, report = verify_json(folder)
    assert code == 1
    r = row(report, "integrity", "diffusion_model", "readable")
    assert r["passed"] is False, r


def test_folder_without_a_manifest_fails(sets):
    folder = sets.copy("sdxl", "q8", "nomanifest")
    (folder / MANIFEST).unlink()
    code, report = verify_json(folder)
    assert code == 1 and ("integrity", None, "manifest") in failing(report)


def test_expect_manifest_pins_it(sets, tmp_path):
    folder = sets.copy("sdxl", "q8", "pinned")
    digest = hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()
    code, report = verify_json(folder, "--expect-manifest", digest)
    assert code == 0 and row(report, "integrity", None, "manifest_sha256")["passed"] is True
    published = tmp_path / "published.json"
    shutil.copy(folder / MANIFEST, published)
    code, _ = verify_json(folder, "--expect-manifest", published)
    assert code == 0
    data = manifest(folder)  # an edit of one byte's worth: the pin catches it
    data["components"]["clip_l"]["sha256"] = "0" * 64
    save_manifest(folder, data)
    for pin in (digest, published):
        code, report = verify_json(folder, "--expect-manifest", pin)
        assert code == 1 and ("integrity", None, "manifest_sha256") in failing(report)
    result = ckptkit("verify", sets("sdxl")["bundle"], "--expect-manifest", digest)
    assert result.exit_code == 2 and result.stderr.startswith("ckptkit: error: ")


# --------------------------------------------------------------------------- one component file
def test_one_component_file_against_its_reference(sets):
    s = sets("sdxl")
    cand = s["q8"] / "diffusion_model.gguf"
    ref = s["split"] / "diffusion_model.safetensors"
    code, report = verify_json(cand, "--against", ref, "--family", "sdxl")
    assert code == 0, failing(report)
    checks = {r["check"] for r in report["results"] if r["component"] == "diffusion_model"}
    assert checks >= {"integrity", "layout", "coverage", "numeric", "onestep"}, checks
    assert report["onestep"]["diffusion"]["applicable"] is True


# --------------------------------------------------------------------------- options as everywhere
@pytest.mark.parametrize("spelling", ["fp32", "float32", "FP32", "bf16", "bfloat16"])
def test_dtype_spellings(sets, spelling):
    s = sets("sd1")
    result = ckptkit("verify", s["q8"], "--against", s["bundle"], "--dtype", spelling, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    want = "float32" if "32" in spelling else "bfloat16"
    assert json.loads(result.stdout)["onestep"]["dtype"] == want
    assert ckptkit("verify", s["q8"], "--dtype", "int8").exit_code == 2


def test_other_commands_take_the_long_spellings(sets, tmp_path):
    out = tmp_path / "split"
    result = ckptkit("split", sets("sd1")["bundle"], "-o", out, "--dtype", "float16", "--json")
    assert result.exit_code == 0, result.output
    with open_checkpoint(out / "vae.safetensors") as ck:
        assert {info.dtype for info in ck.tensors.values() if info.dtype.startswith(("F", "B"))} == {"F16"}


# --------------------------------------------------------------------------- plan first, report always
def test_memory_plan_refusal_is_immediate_and_reported(sets, tmp_path):
    s = sets("sdxl")
    out = tmp_path / "report"
    t0 = time.perf_counter()
    result = ckptkit("verify", s["q8"], "--against", s["bundle"], "--device", "cpu", "--memory-limit", "1MB",
                     "--report", out)
    elapsed = time.perf_counter() - t0
    assert result.exit_code == 2, (result.output, result.exception)
    assert elapsed < 2.0, elapsed
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ckptkit: error: 1-step check: planned peak"), lines
    assert "--memory-limit 1.0 MB" in lines[0] and "kept free" in lines[0] and "--no-onestep" in lines[0]
    assert "memory_plan" in result.stdout  # the table of what ran is printed
    data = json.loads((out / "report.json").read_text())
    import jsonschema

    jsonschema.validate(data, SCHEMA, cls=jsonschema.Draft202012Validator)
    assert data["status"] == "refused" and data["exit_code"] == 2 and not data["passed"]
    plan = row(data, "onestep", None, "memory_plan")
    assert plan["passed"] is False and "planned peak" in plan["detail"]
    assert data["tables"]["memory_plan"]["fits"] is False
    assert "integrity" not in data["timings"]  # refused before any work
    ok = ckptkit("verify", s["q8"], "--against", s["bundle"], "--memory-limit", "1MB", "--no-onestep")
    assert ok.exit_code == 0, ok.output


def test_interrupted_verify_still_reports(sets, tmp_path, monkeypatch):
    import ckptkit.verify as verify_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(verify_mod, "check_numeric", interrupted)
    s = sets("sd1")
    out = tmp_path / "report"
    result = ckptkit("verify", s["q8"], "--against", s["bundle"], "--device", "cpu", "--report", out)
    assert result.exit_code == 130, (result.output, result.exception)
    assert result.stderr.strip() == "ckptkit: interrupted"
    data = json.loads((out / "report.json").read_text())
    assert data["status"] == "interrupted" and data["exit_code"] == 130
    r = row(data, "numeric", None, "interrupted")
    assert "during the numeric check" in r["detail"]
    assert row(data, "integrity", "diffusion_model", "sha256")["passed"] is True  # what ran is there
    assert "onestep" not in data["timings"]


def test_progress_counts_every_phase(sets):
    s = sets("sd1")
    seen: dict[str, list[int]] = {}

    def progress(total, label, unit="B"):
        seen[label] = [total, 0]

        def update(n):
            seen[label][1] += n
        return update

    report = run_verify(s["q8"], VerifyOptions(against=str(s["bundle"]), device="cpu", progress=progress))
    assert report.passed
    assert set(seen) == {"sha256", "compare", "1-step models"}, seen
    for label, (total, done) in seen.items():
        assert total > 0 and done == total, (label, total, done)
    sizes = sum(p.stat().st_size for p in s["q8"].iterdir() if p.name != MANIFEST)
    assert seen["sha256"][0] == sizes


def test_quiet_and_non_terminal_print_no_progress(sets):
    s = sets("sd1")
    for extra in ([], ["--quiet"]):
        result = ckptkit("verify", s["q8"], "--against", s["bundle"], "--device", "cpu", *extra)
        assert result.exit_code == 0 and result.stderr == ""


# --------------------------------------------------------------------------- one model at a time
@pytest.mark.parametrize("name", [n for n in FIXTURES if n != "flux2_klein"])  # klein: flux2_dev's class
def test_layer_streamed_models_compute_the_same(tmp_path, name):
    """Every family's every component, layer-streamed on the candidate side and loaded whole on the
    reference side: every stage's outputs are bit-identical."""
    from ckptkit.families.detect import detect
    from ckptkit.verify.memory import plan_memory
    from ckptkit.verify.onestep import model_set, run_onestep

    torch.set_num_threads(1)
    path = write_bundle(name, tmp_path / f"{name}.safetensors", dtype=None)
    with open_checkpoint(path) as ck:
        ref, cand = model_set((ck, detect(ck))), model_set((ck, detect(ck)))
        plan = plan_memory(ref, cand, torch.device("cpu"), torch.float32, stream_above=0)
        for m in plan.models:
            m.streamed = m.side == "candidate"
        result = run_onestep(ref, cand, device="cpu", seed=1, plan=plan)
    compared = [(c.stage, k, v) for c in result.checks() for k, v in c.outputs.items()]
    assert compared
    assert all((v.rel_rms, v.max_abs) == (0.0, 0.0) for _, _, v in compared), compared


MID = Fixture("sd1_mid", "sd1", "base", {"diffusion_model": {"block_out_channels": [320, 640]}})

CHILD = """
import json, sys, threading, time
import ckptkit.verify.onestep_check as oc
from ckptkit.verify import VerifyOptions, run_verify
from ckptkit.verify.memory import rss_bytes
seen = {}
inner = oc.check_onestep
def sampled(*args, **kwargs):  # resident memory while the 1-step check runs, every 5 ms
    seen["start"] = seen["peak"] = rss_bytes()
    done = threading.Event()
    def sample():
        while not done.is_set():
            seen["peak"] = max(seen["peak"], rss_bytes())
            time.sleep(0.005)
    t = threading.Thread(target=sample)
    t.start()
    try:
        return inner(*args, **kwargs)
    finally:
        done.set()
        t.join()
oc.check_onestep = sampled
stream = int(sys.argv[3])
r = run_verify(sys.argv[1], VerifyOptions(against=sys.argv[2], device="cpu", stream_above=stream))
print(json.dumps({"exit": r.exit_code, "plan": r.tables["memory_plan"], **seen}))
"""


@pytest.fixture(scope="module")
def mid_size(tmp_path_factory):
    """A 111M-parameter SD1 UNet (446 MB in float32) with the tiny text encoder and VAE, and its Q8_0 set."""
    folder = tmp_path_factory.mktemp("mid")
    FIXTURES[MID.name] = MID
    try:
        bundle = write_bundle(MID.name, folder / "mid.safetensors")
    finally:
        del FIXTURES[MID.name]
    pipeline.quantize(bundle, folder / "q8", Policy(diffusion_model="q8_0"))
    with open_checkpoint(folder / "q8" / "diffusion_model.gguf") as ck:
        unet = sum(info.numel for info in ck.tensors.values()) * 4
    return bundle, folder / "q8", unet


def _child(cand, ref, stream) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(cand), str(ref), str(stream)], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_one_model_at_a_time(mid_size):
    """While the 1-step check runs, memory above what the process held when it started is one
    UNet in float32 when models are loaded whole (two at a time would be twice that), and a
    fraction of one when they are layer-streamed."""
    bundle, q8, unet = mid_size
    whole = _child(q8, bundle, 10 ** 15)
    assert whole["exit"] == 0 and not any(m["streamed"] for m in whole["plan"]["models"])
    above = whole["peak"] - whole["start"]
    assert 0.8 * unet < above < 1.5 * unet, (above, unet)
    streamed = _child(q8, bundle, 0)
    assert streamed["exit"] == 0 and all(m["streamed"] for m in streamed["plan"]["models"])
    above_streamed = streamed["peak"] - streamed["start"]
    assert above_streamed < 0.35 * unet, (above_streamed, unet)
