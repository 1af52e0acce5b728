"""The 1-step check engine on the tiny fixtures of every family, its sampler math against
diffusers' schedulers, its per-family conventions against diffusers' pipelines, SSIM and the
report image."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ckptkit.families import FAMILIES
from ckptkit.families.common import DDPM_SCHEDULE, FLUX_SCHEDULER, SANA_SPRINT_SCHEDULER, SD3_SCHEDULER, SDXL_SCHEDULER
from ckptkit.families.detect import detect
from ckptkit.fixtures.factory import FIXTURES, component_model, shipped_configs, write_bundle, write_gguf
from ckptkit.formats import open_checkpoint
from ckptkit.formats.safetensors import save_safetensors
from ckptkit.verify import images as imgs
from ckptkit.verify.conditioning import time_ids, token_ids
from ckptkit.verify.onestep import ModelSet, ModelSource, model_set, run_onestep
from ckptkit.verify.recipes import RECIPES, recipe_for
from ckptkit.verify.samplers import (alphas_cumprod, eps_x0, flow_euler, flux_pack, flux_unpack, model_time,
                                     one_step, trigflow_onestep)

ALL = list(FIXTURES)
# The newer families (issue 16) run these two engine tests through two of them (Qwen-Image: identity
# layout, Wan-style VAE; Chroma: T5 and FLUX.1's VAE): tests/verify/test_verify.py covers every one of
# them end to end (a split set's 1-step check exact, a Q8_0 set passing, a broken quantizer failing it).
OLDER = ("sd1", "sd2", "sdxl", "sdxl_refiner", "sd3", "flux", "sana")
ENGINE = [n for n in ALL if FIXTURES[n].family in OLDER or n in ("qwen_image", "chroma")]
WITH_TEXT = ["sd1", "sd2", "sdxl", "sdxl_refiner", "sd3", "flux_schnell"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """fixture -> (path, state) of an F32 bundle; written on first use."""
    folder = tmp_path_factory.mktemp("onestep")
    cache = {}

    def get(name):
        if name not in cache:
            path = write_bundle(name, folder / f"{name}.safetensors", dtype=None)
            ck = open_checkpoint(path)
            state = {n: ck.load(n).clone() for n in ck.tensors}
            cache[name] = (path, state, detect(ck))
            ck.close()
        return cache[name]

    get.folder = folder
    return get


OPENED: list = []  # checkpoints the tests open; closed after each test (close_opened)


@pytest.fixture(autouse=True)
def close_opened():
    yield
    while OPENED:
        OPENED.pop().close()


def _open(path):
    ck = open_checkpoint(path)
    OPENED.append(ck)
    return ck, detect(ck)


def _perturbed(bundles, name, component, tag):
    """The bundle with one tensor of `component` scaled by 2: a text encoder's token embedding
    (its largest tensor may be a projection the recipe does not use), else the largest."""
    out = bundles.folder / f"{name}-{tag}.safetensors"
    if out.exists():
        return out
    path, state, det = bundles(name)
    prefix = det.components[component]
    excluded = set(det.junk) | set(det.ema) | set(det.unclaimed)
    names = [n for n, t in state.items() if n.startswith(prefix) and n not in excluded and t.is_floating_point()
             and det.component_of(n) == component]
    target = max(names, key=lambda n: ("token_embedding" in n or n.endswith("shared.weight"), state[n].numel(), n))
    changed = dict(state)
    changed[target] = state[target] * 2
    save_safetensors(out, changed, shipped_configs(name))  # the same configs ship as with the bundle
    return out


def _outputs(result):
    return [(c, k, v) for c in result.checks() for k, v in c.outputs.items()]


@pytest.mark.parametrize("name", ENGINE)
def test_reference_against_itself_is_exact(bundles, name):
    path, _, det = bundles(name)
    ref = _open(path)
    result = run_onestep(ref, ref, device="cpu", seed=3)
    recipe = recipe_for(det.family, det.variant)
    assert result.diffusion.applicable
    assert set(result.text) == {u.component for u in recipe.text}
    for check in result.checks():
        if check.applicable:
            assert check.outputs, check
    for check, key, cmp in _outputs(result):
        assert (cmp.rel_rms, cmp.cosine, cmp.max_abs) == (0.0, 1.0, 0.0), (check.stage, key, cmp)
        if key == "image":
            assert cmp.psnr == math.inf and cmp.ssim == 1.0
    if recipe.has_vae:
        assert result.vae.applicable and result.e2e.applicable
        assert result.images.kind == "image"
    else:  # Sana: no text encoder, no VAE
        assert not result.vae.applicable and result.vae.reason.startswith("not applicable")
        assert not result.e2e.applicable and result.e2e.reason.startswith("not applicable")
        assert result.images.kind == "latent"
        assert any("random" in n for n in result.notes)
    text = json.dumps(result.to_json(), allow_nan=False)
    data = json.loads(text)
    assert data["family"] == det.family and data["sampler"] == recipe.sampler
    for side in ("reference", "candidate"):
        assert set(data["timings"][side]) == {"load", "dequantize", "forward"}
        assert "diffusion_model" in data["timings"][side]["forward"]
    if recipe.has_vae:
        assert data["e2e"]["outputs"]["image"]["psnr"] == "inf"


@pytest.mark.parametrize("name", ENGINE)
def test_diffusion_model_perturbation(bundles, name):
    path, _, det = bundles(name)
    cand = _open(_perturbed(bundles, name, "diffusion_model", "dm"))
    result = run_onestep(_open(path), cand, device="cpu")
    latent = result.diffusion.outputs["latent"]
    assert latent.rel_rms > 0 and latent.max_abs > 0 and latent.cosine < 1
    for check in result.text.values():  # the text encoders are the same files' tensors
        assert all(c.rel_rms == 0 for c in check.outputs.values())
    if recipe_for(det.family, det.variant).has_vae:
        assert result.vae.outputs["image"].rel_rms == 0
        e2e = result.e2e.outputs["image"]
        assert math.isfinite(e2e.psnr) and e2e.ssim < 1
        assert result.e2e.outputs["latent"].rel_rms == latent.rel_rms


@pytest.mark.parametrize("name", WITH_TEXT)
def test_text_encoder_perturbation_stays_out_of_the_isolated_diffusion_check(bundles, name):
    path, _, det = bundles(name)
    encoder = recipe_for(det.family, det.variant).text[0].component
    cand = _open(_perturbed(bundles, name, encoder, "te"))
    result = run_onestep(_open(path), cand, device="cpu")
    assert any(c.rel_rms > 0 for c in result.text[encoder].outputs.values())
    for other, check in result.text.items():
        if other != encoder:
            assert all(c.rel_rms == 0 for c in check.outputs.values())
    assert result.diffusion.outputs["latent"].rel_rms == 0
    assert result.vae.outputs["image"].rel_rms == 0
    assert result.e2e.outputs["latent"].rel_rms > 0
    assert math.isfinite(result.e2e.outputs["image"].psnr)


def _q8_gguf(fixture, path):
    """The fixture's diffusion model as a GGUF with every Q8_0-able matrix in Q8_0 (rest F16)."""
    import gguf

    from ckptkit.fixtures.factory import original_state
    from ckptkit.formats.gguf import GGUFStreamWriter, torch_to_plain

    specs, arrays = [], {}
    for name, t in original_state(fixture, "diffusion_model").items():
        if t.ndim == 2 and t.shape[-1] % 32 == 0:
            arr, type_name = gguf.quants.quantize(t.float().numpy(), gguf.GGMLQuantizationType.Q8_0), "Q8_0"
        else:
            arr, type_name = torch_to_plain(t.to(torch.float16) if t.ndim >= 2 else t.float())
        arrays[name] = arr
        specs.append((name, tuple(t.shape), type_name, arr.nbytes))
    kv = {"general.file_type": 7, **shipped_configs(fixture, ["diffusion_model"])}
    with GGUFStreamWriter(path, FIXTURES[fixture].spec.gguf_arch, specs, kv) as writer:
        for name, *_ in specs:
            writer.write(name, arrays[name])
    return path


