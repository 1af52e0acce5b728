"""`ckptkit trigflow` and `ckptkit sample` end to end on tiny fixtures: outputs, --dry-run, exit codes."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ckptkit.cli import cli
from ckptkit.fixtures.factory import original_state, write_bundle
from ckptkit.formats.safetensors import save_safetensors

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("trigflow_cli")
    return {"root": root, "sana": write_bundle("sana", root / "sana.safetensors"),
            "sprint": write_bundle("sana_sprint", root / "sprint.safetensors"),
            "flux": write_bundle("flux_schnell", root / "flux.safetensors")}


def pixels(path):
    return np.asarray(Image.open(path))


def test_dry_run_writes_nothing(files):
    out = files["root"] / "dry"
    result = run("trigflow", files["sana"], "-o", out, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "plan: trigflow" in result.stdout and "init 4" in result.stdout
    assert "time scale 1000 (assumed" in result.stdout
    assert "SanaSprintPipeline feeds t" in result.stderr  # the warning line
    plan = json.loads(run("trigflow", files["sana"], "-o", out, "--dry-run", "--json", "--layout", "original").stdout)
    tensors = {t["name"]: t for t in plan["plan"]["outputs"][0]["tensors"]}
    assert tensors["cfg_embedder.mlp.2.weight"]["source"] == {"op": "full", "args": [[224, 224], 0.0, "F16"]}
    assert tensors["cfg_embedder.mlp.0.weight"]["op"] == "init"
    assert not out.exists()


def test_trigflow_then_sample(files):
    out = files["root"] / "tf"
    result = run("trigflow", files["sana"], "-o", out, "--time-scale", "1")
    assert result.exit_code == 0, result.output
    assert "wrote transformer/diffusion_pytorch_model.safetensors" in result.stdout and not result.stderr
    a, b, c = (files["root"] / n for n in ("a.png", "b.png", "c.png"))
    result = run("sample", out, "--steps", "2", "--seed", "3", "-o", a)
    assert result.exit_code == 0, result.output
    assert "time scale 1" in result.stdout and "seeded random caption embedding" in result.stdout
    assert "latent visualisation (no VAE)" in result.stdout
    assert run("sample", out, "--steps", "2", "--seed", "3", "-o", b).exit_code == 0
    assert run("sample", out, "--steps", "2", "--seed", "4", "-o", c).exit_code == 0
    assert pixels(a).shape == (256, 256, 3)
    assert np.array_equal(pixels(a), pixels(b)) and not np.array_equal(pixels(a), pixels(c))
    assert run("sample", out, "-o", a).exit_code == 2  # exists, no --force


def test_sample_original_layout_honours_recorded_time_scale(files):
    out = files["root"] / "tf_orig"
    assert run("trigflow", files["sana"], "-o", out, "--layout", "original", "--with-logvar").exit_code == 0
    data = json.loads(run("sample", out, "--steps", "3", "-o", files["root"] / "o.png", "--json").stdout)
    assert data["time_scale"] == 1000.0  # from the manifest: the original-layout file has no config
    assert data["schedule"] == pytest.approx([1.5707963, 1.0471976, 0.5235988, 0.0])


def test_sample_flow_model_component_set_with_vae_and_text_encoders(files):
    split = files["root"] / "flux_split"
    assert run("split", files["flux"], "-o", split).exit_code == 0
    result = run("sample", split, "--steps", "4", "--height", "32", "--width", "32", "--prompt", "a red cube",
                 "-o", files["root"] / "f.png", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "text encoders text_encoder, text_encoder_2" in result.stdout and "decoded by the VAE" in result.stdout
    assert "time scale 1," in result.stdout  # FLUX embeds t (it multiplies by 1000 itself)
    assert pixels(files["root"] / "f.png").shape == (32, 32, 3)


def test_trigflow_form_left_alone(files):
    result = run("trigflow", files["sprint"], "-o", files["root"] / "nothing")
    assert result.exit_code == 0
    assert "already in TrigFlow form" in result.stdout and "nothing written" in result.stdout
    assert not (files["root"] / "nothing").exists()


@pytest.mark.parametrize("args, text", [
    (("trigflow", "{root}/pixart.safetensors", "-o", "{root}/x"), "PixArt"),
    (("trigflow", "{root}/unet.safetensors", "-o", "{root}/x"), "not a flow-matching model"),
    (("trigflow", "{flux}", "-o", "{root}/x"), "only Sana has a TrigFlow checkpoint form"),
    (("trigflow", "{root}/missing.safetensors", "-o", "{root}/x"), "no such file"),
    (("trigflow", "{sana}", "-o", "{root}/x", "--with-logvar"), "--layout original"),
    (("trigflow", "{sana}", "-o", "{root}/x", "--time-scale", "0"), "positive"),
    (("sample", "{root}/unet.safetensors", "-o", "{root}/x.png"), "not a flow-matching model"),
    (("sample", "{sana}", "-o", "{root}/x.png", "--steps", "3", "--schedule", "paper"), "paper gives schedules"),
    (("sample", "{sana}", "-o", "{root}/x.png", "--steps", "2", "--schedule", "1.0,1.2,0"), "must decrease"),
    (("sample", "{sana}", "-o", "{root}/x.png", "--height", "100"), "multiple of 32"),
])
def test_errors_exit_2_with_one_line(files, args, text):
    root = files["root"]
    if not (root / "unet.safetensors").exists():
        save_safetensors(root / "unet.safetensors", original_state("sdxl", "diffusion_model"))
        import torch

        save_safetensors(root / "pixart.safetensors", {"blocks.0.mlp.fc1.weight": torch.zeros(8, 4),
                                                       "blocks.0.cross_attn.kv_linear.weight": torch.zeros(8, 4)})
    result = run(*(a.format(**files) for a in args))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("ckptkit: error: ")]
    assert len(lines) == 1 and text in lines[0], result.stderr
    assert not (root / "x").exists() and not (root / "x.png").exists()


def test_sample_takes_what_the_weights_cannot_tell_from_config(files, tmp_path):
    """A Sana file at an unreleased size with no config: sampling refuses, naming the value and
    --config; with the config (or a component set ckptkit wrote from it) it samples, and the same
    image as from the file that shipped its config."""
    from ckptkit.fixtures.factory import FIXTURES

    bare = write_bundle("sana", tmp_path / "bare.safetensors", ship_config=False)
    result = run("sample", bare, "-o", tmp_path / "refused.png")
    assert result.exit_code == 2 and "is not determined by the weights" in result.stderr and "--config" in result.stderr
    assert not (tmp_path / "refused.png").exists()
    (tmp_path / "cfg" / "transformer").mkdir(parents=True)
    (tmp_path / "cfg" / "transformer" / "config.json").write_text(json.dumps(FIXTURES["sana"].config("diffusion_model")))
    given = run("sample", bare, "-o", tmp_path / "given.png", "--config", tmp_path / "cfg", "--steps", "2")
    assert given.exit_code == 0, given.output
    shipped = run("sample", files["sana"], "-o", tmp_path / "shipped.png", "--steps", "2")
    assert shipped.exit_code == 0, shipped.output
    assert np.array_equal(pixels(tmp_path / "given.png"), pixels(tmp_path / "shipped.png"))
    # --family names the family the file is read as; one it does not hold is one line
    assert run("sample", files["sana"], "-o", tmp_path / "f.png", "--family", "sana").exit_code == 0
    wrong = run("sample", files["sana"], "-o", tmp_path / "w.png", "--family", "sd3")
    assert wrong.exit_code == 2 and "--family sd3: this file holds no" in wrong.stderr
    # a diffusers pipeline folder carries its own configs: --config there is refused, not ignored
    out = tmp_path / "tf"
    assert run("trigflow", files["sana"], "-o", out, "--family", "sana").exit_code == 0
    folder = run("sample", out, "-o", tmp_path / "d.png", "--config", tmp_path / "cfg")
    assert folder.exit_code == 2 and "carries its own configs" in folder.stderr
