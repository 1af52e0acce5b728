"""stable-diffusion.cpp loads what `--client sdcpp` writes and samples one step with it.

sd.cpp builds its networks at the released sizes (it reads no config), so the model here has the
real names and shapes of Stable Diffusion 1.5 (../shared/manifests/sd15.json: 1.07B parameters,
random fp16 weights, 2.1 GB) — the smallest family sd.cpp runs. Writing, quantizing and sampling
take about half a minute on 2 cores. Skips, saying why, where sd.cpp cannot be built."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ckptkit.formats.safetensors import SafetensorsWriter
from tests.cli import ok, run
from tests.conftest import load_manifest
from tests.quant import sdcpp_reference as ref


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    try:
        ref.build()
    except Exception as exc:
        pytest.skip(f"no stable-diffusion.cpp build ({ref.SDIST} sdist + cmake): {exc}")
    path = tmp_path_factory.mktemp("sd15") / "sd15.safetensors"
    specs = [(part["prefix"] + name, "F16", tuple(shape))
             for part in load_manifest("sd15")["components"].values()
             for name, (shape, _dtype) in part["tensors"].items()]
    with SafetensorsWriter(path, specs) as writer:
        for i, (name, _dtype, shape) in enumerate(specs):
            t = torch.empty(shape, dtype=torch.float16)
            writer.write(name, t.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(i)))
    yield path
    path.unlink()


def test_sdcpp_samples_one_step_with_our_bundle(sd15, tmp_path):
    ok(run("quantize", sd15, "-o", tmp_path / "sd15.q8_0.gguf", "--type", "q8_0", "--component", "clip_l=q8_0",
           "--client", "sdcpp"))
    res = ref.sample(tmp_path / "out.png", model=tmp_path / "sd15.q8_0.gguf")
    log = res.stdout
    assert res.returncode == 0, log[-3000:]
    assert "Version: SD 1.x" in log and "sampled 64x64" in log, log[-3000:]
    for bad in ("wrong shape", "not in model file", "unknown tensor", "failed"):
        assert bad not in log, bad
    pixels = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"), dtype=np.float32)
    assert pixels.shape == (64, 64, 3) and pixels.std() > 1.0  # an image, not one flat colour
    (tmp_path / "sd15.q8_0.gguf").unlink()  # 1.1 GB: the suite's disk use stays a few GB at most
    # the same components as separate files are no SD 1.x to sd.cpp: why the sdcpp profile says
    # to use the bundle for this family
    ok(run("quantize", sd15, "-o", tmp_path / "set", "--type", "q8_0", "--component", "clip_l=q8_0",
           "--client", "sdcpp"))
    res = ref.sample(tmp_path / "no.png", diffusion_model=tmp_path / "set" / "diffusion_model.gguf",
                     clip_l=tmp_path / "set" / "clip_l.gguf", vae=tmp_path / "set" / "vae.safetensors")
    assert res.returncode != 0 and "get sd version from file failed" in res.stdout