def test_quantized_gguf_diffusion_model_borrows_the_rest_of_the_chain(bundles, tmp_path):
    """A candidate holding only a Q8_0 GGUF diffusion model: its data is dequantized (and timed),
    the E2E chain takes the reference's text encoders and VAE."""
    path, _, _ = bundles("flux_schnell")
    gguf = _open(_q8_gguf("flux_schnell", tmp_path / "flux.gguf"))
    assert any(info.dtype == "Q8_0" for info in gguf[0].tensors.values())
    result = run_onestep(_open(path), gguf, device="cpu")
    assert not result.text["clip_l"].applicable and "candidate" in result.text["clip_l"].reason
    latent = result.diffusion.outputs["latent"]
    assert 0 < latent.rel_rms < 0.05 and latent.cosine > 0.999
    assert result.e2e.applicable and math.isfinite(result.e2e.outputs["image"].psnr)
    assert result.e2e.outputs["latent"].rel_rms == latent.rel_rms  # the same conditioning
    assert any("reference's is used" in n for n in result.notes)
    assert result.timings["candidate"]["dequantize"]["diffusion_model"] > 0
    f16 = run_onestep(_open(path), _open(write_gguf("flux_schnell", tmp_path / "f16.gguf")), device="cpu")
    assert 0 < f16.diffusion.outputs["latent"].rel_rms < latent.rel_rms  # F16 is closer than Q8_0


def test_dict_component_sets(bundles):
    path, _, det = bundles("flux_schnell")
    ck, _ = _open(path)
    sources = {name: (ck, prefix, "original", None, frozenset(det.junk)) for name, prefix in det.components.items()}
    ref = model_set(sources, family="flux", variant="schnell")
    assert set(ref.sources) == set(det.components) and isinstance(ref.sources["vae"], ModelSource)
    only_dm = {"diffusion_model": sources["diffusion_model"]}
    result = run_onestep(ref, only_dm, device="cpu")
    assert result.diffusion.outputs["latent"].rel_rms == 0
    assert not result.vae.applicable and result.e2e.applicable


