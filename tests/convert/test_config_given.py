"""Configs are never guessed (convert/configs.py): a value the weights cannot decide (head counts,
activations, latent scaling) comes with the input (config.json, ckptkit.config metadata) or from
--config; otherwise the command refuses with one line naming the value and --config. Every file
ckptkit writes ships the config it used, so later commands on it need nothing given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ckptkit.fixtures import factory
from ckptkit.fixtures.factory import FIXTURES, Fixture
from ckptkit.formats import open_checkpoint
from tests.cli import refused, run

# SD1 whose CLIP-L has 8 heads of 96 (not CLIP's 64-wide heads): `width // 64` would convert it with
# exit 0 and outputs far off.
H8 = Fixture("sd1_clip_h8", "sd1", "base", {"clip_l": {"num_attention_heads": 8}})


@pytest.fixture(autouse=True)
def h8_fixture(monkeypatch):
    monkeypatch.setitem(FIXTURES, H8.name, H8)


def config_dir(fixture: str, root: Path) -> Path:
    """What a user gives with --config: a folder of <diffusers folder>/config.json."""
    for comp in FIXTURES[fixture].components:
        (root / comp.diffusers_folder).mkdir(parents=True, exist_ok=True)
        (root / comp.diffusers_folder / "config.json").write_text(json.dumps(FIXTURES[fixture].config(comp.name)))
    return root


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "ckptkit.json"}


@pytest.mark.parametrize("fixture", ["sd1", "sdxl", "sd3", "flux_dev", "sana"])
def test_undetermined_values_are_refused_then_taken_from_config(tmp_path, fixture):
    bare = factory.write_bundle(fixture, tmp_path / "bare.safetensors", ship_config=False)
    line = refused(run("split", bare, "-o", tmp_path / "refused", "--layout", "diffusers"))
    assert "is not determined by the weights" in line and "--config" in line
    assert not (tmp_path / "refused").exists()

    given = config_dir(fixture, tmp_path / "configs")
    assert run("split", bare, "-o", tmp_path / "given", "--layout", "diffusers", "--config", given).exit_code == 0
    shipped = factory.write_bundle(fixture, tmp_path / "shipped.safetensors")
    assert run("split", shipped, "-o", tmp_path / "shipped", "--layout", "diffusers").exit_code == 0
    assert files_of(tmp_path / "given") == files_of(tmp_path / "shipped")


def test_clip_heads_that_are_not_64_wide_come_from_the_config(tmp_path):
    bare = factory.write_bundle(H8.name, tmp_path / "bare.safetensors", dtype=None, ship_config=False)
    line = refused(run("split", bare, "-o", tmp_path / "refused", "--layout", "diffusers", "--components", "clip_l"))
    assert line.startswith("ckptkit: error: clip_l: num_attention_heads is not determined")
    assert run("split", bare, "-o", tmp_path / "d", "--layout", "diffusers",
               "--config", config_dir(H8.name, tmp_path / "cfg")).exit_code == 0
    from transformers import CLIPTextModel

    model = CLIPTextModel.from_pretrained(tmp_path / "d" / "text_encoder", local_files_only=True).eval()
    assert model.config.num_attention_heads == 8
    want = factory.component_model(H8.name, "clip_l").eval()
    ids = torch.tensor([[0, 5, 17, 300, 2]])
    with torch.no_grad():
        got, ref = model(ids).last_hidden_state, want(ids).last_hidden_state
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_files_ckptkit_writes_ship_the_config(tmp_path):
    """A comfy split of a bare bundle given --config: each component file carries the config, so
    converting one of them later needs nothing given."""
    bare = factory.write_bundle("sdxl", tmp_path / "bare.safetensors", ship_config=False)
    assert run("split", bare, "-o", tmp_path / "c", "--config", config_dir("sdxl", tmp_path / "cfg")).exit_code == 0
    with open_checkpoint(tmp_path / "c" / "diffusion_model.safetensors") as ck:
        shipped = json.loads(ck.metadata["ckptkit.config"])["diffusion_model"]
    assert shipped["attention_head_dim"] == FIXTURES["sdxl"].config("diffusion_model")["attention_head_dim"]
    result = run("convert", tmp_path / "c" / "diffusion_model.safetensors", "-o", tmp_path / "unet", "--layout", "diffusers")
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "unet" / "config.json").read_text())
    assert written["attention_head_dim"] == shipped["attention_head_dim"]


def test_a_given_config_that_disagrees_with_the_shipped_one_is_refused(tmp_path):
    shipped = factory.write_bundle("sd1", tmp_path / "b.safetensors")
    cfg = config_dir("sd1", tmp_path / "cfg")
    unet = json.loads((cfg / "unet" / "config.json").read_text())
    (cfg / "unet" / "config.json").write_text(json.dumps(dict(unet, attention_head_dim=4)))
    line = refused(run("split", shipped, "-o", tmp_path / "o", "--layout", "diffusers", "--config", cfg))
    assert "attention_head_dim" in line and "shipped" in line


def test_a_given_config_that_contradicts_the_shapes_is_refused(tmp_path):
    bare = factory.write_bundle("sd1", tmp_path / "b.safetensors", ship_config=False)
    cfg = config_dir("sd1", tmp_path / "cfg")
    unet = json.loads((cfg / "unet" / "config.json").read_text())
    (cfg / "unet" / "config.json").write_text(json.dumps(dict(unet, block_out_channels=[32, 32])))
    refused(run("split", bare, "-o", tmp_path / "o", "--layout", "diffusers", "--config", cfg))
    assert not (tmp_path / "o").exists()


def test_comfy_split_of_a_bare_bundle_needs_no_config(tmp_path):
    """Names and shapes do not depend on the undetermined values: a comfy split copies as is."""
    bare = factory.write_bundle("sd1", tmp_path / "b.safetensors", ship_config=False)
    assert run("split", bare, "-o", tmp_path / "c").exit_code == 0
    with open_checkpoint(tmp_path / "c" / "diffusion_model.safetensors") as ck:
        assert "ckptkit.config" not in ck.metadata  # nothing was given, nothing is claimed
