"""`ckptkit sample` (TrigFlow at run time) on the newer flow families: the adapter each gets from the
1-step check's call convention gives, at s = pi/2, exactly the flow Euler step the 1-step check
takes, and the command runs on a component file of each, end to end."""

from __future__ import annotations

import math

import pytest
import torch

from ckptkit.fixtures.factory import FIXTURES, component_model, write_component_files
from ckptkit.trigflow.adapters import ADAPTERS, adapter_for, velocity
from ckptkit.trigflow.run import sample_image
from ckptkit.trigflow.text import random_caption
from ckptkit.verify.recipes import recipe_for
from ckptkit.verify.samplers import one_step, trigflow_onestep

OLDER = {"sd1", "sd2", "sdxl", "sdxl_refiner", "sd3", "flux", "sana", "pixart"}
NEWER = [name for name, fx in FIXTURES.items() if fx.family not in OLDER]


def test_every_newer_flow_family_has_an_adapter():
    assert NEWER, "no newer family fixtures"
    for name in NEWER:
        cls = FIXTURES[name].spec.diffusion_model.diffusers_class
        assert cls in ADAPTERS and ADAPTERS[cls].family == FIXTURES[name].family
        assert not ADAPTERS[cls].checkpoint_form  # only Sana has a TrigFlow checkpoint form


@pytest.mark.parametrize("fixture", NEWER)
def test_trigflow_at_pi_over_2_is_the_one_step_flow_euler_step(fixture):
    fx = FIXTURES[fixture]
    model = component_model(fixture, "diffusion_model").double().eval()
    cfg = dict(model.config)
    adapter = adapter_for(model)
    cond = {k: v.double() for k, v in random_caption(adapter, cfg, seed=3).items()}
    recipe = recipe_for(fx.family, fx.variant)
    if adapter.guidance(cfg) is not None:  # FLUX.2 dev: the guidance the 1-step check feeds
        cond["guidance"] = torch.full((1,), recipe.guidance * adapter.guidance(cfg), dtype=torch.float32)
    shape = (1, adapter.latent_channels(cfg), *((adapter.frames,) if adapter.frames else ()), 4, 4)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        ours = trigflow_onestep(z, velocity(model, cond), math.pi / 2, 0.5)
        want = one_step(recipe, model, z, cond, fx.spec.scheduler)
    torch.testing.assert_close(ours.float(), want, rtol=1e-5, atol=1e-6)  # one_step returns float32
    assert torch.isfinite(ours).all()


@pytest.mark.parametrize("fixture", NEWER)
def test_sample_runs_on_a_component_file(fixture, tmp_path):
    path = write_component_files(fixture, tmp_path, dtype=None)["diffusion_model"]
    px = 4 * ADAPTERS[FIXTURES[fixture].spec.diffusion_model.diffusers_class].vae_factor  # 4 x 4 latents (LTX: 32x)
    result = sample_image(path, tmp_path / "s.png", steps=2, height=px, width=px, device="cpu")
    assert (tmp_path / "s.png").stat().st_size > 0
    assert result.latents.shape[-2:] == (4, 4) and torch.isfinite(result.latents).all()
    assert "seeded random caption embedding" in result.conditioning