def test_flow_sana_against_its_trigflow_form(tmp_path):
    """A flow Sana and its training-free TrigFlow (Sprint) form (zero last guidance layer, the
    source's time scale kept as timestep_scale = 1000): one flow Euler step on one side, one sCM
    step from s = pi/2 on the other, the same latent."""
    from ckptkit.fixtures.factory import diffusers_state

    flow_cfg = FIXTURES["sana"].config("diffusion_model")
    state = diffusers_state("sana", "diffusion_model")
    sprint = {k.replace("time_embed.emb.timestep_embedder.", "time_embed.timestep_embedder."): v
              for k, v in state.items()}
    width = state["time_embed.linear.weight"].shape[1]
    gen = torch.Generator().manual_seed(9)
    sprint["time_embed.guidance_embedder.linear_1.weight"] = torch.randn(width, 256, generator=gen) * 0.02
    sprint["time_embed.guidance_embedder.linear_1.bias"] = torch.zeros(width)
    sprint["time_embed.guidance_embedder.linear_2.weight"] = torch.zeros(width, width)
    sprint["time_embed.guidance_embedder.linear_2.bias"] = torch.zeros(width)
    sprint_cfg = dict(flow_cfg, guidance_embeds=True, guidance_embeds_scale=0.1, timestep_scale=1000.0)
    save_safetensors(tmp_path / "flow.safetensors", state)  # diffusers names: ModelSource gets the config
    save_safetensors(tmp_path / "sprint.safetensors", sprint)
    ref = ModelSet("sana", "sana", {"diffusion_model": ModelSource(_open(tmp_path / "flow.safetensors")[0],
                                                                   names="diffusers", config=flow_cfg)})
    cand = ModelSet("sana", "sana-sprint",
                    {"diffusion_model": ModelSource(_open(tmp_path / "sprint.safetensors")[0], names="diffusers",
                                                    config=sprint_cfg)})
    result = run_onestep(ref, cand, device="cpu")
    assert (result.sampler, result.candidate_sampler) == ("flow", "trigflow")
    latent = result.diffusion.outputs["latent"]
    assert latent.rel_rms < 1e-5 and latent.cosine > 1 - 1e-9
    # the same weights fed 1000 t as t (timestep_scale 1, the Sprint default) are far off
    cand.sources["diffusion_model"].config = dict(sprint_cfg, timestep_scale=1.0)
    assert run_onestep(ref, cand, device="cpu").diffusion.outputs["latent"].rel_rms > 1e-2


def test_onestep_png(bundles, tmp_path):
    from PIL import Image

    path, _, _ = bundles("sdxl")
    cand = _open(_perturbed(bundles, "sdxl", "diffusion_model", "dm"))
    result = run_onestep(_open(path), cand, device="cpu")
    rows = result.images.rows
    assert [(r.stage, r.component, r.kind) for r in rows] == [
        ("text_encoder", "clip_l", "hidden"), ("text_encoder", "clip_g", "hidden"),
        ("diffusion_model", "diffusion_model", "latent"), ("vae", "vae", "image"), ("e2e", "e2e", "image")]
    assert result.images.kind == "image" and result.images.title.startswith("sdxl")
    assert list(rows[-1].reference.shape) == [3, *result.image_size]
    assert list(rows[2].reference.shape) == result.latent_shape
    assert rows[2].metrics == {"cosine": result.diffusion.outputs["latent"].cosine,
                               "rel_rms": result.diffusion.outputs["latent"].rel_rms}
    assert rows[-1].metrics["psnr"] == result.e2e.outputs["image"].psnr
    assert all(r.passed is None and r.limits == {} for r in rows)  # judged by check_onestep, not the engine
    out = result.save_png(tmp_path / "onestep.png")
    with Image.open(out) as im:
        assert im.size == imgs.onestep_png_size(result.images) and im.mode == "RGB"
    # the perturbed diffusion model: its latent and the end-to-end image differ, the rest is exact
    assert [float(imgs.difference_panel(r).max()) for r in rows] == [0.0, 0.0, 1.0, 0.0, 1.0]


# ---------------------------------------------------------------- sampler math vs diffusers
def _scheduler(cfg, **kw):
    import diffusers

    cfg = dict(cfg)
    return getattr(diffusers, cfg.pop("_class_name")).from_config({**cfg, **kw})


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_eps_x0_matches_euler_at_999(prediction):
    sched = _scheduler(SDXL_SCHEDULER, timestep_spacing="trailing", prediction_type=prediction)
    sched.set_timesteps(1)
    assert float(sched.timesteps[0]) == 999
    gen = torch.Generator().manual_seed(0)
    z, out = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    sample = z * sched.init_noise_sigma
    x = sched.scale_model_input(sample, sched.timesteps[0])
    expected = sched.step(out, sched.timesteps[0], sample).pred_original_sample
    a = float(alphas_cumprod(SDXL_SCHEDULER)[999])
    assert torch.allclose(x, z * math.sqrt(1 - a), rtol=1e-5, atol=1e-6)  # what one_step feeds the model
    torch.testing.assert_close(eps_x0(x, out, a, prediction), expected, rtol=1e-4, atol=1e-4)


