"""An original LDM model yaml beside a checkpoint (`<stem>.yaml`, as ComfyUI and A1111 read it) is a
config shipped with the input: it declares what the weights cannot tell (the UNet's heads, SDXL's
time-id embedding width, the VAE's latent scale), and every size still comes from the shapes."""

from __future__ import annotations

import json

import pytest

from ckptkit.fixtures import factory
from ckptkit.fixtures.factory import FIXTURES, Fixture
from tests.cli import refused, run

# SD2 at other widths with 48-channel heads: neither the released head layout nor 64-wide heads
WIDE = Fixture("sd2_48", "sd2", "base", {"diffusion_model": {"block_out_channels": [96, 192], "attention_head_dim": [2, 4]},
                                          "vae": {"scaling_factor": 0.13025}})

SD2_YAML = """model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    scale_factor: 0.13025
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        model_channels: 96
        channel_mult: [1, 2]
        num_head_channels: 48
        use_linear_in_transformer: true
        context_dim: 1024
"""

SDXL_YAML = """model:
  target: sgm.models.diffusion.DiffusionEngine
  params:
    scale_factor: 0.18215
    network_config:
      target: sgm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        model_channels: 64
        channel_mult: [1, 2, 2]
        num_head_channels: 64
    conditioner:
      params:
        emb_models:
          - target: sgm.modules.encoders.modules.FrozenCLIPEmbedder
          - target: sgm.modules.encoders.modules.ConcatTimestepEmbedderND
            params: {outdim: 256}
"""


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    monkeypatch.setitem(FIXTURES, WIDE.name, WIDE)


@pytest.mark.parametrize("fixture, text", [(WIDE.name, SD2_YAML), ("sdxl", SDXL_YAML)])
def test_the_yaml_beside_the_checkpoint_gives_what_the_weights_cannot(tmp_path, fixture, text):
    bare = factory.write_bundle(fixture, tmp_path / "model.safetensors", ship_config=False)
    line = refused(run("split", bare, "-o", tmp_path / "refused", "--layout", "diffusers", "--components", "diffusion_model"))
    assert "attention_head_dim is not determined by the weights" in line
    (tmp_path / "model.yaml").write_text(text)
    result = run("split", bare, "-o", tmp_path / "d", "--layout", "diffusers", "--components", "diffusion_model,vae")
    assert result.exit_code == 0, result.output
    unet = json.loads((tmp_path / "d" / "unet" / "config.json").read_text())
    want = FIXTURES[fixture].config("diffusion_model")
    assert unet["attention_head_dim"] == want["attention_head_dim"]
    assert unet["block_out_channels"] == want["block_out_channels"]  # sizes: from the shapes
    if "addition_time_embed_dim" in want:
        assert unet["addition_time_embed_dim"] == want["addition_time_embed_dim"]
    vae = json.loads((tmp_path / "d" / "vae" / "config.json").read_text())
    assert vae["scaling_factor"] == FIXTURES[fixture].config("vae")["scaling_factor"]
    # inspect names the yaml as the source of those values
    report = json.loads(run("inspect", bare, "--json").output)
    unet_cfg = next(c for c in report["components"] if c["name"] == "diffusion_model")["config"]
    assert unet_cfg["attention_head_dim"]["source"] == f"shipped with the input ({tmp_path / 'model.yaml'})"
    assert unet_cfg["block_out_channels"]["source"] == "the weights' shapes"


def test_a_yaml_that_disagrees_with_config_or_is_hostile_is_one_line(tmp_path):
    bare = factory.write_bundle(WIDE.name, tmp_path / "model.safetensors", ship_config=False)
    (tmp_path / "model.yaml").write_text(SD2_YAML)
    given = tmp_path / "unet.json"
    given.write_text(json.dumps({**WIDE.config("diffusion_model"), "_class_name": "UNet2DConditionModel",
                                 "attention_head_dim": [4, 8]}))
    line = refused(run("split", bare, "-o", tmp_path / "x", "--layout", "diffusers", "--components", "diffusion_model",
                       "--config", given))
    assert "says attention_head_dim = [4, 8]" in line and "model.yaml says [2, 4]" in line
    (tmp_path / "model.yaml").write_text(SD2_YAML.replace("num_head_channels: 48", "num_head_channels: 40"))
    line = refused(run("split", bare, "-o", tmp_path / "y", "--layout", "diffusers", "--components", "diffusion_model"))
    assert "do not divide into 40-channel heads" in line
    report = json.loads(run("inspect", bare, "--json").output)  # inspect describes, and names the problem
    assert any(p["code"] == "config_error" and "40-channel" in p["message"] for p in report["problems"])
    (tmp_path / "model.yaml").write_text("a: &x [1, 2]\nb: *x\n")
    assert "uses aliases" in refused(run("inspect", bare))
    (tmp_path / "model.yaml").write_text("model: !!python/object:os.system {}\n")
    assert "not a readable model yaml" in refused(run("inspect", bare))
    (tmp_path / "model.yaml").write_text("[" * 200 + "]" * 200)
    assert "nested too deeply" in refused(run("inspect", bare))
