"""`ckptkit publish DIR`: the model card (front matter, files, policy, verify table, image, usage
for the set's own layout and client), validation (a stored report only when fresh for the files'
hashes), --dry-run, and --push through a mocked `huggingface_hub.HfApi` (no network)."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from ckptkit.fixtures.factory import write_bundle
from tests.cli import ok, refused, run

RECIPE = """
out = "dist"
license = "creativeml-openrail-m"
sources = ["sd1.safetensors"]

[[variant]]
name = "Q4_K_M"
type = "q4_k_m"

[verify]
resolution = 32
"""


class FakeHub:
    """Stands in for huggingface_hub.HfApi: records what would go over the network."""
    calls: list = []

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, **kwargs):
        FakeHub.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs):
        FakeHub.calls.append(("upload_folder", kwargs))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"})()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("publish")
    write_bundle("sd1", folder / "sd1.safetensors")
    (folder / "recipe.toml").write_text(RECIPE)
    ok(run("build", folder / "recipe.toml", "-q"))
    return folder


@pytest.fixture()
def set_copy(built, tmp_path):
    """A copy of the built tree (the set and its split), for tests that change it."""
    dist = tmp_path / "dist"
    shutil.copytree(built / "dist", dist)
    return dist / "sd1" / "Q4_K_M"


@pytest.fixture()
def hub(monkeypatch):
    import huggingface_hub

    FakeHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    return FakeHub


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_card_describes_the_set(set_copy):
    result = ok(run("publish", set_copy))
    assert "PASS (stored report)" in result.stdout
    card = (set_copy / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["license"] == "creativeml-openrail-m" and meta["library_name"] == "gguf"
    assert {"ckptkit", "sd1", "gguf", "q4_k_m"} <= set(meta["tags"])
    manifest = json.loads((set_copy / "ckptkit.json").read_text())
    for name, comp in manifest["components"].items():  # the files table: every file, its size and hash
        assert f"| {name} | `{comp['file']}` |" in card and comp["sha256"] in card
    assert "asked `q4_k_m`" in card and "Kept in high precision" in card  # the policy in words
    assert "Verdict: **PASS**" in card and "| e2e | onestep psnr_db |" in card  # the verify table
    assert "](verify/onestep.png)" in card and (set_copy / "verify" / "onestep.png").is_file()
    assert "Unet Loader (GGUF)" in card and "from_single_file" in card  # this set: ComfyUI-GGUF's layout
    assert "/tmp" not in card and str(set_copy) not in card  # no local paths published


def test_dry_run_lists_exactly_what_would_be_uploaded(set_copy, hub):
    result = ok(run("publish", set_copy, "--push", "me/sd1-gguf", "--dry-run", "--json"))
    data = json.loads(result.stdout)
    manifest = json.loads((set_copy / "ckptkit.json").read_text())
    expected = [c["file"] for c in manifest["components"].values()] + ["ckptkit.json", "README.md",
                                                                       "verify/onestep.png"]
    assert [f["path"] for f in data["files"]] == expected
    assert not (set_copy / "README.md").exists() and hub.calls == []  # nothing written, nothing sent


def test_push_uploads_exactly_those_files_after_verify(set_copy, hub):
    result = ok(run("publish", set_copy, "--push", "me/sd1-gguf", "--base-model", "org/base-model"))
    assert [c[0] for c in hub.calls] == ["create_repo", "upload_folder"]
    upload = hub.calls[1][1]
    assert upload["repo_id"] == "me/sd1-gguf" and upload["folder_path"] == str(set_copy)
    assert set(upload["allow_patterns"]) == {"diffusion_model.gguf", "clip_l.safetensors", "vae.safetensors",
                                             "ckptkit.json", "README.md", "verify/onestep.png"}
    assert "build.json" not in upload["allow_patterns"]
    card = (set_copy / "README.md").read_text()
    assert _front_matter(card)["base_model"] == "org/base-model" and "USER/REPO" not in card
    assert "me/sd1-gguf" in card and "commit/abc" in result.stdout


def test_a_changed_file_is_verified_again_and_a_failing_set_is_not_pushed(set_copy, hub):
    gguf = set_copy / "diffusion_model.gguf"
    data = bytearray(gguf.read_bytes())
    data[len(data) // 2] ^= 0xFF
    gguf.write_bytes(bytes(data))
    result = run("publish", set_copy, "--push", "me/sd1-gguf")
    assert result.exit_code == 1, result.output
    assert "changed since it was verified" in result.stderr and "FAIL (verified now)" in result.stdout
    assert hub.calls == [] and not (set_copy / "README.md").exists()


def test_a_missing_file_fails_verify_not_the_command(set_copy, hub):
    (set_copy / "vae.safetensors").unlink()
    result = run("publish", set_copy, "--push", "me/sd1-gguf")
    assert result.exit_code == 1, result.output
    assert "vae.safetensors missing" in result.stderr and "Traceback" not in result.output
    assert hub.calls == [] and not (set_copy / "README.md").exists()


def test_a_set_without_a_fresh_report_needs_a_reference(built, tmp_path):
    from ckptkit import pipeline
    from ckptkit.quant.policy import Policy

    out = tmp_path / "q8"
    pipeline.quantize(built / "sd1.safetensors", out, Policy(diffusion_model="q8_0"))
    line = refused(run("publish", out))
    assert "no stored verify report" in line and "--against" in line
    result = ok(run("publish", out, "--against", built / "sd1.safetensors", "--license", "mit"))
    assert "PASS (verified now)" in result.stdout
    assert _front_matter((out / "README.md").read_text())["license"] == "mit"
    assert (out / "verify" / "report.json").is_file()


def test_not_a_set_is_one_line(tmp_path):
    line = refused(run("publish", tmp_path))
    assert "not a component set" in line


def test_usage_follows_the_client_and_layout(built, tmp_path):
    from ckptkit import pipeline
    from ckptkit.publish.card import render
    from ckptkit.quant.policy import Policy

    bundle = built / "sd1.safetensors"
    report = {"passed": True, "results": []}
    sdcpp = pipeline.quantize(bundle, tmp_path / "sdcpp", Policy(diffusion_model="q8_0", client="sdcpp")).manifest
    card = render(sdcpp, report, {"repo_id": "me/x"})
    assert "sd --diffusion-model diffusion_model.gguf" in card and "--client sdcpp" in card
    assert "Unet Loader (GGUF)" not in card
    bnb = pipeline.quantize(bundle, tmp_path / "bnb", Policy(diffusion_model="nf4", backend="bnb",
                                                                 layout="diffusers")).manifest
    card = render(bnb, report, {"repo_id": "me/x"})
    meta = _front_matter(card)
    assert meta["library_name"] == "diffusers" and "bitsandbytes" in meta["tags"]
    assert "DiffusionPipeline.from_pretrained(\"me/x\")" in card and "GGUFQuantizationConfig" not in card