def test_eps_x0_matches_ddpm_at_999():
    sched = _scheduler({"_class_name": "DDPMScheduler", **DDPM_SCHEDULE}, clip_sample=False)
    gen = torch.Generator().manual_seed(1)
    x, eps = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 4, 8, 8, generator=gen)
    expected = sched.step(eps, 999, x, generator=gen).pred_original_sample
    torch.testing.assert_close(eps_x0(x, eps, float(sched.alphas_cumprod[999])), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", [SD3_SCHEDULER, FLUX_SCHEDULER], ids=["sd3", "flux"])
def test_flow_euler_matches_flow_match_euler(config):
    sched = _scheduler(config)
    sched.set_timesteps(1, **({"mu": 1.15} if config.get("use_dynamic_shifting") else {}))
    assert sched.sigmas.tolist() == [1.0, 0.0] and float(sched.timesteps[0]) == 1000
    gen = torch.Generator().manual_seed(2)
    z, v = torch.randn(1, 16, 8, 8, generator=gen), torch.randn(1, 16, 8, 8, generator=gen)
    expected = sched.step(v, sched.timesteps[0], z).prev_sample
    torch.testing.assert_close(flow_euler(z, v), expected)
    torch.testing.assert_close(flow_euler(z, v), z - v)


def test_trigflow_matches_scm_scheduler_and_flow_euler():
    sched = _scheduler(SANA_SPRINT_SCHEDULER)
    sched.set_timesteps(1, timesteps=[math.pi / 2, 0.0], max_timesteps=None, intermediate_timesteps=None)
    gen = torch.Generator().manual_seed(3)
    z, w = (torch.randn(1, 32, 4, 4, generator=gen, dtype=torch.float64) for _ in range(2))

    def velocity(x, t):  # any function of the input and time
        return 0.3 * x + w * t

    # SanaSprintPipeline's loop, by hand (the scheduler's step is diffusers')
    sd = sched.config.sigma_data
    latents = z * sd
    s = sched.timesteps[0].double()
    t = torch.sin(s) / (torch.sin(s) + torch.cos(s))
    norm = torch.sqrt(t ** 2 + (1 - t) ** 2)
    x_in = latents / sd * norm
    F = ((1 - 2 * t) * x_in + (1 - 2 * t + 2 * t ** 2) * velocity(x_in, float(t))) / norm
    _, denoised = sched.step((F * sd).float(), sched.timesteps[0], latents.float(), return_dict=False)
    ours = trigflow_onestep(z, velocity, math.pi / 2, sd)
    torch.testing.assert_close(ours.float(), (denoised / sd).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, z - velocity(z, 1.0), rtol=0, atol=1e-12)  # = one flow Euler step


# ---------------------------------------------------------------- conventions vs diffusers pipelines
def _pipeline_latent(fixture, seed=0):
    """(ours, diffusers pipeline) one-step latents of a tiny model with given embeddings."""
    import diffusers

    fx = FIXTURES[fixture]
    family, variant = fx.family, fx.variant
    recipe = recipe_for(family, variant)
    spec = fx.spec
    model = component_model(fixture, "diffusion_model")
    gen = torch.Generator().manual_seed(seed)
    size = 32
    common = dict(num_inference_steps=1, output_type="latent")
    if family == "sdxl":
        z = torch.randn(1, 4, 16, 16, generator=gen)
        cond = {"context": torch.randn(1, 77, 2048, generator=gen), "pooled": torch.randn(1, 1280, generator=gen),
                "time_ids": time_ids("sdxl", size, size)}
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=model,
            scheduler=_scheduler(spec.scheduler, timestep_spacing="trailing"))
        pipe.vae_scale_factor = 2
        pipe.set_progress_bar_config(disable=True)
        ref = pipe(prompt_embeds=cond["context"], pooled_prompt_embeds=cond["pooled"], guidance_scale=0.0,
                   height=size, width=size, latents=z.clone(), **common).images
    elif family == "sd3":
        z = torch.randn(1, 16, 16, 16, generator=gen)
        cond = {"context": torch.randn(1, 77 + 32, 128, generator=gen), "pooled": torch.randn(1, 128, generator=gen)}
        pipe = diffusers.StableDiffusion3Pipeline(
            transformer=model, scheduler=_scheduler(spec.scheduler), vae=component_model(fixture, "vae"),
            text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
            tokenizer_3=None)
        pipe.set_progress_bar_config(disable=True)
        ref = pipe(prompt_embeds=cond["context"], pooled_prompt_embeds=cond["pooled"], guidance_scale=1.0,
                   height=size, width=size, latents=z.clone(), **common).images
    elif family == "flux":
        z = torch.randn(1, 16, 16, 16, generator=gen)
        cond = {"context": torch.randn(1, 32, 128, generator=gen), "pooled": torch.randn(1, 64, generator=gen)}
        pipe = diffusers.FluxPipeline(
            scheduler=_scheduler(spec.scheduler), vae=component_model(fixture, "vae"), text_encoder=None,
            tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=model)
        pipe.set_progress_bar_config(disable=True)
        ref = flux_unpack(pipe(prompt_embeds=cond["context"], pooled_prompt_embeds=cond["pooled"], guidance_scale=3.5,
                               height=size, width=size, latents=flux_pack(z), **common).images, 16, 16)
    elif family == "chroma":  # no VAE: the pipeline assumes an 8x one (latent 8 x 8 at 64 px)
        z = torch.randn(1, model.config.in_channels // 4, 8, 8, generator=gen)
        cond = {"context": torch.randn(1, 32, model.config.joint_attention_dim, generator=gen)}
        pipe = diffusers.ChromaPipeline(scheduler=_scheduler(spec.scheduler), vae=None, text_encoder=None,
                                        tokenizer=None, transformer=model)
        pipe.set_progress_bar_config(disable=True)
        ref = flux_unpack(pipe(prompt_embeds=cond["context"], prompt_attention_mask=torch.ones(1, 32),
                               guidance_scale=1.0, height=64, width=64, latents=flux_pack(z), **common).images, 8, 8)
    elif family == "flux2":  # latents given patchified (B, 4C, H/2, W/2)
        z = torch.randn(1, 4, 8, 8, generator=gen)
        cond = {"context": torch.randn(1, 32, 48, generator=gen)}
        patchified = diffusers.Flux2Pipeline._patchify_latents(z)
        assert torch.equal(diffusers.Flux2Pipeline._pack_latents(patchified), flux_pack(z))  # FLUX.1's packing
        if variant == "dev":  # no VAE: an 8x one assumed; the latent comes back packed
            pipe = diffusers.Flux2Pipeline(scheduler=_scheduler(spec.scheduler), vae=None, text_encoder=None,
                                           tokenizer=None, transformer=model)
            pipe.set_progress_bar_config(disable=True)
            ref = flux_unpack(pipe(prompt_embeds=cond["context"], guidance_scale=4.0, height=64, width=64,
                                   latents=patchified, **common).images, 8, 8)
        else:  # [klein] de-normalises even a latent output with its VAE's batch norm: a one-level (1x) VAE
            vae = diffusers.AutoencoderKLFlux2(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",),
                                               up_block_types=("UpDecoderBlock2D",), layers_per_block=1,
                                               latent_channels=4)
            pipe = diffusers.Flux2KleinPipeline(scheduler=_scheduler(spec.scheduler), vae=vae, text_encoder=None,
                                                tokenizer=None, transformer=model, is_distilled=True)
            pipe.set_progress_bar_config(disable=True)
            out = pipe(prompt_embeds=cond["context"], height=8, width=8, latents=patchified, **common).images
            std = torch.sqrt(vae.bn.running_var + vae.config.batch_norm_eps).view(1, -1, 1, 1)
            mean = vae.bn.running_mean.view(1, -1, 1, 1)
            ref = flux_unpack(diffusers.Flux2Pipeline._pack_latents(
                (diffusers.Flux2Pipeline._patchify_latents(out) - mean) / std), 8, 8)
    elif family == "z_image":  # no VAE: an 8x one assumed (latent 8 x 8 at 64 px); guidance 0: no CFG pass
        z = torch.randn(1, model.config.in_channels, 8, 8, generator=gen)
        cond = {"context": torch.randn(1, 32, model.config.cap_feat_dim, generator=gen)}
        pipe = diffusers.ZImagePipeline(scheduler=_scheduler(spec.scheduler), vae=None, text_encoder=None,
                                        tokenizer=None, transformer=model)
        pipe.set_progress_bar_config(disable=True)
        ref = pipe(prompt_embeds=list(cond["context"].unbind(0)), guidance_scale=0.0, height=64, width=64,
                   latents=z.clone(), **common).images
    elif family == "lumina2":  # its pipeline assumes an 8x VAE; guidance 1: no CFG pass
        z = torch.randn(1, model.config.in_channels, 8, 8, generator=gen)
        cond = {"context": torch.randn(1, 32, model.config.cap_feat_dim, generator=gen)}
        pipe = diffusers.Lumina2Pipeline(scheduler=_scheduler(spec.scheduler), vae=None, text_encoder=None,
                                         tokenizer=None, transformer=model)
        pipe.set_progress_bar_config(disable=True)
        ref = pipe(prompt_embeds=cond["context"], prompt_attention_mask=torch.ones(1, 32, dtype=torch.long),
                   guidance_scale=1.0, height=64, width=64, latents=z.clone(), **common).images
    elif family == "qwen_image":  # no VAE: an 8x one assumed; its shift_terminal stretch divides by 0 at 1 step
        cfg = model.config
        z = torch.randn(1, cfg.out_channels, 8, 8, generator=gen)
        cond = {"context": torch.randn(1, 32, cfg.joint_attention_dim, generator=gen)}
        pipe = diffusers.QwenImagePipeline(scheduler=_scheduler({**spec.scheduler, "shift_terminal": None}), vae=None,
                                           text_encoder=None, tokenizer=None, transformer=model)
        pipe.set_progress_bar_config(disable=True)
        ref = flux_unpack(pipe(prompt_embeds=cond["context"], prompt_embeds_mask=torch.ones(1, 32, dtype=torch.long),
                               true_cfg_scale=1.0, height=64, width=64, latents=flux_pack(z), **common).images, 8, 8)
    elif family == "hidream":  # no VAE: an 8x one assumed; no CFG pass at guidance 0
        cfg = model.config
        z = torch.randn(1, cfg.in_channels, 8, 8, generator=gen)
        t5, llama = cfg.caption_channels
        cond = {"context": torch.randn(1, 32, t5, generator=gen),
                "llama": torch.randn(1, max(cfg.llama_layers) + 1, 32, llama, generator=gen),
                "pooled": torch.randn(1, cfg.text_emb_dim, generator=gen)}
        pipe = diffusers.HiDreamImagePipeline(
            scheduler=_scheduler(spec.scheduler), vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
            tokenizer_2=None, text_encoder_3=None, tokenizer_3=None, text_encoder_4=None, tokenizer_4=None,
            transformer=model)
        pipe.default_sample_size = 8  # it rescales every size to this area (1024 x 1024 px by default)
        pipe.set_progress_bar_config(disable=True)
        ref = pipe(prompt_embeds_t5=cond["context"], prompt_embeds_llama3=cond["llama"].transpose(0, 1),
                   pooled_prompt_embeds=cond["pooled"], guidance_scale=0.0, height=64, width=64, latents=z.clone(),
                   **common).images
    elif family == "auraflow":  # no VAE: an 8x one assumed; no CFG pass at guidance 1
        cfg = model.config
        z = torch.randn(1, cfg.in_channels, 8, 8, generator=gen)
        cond = {"context": torch.randn(1, 32, cfg.joint_attention_dim, generator=gen)}
        pipe = diffusers.AuraFlowPipeline(scheduler=_scheduler(spec.scheduler), vae=None, text_encoder=None,
                                          tokenizer=None, transformer=model)
        pipe.set_progress_bar_config(disable=True)
        ref = pipe(prompt_embeds=cond["context"], prompt_attention_mask=torch.ones(1, 32), guidance_scale=1.0,
                   height=64, width=64, latents=z.clone(), **common).images
    elif family == "wan":  # video latents: 2 latent frames = 5 pixel frames; no CFG pass at guidance 1
        z = torch.randn(1, model.config.in_channels, 2, 8, 8, generator=gen)
        cond = {"context": torch.randn(1, 32, model.config.text_dim, generator=gen)}
        # TI2V 5B: the pipeline's per-token timesteps (every token at t with no reference image)
        pipe = diffusers.WanPipeline(tokenizer=None, text_encoder=None, transformer=model, vae=None,
                                     scheduler=_scheduler(spec.scheduler), expand_timesteps=variant == "ti2v")
        pipe.set_progress_bar_config(disable=True)
        ref = pipe(prompt_embeds=cond["context"], guidance_scale=1.0, height=64, width=64, num_frames=5,
                   latents=z.clone(), **common).frames
    elif family == "hunyuan_video":  # video latents, 2 frames; embedded guidance 6.0 (x 1000 inside the call)
        z = torch.randn(1, model.config.in_channels, 2, 8, 8, generator=gen)
        cond = {"context": torch.randn(1, 32, model.config.text_embed_dim, generator=gen),
                "pooled": torch.randn(1, model.config.pooled_projection_dim, generator=gen)}
        pipe = diffusers.HunyuanVideoPipeline(text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                              transformer=model, vae=None, scheduler=_scheduler(spec.scheduler))
        pipe.set_progress_bar_config(disable=True)
        ref = pipe(prompt_embeds=cond["context"], pooled_prompt_embeds=cond["pooled"],
                   prompt_attention_mask=torch.ones(1, 32, dtype=torch.long), guidance_scale=6.0, height=64, width=64,
                   num_frames=5, latents=z.clone(), **common).frames
    elif family == "ltxv":  # no VAE: the pipeline's defaults are the LTX VAE's (32x spatial, 8x temporal)
        from ckptkit.verify.samplers import LTXCall

        cfg = model.config  # 2 latent frames = 9 pixel frames, 4 x 4 latents = 128 px; no CFG pass at guidance 1
        z = torch.randn(1, cfg.in_channels, 2, 4, 4, generator=gen)
        cond = {"context": torch.randn(1, 32, cfg.caption_channels, generator=gen)}
        # the one-step sigma schedule [1] and shift_terminal's stretch divide by 0 (as Qwen-Image's); at sigma 1
        # the dynamic shift changes nothing: timestep 1000
        pipe = diffusers.LTXPipeline(scheduler=_scheduler({**spec.scheduler, "shift_terminal": None}), vae=None,
                                     text_encoder=None, tokenizer=None, transformer=model)
        assert (pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio) == (32, 8)
        pipe.set_progress_bar_config(disable=True)
        packed = diffusers.LTXPipeline._pack_latents(z)  # the pipeline takes and, as "latent", returns tokens
        assert torch.equal(packed, LTXCall.pack(z))
        out = pipe(prompt_embeds=cond["context"], prompt_attention_mask=torch.ones(1, 32), guidance_scale=1.0,
                   height=128, width=128, num_frames=9, latents=packed, **common).frames
        ref = diffusers.LTXPipeline._unpack_latents(out, 2, 4, 4)
        assert pipe.scheduler.timesteps.tolist() == [1000.0]  # what LTXCall is fed (time_scale 1000)
    else:  # sana sprint
        z = torch.randn(1, 32, 4, 4, generator=gen)
        cond = {"context": torch.randn(1, 32, 24, generator=gen)}
        pipe = diffusers.SanaSprintPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=model,
                                              scheduler=_scheduler(SANA_SPRINT_SCHEDULER))
        pipe.vae_scale_factor = 32
        pipe.set_progress_bar_config(disable=True)
        ref = pipe(prompt_embeds=cond["context"], prompt_attention_mask=torch.ones(1, 32), max_timesteps=math.pi / 2,
                   intermediate_timesteps=None, guidance_scale=4.5, height=128, width=128, latents=z.clone(),
                   use_resolution_binning=False, **common).images
    scheduler = SANA_SPRINT_SCHEDULER if variant == "sana-sprint" else spec.scheduler
    return one_step(recipe, model, z, cond, scheduler), ref


