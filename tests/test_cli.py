"""The command line: exit codes, one-line errors, --json."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ckptkit.cli import cli
from ckptkit.fixtures.factory import write_bundle


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


@pytest.fixture(scope="module")
def sd1_bundle(tmp_path_factory):
    return write_bundle("sd1", tmp_path_factory.mktemp("cli") / "sd1.safetensors")


def test_inspect_human(sd1_bundle):
    result = run("inspect", sd1_bundle)
    assert result.exit_code == 0, result.output
    assert "family: sd1 (Stable Diffusion 1.x), variant base; bundle" in result.output
    assert "[float_position_ids]" in result.output
    assert "[ema_copy]" in result.output


def test_inspect_json_and_scan(sd1_bundle):
    result = run("inspect", sd1_bundle, "--json", "--scan")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["family"] == "sd1" and data["variant"] == "base"
    assert data["nonfinite"] == {}
    assert {c["name"] for c in data["components"]} == {"diffusion_model", "clip_l", "vae"}
    assert data["junk"]["tensors"] == 5
    codes = {p["code"] for p in data["problems"]}
    assert {"float_position_ids", "ema_copy"} <= codes


def test_scan_counts_nonfinite(tmp_path):
    import torch

    from ckptkit.fixtures.factory import bundle_state
    from ckptkit.formats.safetensors import save_safetensors

    state = bundle_state("sd1", junk=False)
    name = "model.diffusion_model.out.2.weight"
    state[name] = state[name].clone()
    state[name].view(-1)[:3] = torch.tensor([float("nan"), float("inf"), float("nan")])
    save_safetensors(tmp_path / "nan.safetensors", state)
    data = json.loads(run("inspect", tmp_path / "nan.safetensors", "--json", "--scan").stdout)
    assert data["nonfinite"] == {name: {"nan": 2, "inf": 1}}


# Every command on every corpus entry: tests/formats/test_hostile_cli.py.


def test_real_process_no_traceback(tmp_path):
    bad = tmp_path / "trunc.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    proc = subprocess.run([sys.executable, "-m", "ckptkit.cli", "inspect", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr


def test_usage_error_exits_2():
    assert run("inspect").exit_code == 2
    assert run("no-such-command").exit_code == 2


def test_demo_runs_the_whole_pipeline(tmp_path):
    """The README's main job: a synthetic bundle, a 2-variant recipe built and verified with the 1-step
    check, model cards; the output says where the reports and images are; a second run reuses it."""
    out = tmp_path / "demo"
    result = run("demo", "--family", "sd1", "--out", out)
    assert result.exit_code == 0, result.output
    sets = out / "sets" / "sd1_synthetic"
    for variant, dm_type in (("Q8_0", "Q8_0"), ("Q4_K_M", "Q4_K")):
        manifest = json.loads((sets / variant / "ckptkit.json").read_text())
        assert dm_type in manifest["components"]["diffusion_model"]["dtypes"]
        report = json.loads((sets / variant / "verify" / "report.json").read_text())
        assert report["passed"] and any(r["metric"] == "psnr_db" and r["passed"] for r in report["results"])
        for rel in ("verify/report.md", "verify/onestep.png", "README.md"):
            assert str(sets / variant / rel) in result.stdout  # pointed at
    assert "clip_l = \"q8_0\"" in (out / "demo.toml").read_text()  # text encoders asked Q8_0 ...
    assert "ComfyUI-GGUF loads no clip_l" in result.stdout  # ... which ComfyUI-GGUF loads from safetensors only
    clip = json.loads((sets / "Q4_K_M" / "ckptkit.json").read_text())["components"]["clip_l"]["policy"]
    assert (clip["requested"], clip["asked"]) == ("keep", "q8_0") and "ComfyUI-GGUF" in clip["not_done"]
    assert "Asked `q8_0`, not done: ComfyUI-GGUF loads no clip_l" in (sets / "Q4_K_M" / "README.md").read_text()
    assert result.stdout.count("PASS: ") == 2 and "demo: OK" in result.stdout
    again = run("demo", "--family", "sd1", "--out", out, "--json")
    assert again.exit_code == 0, again.output
    data = json.loads(again.stdout)
    assert data["ok"] and data["build"]["results"] == {}  # current: nothing made again
    assert {v["status"] for v in data["build"]["plan"]["variants"]} == {"done"}