@pytest.mark.parametrize("fixture", ["sdxl", "sd3", "flux_dev", "sana_sprint", "chroma", "flux2_dev",
                                     "flux2_klein", "z_image", "lumina2", "qwen_image", "hidream", "auraflow",
                                     "wan", "wan_ti2v", "hunyuan_video", "ltxv"])
def test_one_step_matches_the_diffusers_pipeline(fixture):
    ours, ref = _pipeline_latent(fixture)
    torch.testing.assert_close(ours, ref.float(), rtol=1e-4, atol=1e-4)


def test_recipe_table_covers_every_convertible_family():
    for family in FAMILIES:
        if family.name == "pixart":  # detected only, never converted
            continue
        recipe = recipe_for(family.name)
        assert recipe.sampler in ("eps", "flow", "trigflow")
        for use in recipe.text:
            family.component(use.component)  # every encoder a recipe names exists in the family
    assert recipe_for("sana", "sana-sprint").sampler == "trigflow"
    assert recipe_for("sana", "sana-1.5") is RECIPES["sana"]

    class M:
        def __init__(self, **cfg):
            self.config = cfg

    assert model_time(recipe_for("sd3"), M(), 1.0) == 1000
    assert model_time(recipe_for("flux"), M(), 1.0) == 1.0
    assert model_time(recipe_for("sana"), M(timestep_scale=1.0), 1.0) == 1000
    assert model_time(recipe_for("sana", "sana-sprint"), M(timestep_scale=1.0), 1.0) == 1.0
    assert model_time(recipe_for("sdxl"), M(), 999) == 999
    assert time_ids("sdxl", 512, 768).tolist() == [[512, 768, 0, 0, 512, 768]]
    assert time_ids("refiner", 1024, 1024).tolist() == [[1024, 1024, 0, 0, 6.0]]


def test_token_ids_are_seeded_and_shaped():
    a = token_ids("clip", 49408, seed=1)
    assert a.shape == (1, 77) and a[0, 0] == 49406 and a[0, -1] == 49407 and int(a.argmax()) == 13
    assert torch.equal(a, token_ids("clip", 49408, seed=1)) and not torch.equal(a, token_ids("clip", 49408, seed=2))
    t = token_ids("t5", 32128, seed=1, length=32)
    assert t.shape == (1, 32) and t[0, 12] == 1 and not t[0, 13:].any()


# ---------------------------------------------------------------- figures
def _ssim_by_loops(x, y, size=11, sigma=1.5):
    """SSIM from its definition, window by window (slow; a cross-check of the convolution)."""
    g = imgs.gaussian_window(size, sigma)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for ch in range(x.shape[0]):
        for i in range(x.shape[1] - size + 1):
            for j in range(x.shape[2] - size + 1):
                a, b = x[ch, i:i + size, j:j + size], y[ch, i:i + size, j:j + size]
                ma, mb = (g * a).sum(), (g * b).sum()
                va, vb = (g * (a - ma) ** 2).sum(), (g * (b - mb) ** 2).sum()
                cov = (g * (a - ma) * (b - mb)).sum()
                vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(torch.stack(vals).mean())


def test_ssim_and_psnr():
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(3, 16, 14, generator=gen, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(3, 16, 14, generator=gen, dtype=torch.float64)).clamp(0, 1)
    assert imgs.ssim(x, x) == 1.0 and imgs.psnr(x, x) == math.inf
    assert imgs.ssim(x, y) == pytest.approx(_ssim_by_loops(x, y), abs=1e-12)
    assert imgs.ssim(x, y) == pytest.approx(imgs.ssim(y, x), abs=1e-12)
    # constant images: only the luminance term is left
    c1 = 0.01 ** 2
    a, b = torch.full((3, 12, 12), 0.2), torch.full((3, 12, 12), 0.6)
    assert imgs.ssim(a, b) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1))
    assert imgs.psnr(a, b) == pytest.approx(10 * math.log10(1 / 0.16))
    small = imgs.ssim(x[:, :5, :5], y[:, :5, :5])  # a window that shrinks to fit
    assert -1 <= small <= 1
    cmp = imgs.compare(x, y, image=True)
    assert cmp.psnr == pytest.approx(imgs.psnr(x, y)) and 0 < cmp.rel_rms and cmp.cosine < 1


def test_video_frames_compared_one_by_one():
    """A decoded clip is a strip of frames; PSNR and SSIM are taken frame by frame and the figure is the
    worst frame's: a clip with one bad frame in five fails on that frame, whatever the others."""
    g = torch.Generator().manual_seed(0)
    video = torch.rand(3, 5, 16, 16, generator=g)
    strip = imgs.video_strip(video)
    assert strip.shape == (3, 16, 80) and torch.equal(strip[:, :, 32:48], video[:, 2])
    damaged = video.clone()
    damaged[:, 3] = (damaged[:, 3] + 0.2 * torch.randn(3, 16, 16, generator=g)).clamp(0, 1)
    cmp = imgs.compare(strip, imgs.video_strip(damaged), image=True, frames=5)
    assert [f["psnr"] for f in cmp.frames[:3]] == [math.inf] * 3 and cmp.frames[4]["psnr"] == math.inf
    assert cmp.psnr == cmp.frames[3]["psnr"] == imgs.psnr(video[:, 3], damaged[:, 3]) < 20
    assert cmp.ssim == cmp.frames[3]["ssim"] == imgs.ssim(video[:, 3], damaged[:, 3]) < 0.9
    whole = imgs.compare(strip, imgs.video_strip(damaged), image=True)  # the strip as one image: a milder figure
    assert whole.psnr > cmp.psnr
    assert json.loads(json.dumps(cmp.to_json()))["frames"][0] == {"psnr": "inf", "ssim": 1.0}


def test_ltx2_call_is_ltx2_pipelines_transformer_call():
    """LTX2Call feeds the tiny LTX-2 transformer exactly what LTX2Pipeline's denoising loop does at its one step
    (diffusers 0.42 pipeline_ltx2.py: packed video tokens, audio tokens, timestep = sigma = 1000 t,
    use_cross_timestep and frame_rate at the pipeline's defaults, coordinates from the model's rope at the
    conditioning frame rate, all-ones masks), and the clip's audio frames are the pipeline's count."""
    import inspect

    import diffusers
    from diffusers.pipelines.ltx2.utils import conditioning_frame_rate

    from ckptkit.verify.samplers import DENOISERS, LTX2Call, one_step

    model = component_model("ltx2", "diffusion_model")
    cfg = dict(model.config)
    recipe = recipe_for("ltx2", "2.0")
    defaults = inspect.signature(diffusers.LTX2Pipeline.__call__).parameters
    assert defaults["use_cross_timestep"].default is True
    fps = conditioning_frame_rate(defaults["frame_rate"].default, defaults["motion_speed"].default)
    assert fps == LTX2Call.FPS
    # the pipeline's audio length for 2 latent frames = 9 pixel frames at 24 fps, 16 kHz / hop 160 / 4
    assert LTX2Call.audio_frames(cfg, 2) == round(9 / 24 * (16000 / 160 / 4)) == 9
    assert set(LTX2Call.extra_cond(cfg)) == {"audio_latents"} and recipe.frames == 2
    assert isinstance(DENOISERS[recipe.denoiser], LTX2Call)
    sched = diffusers.FlowMatchEulerDiscreteScheduler.from_config(
        {**{k: v for k, v in FAMILIES[[f.name for f in FAMILIES].index("ltx2")].scheduler.items()
            if not k.startswith("_")}, "shift_terminal": None})
    sched.set_timesteps(sigmas=[1.0], mu=1.0)
    assert sched.timesteps.tolist() == [1000.0]  # what LTX2Call is fed (time_scale 1000)

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, cfg["in_channels"], 2, 4, 4, generator=gen)
    audio = torch.randn(1, 9, cfg["audio_in_channels"], generator=gen)
    cond = {"context": torch.randn(1, 16, cfg["caption_channels"], generator=gen),
            "audio_context": torch.randn(1, 16, cfg["caption_channels"], generator=gen), "audio_latents": audio}
    ours = one_step(recipe, model, z, cond, FAMILIES[[f.name for f in FAMILIES].index("ltx2")].scheduler)

    packed = diffusers.LTX2Pipeline._pack_latents(z)
    assert torch.equal(packed, LTX2Call.pack(z))
    t = sched.timesteps[0].expand(1)
    mask = torch.ones(1, 16)
    with torch.no_grad():
        video, _ = model(hidden_states=packed, audio_hidden_states=audio, encoder_hidden_states=cond["context"],
                         audio_encoder_hidden_states=cond["audio_context"], timestep=t, sigma=t,
                         encoder_attention_mask=mask, audio_encoder_attention_mask=mask, num_frames=2, height=4,
                         width=4, fps=fps, audio_num_frames=9,
                         video_coords=model.rope.prepare_video_coords(1, 2, 4, 4, z.device, fps=fps),
                         audio_coords=model.audio_rope.prepare_audio_coords(1, 9, z.device), isolate_modalities=False,
                         spatio_temporal_guidance_blocks=None, perturbation_mask=None, use_cross_timestep=True,
                         return_dict=False)
    packed_x0 = sched.step(video, sched.timesteps[0], packed, return_dict=False)[0]
    ref = diffusers.LTX2Pipeline._unpack_latents(packed_x0, 2, 4, 4)
    torch.testing.assert_close(ours, ref.float(), rtol=1e-4, atol=1e-4)
