"""Interop with the real clients, offline: what ckptkit writes loads in diffusers / transformers
and computes exactly what the fixture models compute.

Every fixture is written as an fp32 bundle and split once per module (diffusers and comfy layouts).
The bytes ckptkit writes are the fixture model's own bytes, so every comparison is exact
(`torch.equal` in float32): same weights, same code, same CPU kernels (see `assert_same_model` for
the one precaution that takes). Where a client cannot load what we write for a reason of its own,
the case is an xfail that names the reason.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import diffusers
import pytest
import torch
import transformers
from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES
from safetensors.torch import load_file

from ckptkit import pipeline
from ckptkit.convert.models import model_class
from ckptkit.convert.split import SplitOptions
from ckptkit.fixtures import factory
from ckptkit.formats import open_checkpoint
from ckptkit.fixtures.factory import FIXTURES

CASES = [(f, c.name) for f, fx in FIXTURES.items() for c in fx.components]
SINGLE_FILE_CASES = [(f, c) for f, c in CASES
                     if FIXTURES[f].spec.component(c).diffusers_class in SINGLE_FILE_LOADABLE_CLASSES]
TEXT_CASES = [(f, c) for f, c in CASES if FIXTURES[f].spec.component(c).role == "text_encoder"]
VAE_FAMILY_KEYS = ("scaling_factor", "shift_factor", "sample_size")  # not in a VAE's weights
POSITION_IDS = "text_model.embeddings.position_ids"  # a non-persistent buffer in transformers' CLIP
SDXL_TEXT_EMBEDS = 1280  # SDXL / refiner `text_embeds`: the pooled, projected CLIP-G output


def _ids(cases):
    return [f"{f}-{c}" for f, c in cases]


def _spec(fixture: str, comp: str):
    return FIXTURES[fixture].spec.component(comp)


class Splits:
    """fp32 bundles and their splits, written once per module, on first use."""

    def __init__(self, root: Path):
        self.root = root
        self.done: dict[tuple[str, str], Path] = {}

    def bundle(self, fixture: str) -> Path:
        if (fixture, "bundle") not in self.done:
            path = factory.write_bundle(fixture, self.root / f"{fixture}.safetensors", dtype=None)
            self.done[fixture, "bundle"] = path
        return self.done[fixture, "bundle"]

    def split(self, fixture: str, layout: str) -> Path:
        if (fixture, layout) not in self.done:
            out = self.root / f"{fixture}-{layout}"
            pipeline.split(self.bundle(fixture), out, SplitOptions(layout=layout))
            self.done[fixture, layout] = out
        return self.done[fixture, layout]


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    yield Splits(tmp_path_factory.mktemp("interop"))
    reference.cache_clear()


# ---- fixed inputs and the outputs that are compared --------------------------------------------

def forward(model) -> dict[str, torch.Tensor]:
    """The model's outputs on fixed inputs (its forward signature, sized from its config)."""
    name, cfg = type(model).__name__, model.config
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    with torch.no_grad():
        if name == "UNet2DConditionModel":
            kw = {}
            if cfg.addition_embed_type == "text_time":  # SDXL: 6 time ids, refiner: 5 (2816 / 2560 wide)
                n_ids = (cfg.projection_class_embeddings_input_dim - SDXL_TEXT_EMBEDS) // cfg.addition_time_embed_dim
                time_ids = torch.tensor([[16.0, 16.0, 0.0, 0.0, 16.0, 16.0][:n_ids - 1] + [6.0]])
                kw["added_cond_kwargs"] = {"text_embeds": randn(1, SDXL_TEXT_EMBEDS), "time_ids": time_ids}
            out = model(randn(1, cfg.in_channels, 8, 8), torch.tensor([500]),
                        encoder_hidden_states=randn(1, 5, cfg.cross_attention_dim), **kw)
            return {"sample": out.sample}
        if name in ("AutoencoderKL", "AutoencoderKLFlux2"):
            post = model.encode(torch.rand(1, cfg.in_channels, 16, 16, generator=g) * 2 - 1).latent_dist
            return {"mean": post.mean, "std": post.std, "decoded": model.decode(post.mean).sample}
        if name in ("AutoencoderKLQwenImage", "AutoencoderKLWan"):  # video latents (B, C, T, H, W): one frame
            # pixel channels: Wan 2.2's in_channels count its 2 x 2 patchify step (12 = 3 x 2 x 2)
            channels = (cfg.in_channels // (cfg.get("patch_size") or 1) ** 2 if name == "AutoencoderKLWan"
                        else cfg.input_channels)
            post = model.encode(torch.rand(1, channels, 1, 16, 16, generator=g) * 2 - 1).latent_dist
            return {"mean": post.mean, "std": post.std, "decoded": model.decode(post.mean).sample}
        if name in ("AutoencoderKLLTXVideo", "AutoencoderKLLTX2Video"):  # 9 frames (the first alone, then 8 per
            # latent frame), 32 px (patch 4, 8x); LTX-2's reflect-padded decoder needs a 2 x 2 latent: 64 px
            side = 64 if name == "AutoencoderKLLTX2Video" else 32
            post = model.encode(torch.rand(1, cfg.in_channels, 9, side, side, generator=g) * 2 - 1).latent_dist
            temb = torch.tensor([0.05]) if cfg.timestep_conditioning else None  # LTX's yaml decode_timestep
            torch.manual_seed(0)  # the noise its decoder injects (0.9.1 structure)
            return {"mean": post.mean, "std": post.std, "decoded": model.decode(post.mean, temb).sample}
        if name == "AutoencoderKLHunyuanVideo":  # 5 frames: the first alone, then 4 per latent frame
            post = model.encode(torch.rand(1, cfg.in_channels, 5, 16, 16, generator=g) * 2 - 1).latent_dist
            return {"mean": post.mean, "std": post.std, "decoded": model.decode(post.mean).sample}
        if name == "SD3Transformer2DModel":
            out = model(hidden_states=randn(1, cfg.in_channels, 8, 8),
                        encoder_hidden_states=randn(1, 5, cfg.joint_attention_dim),
                        pooled_projections=randn(1, cfg.pooled_projection_dim), timestep=torch.tensor([500.0]))
            return {"sample": out.sample}
        if name == "FluxTransformer2DModel":
            img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0),
                                                 indexing="ij"), -1).reshape(16, 3)
            out = model(hidden_states=randn(1, 16, cfg.in_channels),
                        encoder_hidden_states=randn(1, 5, cfg.joint_attention_dim),
                        pooled_projections=randn(1, cfg.pooled_projection_dim), timestep=torch.tensor([0.5]),
                        img_ids=img_ids, txt_ids=torch.zeros(5, 3),
                        guidance=torch.tensor([3.5]) if cfg.guidance_embeds else None)
            return {"sample": out.sample}
        if name == "SanaTransformer2DModel":
            out = model(hidden_states=randn(1, cfg.in_channels, 8, 8),
                        encoder_hidden_states=randn(1, 5, cfg.caption_channels), timestep=torch.tensor([500.0]),
                        guidance=torch.tensor([4.5]) if cfg.guidance_embeds else None)
            return {"sample": out.sample}
        dm = _newer_denoiser(name)
        if dm is not None:  # the newer families: the 1-step check's own call convention
            recipe, call = dm
            shapes = {**call.cond_shapes(dict(cfg), recipe, 5), **call.extra_cond(dict(cfg))}
            cond = {k: randn(1, *shape) for k, shape in shapes.items()}
            x = randn(1, call.latent_channels(dict(cfg)), *((recipe.frames,) if recipe.frames else ()), 8, 8)
            from ckptkit.verify.samplers import guidance_value

            return {"sample": call(model, x, 0.5, cond, guidance_value(recipe, model))}
        ids = torch.tensor([[0, 17, 230, 999, 42, 2, 1, 1]])
        out = model(input_ids=ids, output_hidden_states=True)
        res = {f"hidden_states.{i}": h for i, h in enumerate(out.hidden_states)}
        res["last_hidden_state"] = out.last_hidden_state
        for key in ("pooler_output", "text_embeds"):
            if getattr(out, key, None) is not None:
                res[key] = getattr(out, key)
        return res


def _newer_denoiser(class_name: str):
    """(recipe, call) of the family whose diffusion model is `class_name`, for families whose
    transformers the branches above do not spell out; None for the rest (text encoders)."""
    from ckptkit.families import FAMILIES
    from ckptkit.verify.recipes import RECIPES
    from ckptkit.verify.samplers import DENOISERS

    for fam in FAMILIES:
        recipe = RECIPES.get(fam.name)
        if fam.diffusion_model.diffusers_class == class_name and recipe and recipe.denoiser not in OLDER_DENOISERS:
            return recipe, DENOISERS[recipe.denoiser]
    return None


OLDER_DENOISERS = ("unet", "mmdit", "flux", "sana")


@lru_cache(maxsize=None)
def reference(fixture: str, comp: str):
    """(state dict, outputs) of the fixture's own model."""
    model = factory.component_model(fixture, comp)
    return {k: v.clone() for k, v in model.state_dict().items()}, forward(model)


def assert_same_weights(model, fixture: str, comp: str) -> None:
    want_state = reference(fixture, comp)[0]
    state = model.state_dict()
    assert sorted(state) == sorted(want_state)
    for name, t in want_state.items():
        assert state[name].dtype == t.dtype == torch.float32 or not t.is_floating_point(), name
        assert torch.equal(state[name], t), f"{name}: weights differ"


def assert_same_model(model, fixture: str, comp: str) -> None:
    """The same tensors, bit for bit, and the same outputs as the fixture model.

    Loaders hand back tensors that are views into the mmapped file, at the 8-byte alignment of
    safetensors data (not 64). Some CPU kernels take another vectorised path on such memory and
    round differently: the SDXL UNet's time_embedding.linear_1 (a one-row matmul) differs by 2e-7
    from the same weights in fresh memory, 7e-7 at the output. The weights are copied to fresh
    memory first, so that the outputs compare exactly: all that can differ then is what the files
    and configs make differ.
    """
    assert_same_weights(model, fixture, comp)
    want_out = reference(fixture, comp)[1]
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            t.data = t.data.clone()
    got = forward(model)
    assert sorted(got) == sorted(want_out)
    for key, want in want_out.items():
        diff = (got[key] - want).abs().max().item()
        assert torch.equal(got[key], want), f"{key}: outputs differ (max |diff| {diff:g})"


# ---- 1. diffusers layout: every component folder, the pipeline folder ---------------------------

@pytest.mark.parametrize("fixture,comp", CASES, ids=_ids(CASES))
def test_diffusers_component_loads_and_matches(splits, fixture, comp):
    spec = _spec(fixture, comp)
    cls, _ = model_class(spec.diffusers_class)
    folder = splits.split(fixture, "diffusers") / spec.diffusers_folder

    model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True)

    assert type(model) is cls
    assert {k: v for k, v in info.items() if v} == {}, "missing / unexpected / mismatched keys"
    assert_same_model(model.eval(), fixture, comp)


def _pipeline_inputs(pipe) -> dict:
    """Precomputed prompt embeddings (no tokenizer needed) sized from the loaded components."""
    name = type(pipe).__name__
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    if name == "StableDiffusionPipeline":
        d = pipe.unet.config.cross_attention_dim
        return dict(prompt_embeds=randn(1, 5, d), negative_prompt_embeds=randn(1, 5, d), height=16, width=16)
    if name.startswith("StableDiffusionXL"):
        d = pipe.unet.config.cross_attention_dim
        kw = dict(prompt_embeds=randn(1, 5, d), pooled_prompt_embeds=randn(1, SDXL_TEXT_EMBEDS),
                  negative_prompt_embeds=randn(1, 5, d), negative_pooled_prompt_embeds=randn(1, SDXL_TEXT_EMBEDS))
        if "Img2Img" in name:
            return dict(kw, image=torch.rand(1, 3, 16, 16, generator=g), strength=1.0)
        return dict(kw, height=16, width=16)
    cfg = pipe.transformer.config
    if name == "StableDiffusion3Pipeline":
        return dict(prompt_embeds=randn(1, 5, cfg.joint_attention_dim),
                    pooled_prompt_embeds=randn(1, cfg.pooled_projection_dim),
                    negative_prompt_embeds=randn(1, 5, cfg.joint_attention_dim),
                    negative_pooled_prompt_embeds=randn(1, cfg.pooled_projection_dim), height=32, width=32)
    if name == "FluxPipeline":
        return dict(prompt_embeds=randn(1, 5, cfg.joint_attention_dim),
                    pooled_prompt_embeds=randn(1, cfg.pooled_projection_dim), height=32, width=32)
    if name == "QwenImagePipeline":  # no VAE in these folders: the pipeline assumes an 8x one
        return dict(prompt_embeds=randn(1, 5, cfg.joint_attention_dim), prompt_embeds_mask=torch.ones(1, 5,
                    dtype=torch.long), height=32, width=32)
    if name == "ChromaPipeline":  # guidance 5 (the default) runs the classifier-free pass: negative states too
        return dict(prompt_embeds=randn(1, 5, cfg.joint_attention_dim), prompt_attention_mask=torch.ones(1, 5),
                    negative_prompt_embeds=randn(1, 5, cfg.joint_attention_dim),
                    negative_prompt_attention_mask=torch.ones(1, 5), height=32, width=32)
    if name == "Flux2Pipeline":  # [dev]: embedded guidance (4, the default), no negative pass
        return dict(prompt_embeds=randn(1, 5, cfg.joint_attention_dim), height=32, width=32)
    if name == "Flux2KleinPipeline":
        # it de-normalises even a latent output with its VAE's batch-norm statistics: a stand-in VAE
        # (one level) on the loaded pipeline; guidance 4 (the default) runs the negative pass
        pipe.vae = diffusers.AutoencoderKLFlux2(
            block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
            layers_per_block=1, latent_channels=cfg.in_channels // 4)
        return dict(prompt_embeds=randn(1, 5, cfg.joint_attention_dim),
                    negative_prompt_embeds=randn(1, 5, cfg.joint_attention_dim), height=32, width=32)
    if name == "AuraFlowPipeline":
        return dict(prompt_embeds=randn(1, 5, cfg.joint_attention_dim), prompt_attention_mask=torch.ones(1, 5),
                    guidance_scale=1.0, height=32, width=32)
    if name == "HiDreamImagePipeline":  # (Llama layers, batch, tokens, width) for the Llama states
        t5, llama = cfg.caption_channels
        return dict(prompt_embeds_t5=randn(1, 5, t5), prompt_embeds_llama3=randn(max(cfg.llama_layers) + 1, 1, 5, llama),
                    pooled_prompt_embeds=randn(1, cfg.text_emb_dim), guidance_scale=0.0, height=32, width=32)
    if name == "ZImagePipeline":  # a list of (tokens, width) caption states; no VAE: an 8x one assumed
        return dict(prompt_embeds=[randn(5, cfg.cap_feat_dim)], guidance_scale=0.0, height=32, width=32)
    if name == "Lumina2Pipeline":  # guidance 1: no classifier-free pass (no negative embeddings)
        return dict(prompt_embeds=randn(1, 5, cfg.cap_feat_dim), prompt_attention_mask=torch.ones(1, 5,
                    dtype=torch.long), guidance_scale=1.0, height=32, width=32)
    if name == "WanPipeline":  # its VAE is in the folder (AutoencoderKLWan); 5 frames = 2 latent frames; guidance 1
        return dict(prompt_embeds=randn(1, 5, cfg.text_dim), guidance_scale=1.0, height=32, width=32, num_frames=5)
    if name == "HunyuanVideoPipeline":  # no VAE component: its 8x / 4x assumed; embedded guidance 6 (the default)
        return dict(prompt_embeds=randn(1, 5, cfg.text_embed_dim), pooled_prompt_embeds=randn(1, cfg.pooled_projection_dim),
                    prompt_attention_mask=torch.ones(1, 5, dtype=torch.long), height=32, width=32, num_frames=5)
    if name == "LTXPipeline":  # no VAE: the LTX VAE's 32x / 8x assumed (a 4 x 4 latent, 2 frames); guidance 1
        return dict(prompt_embeds=randn(1, 5, cfg.caption_channels), prompt_attention_mask=torch.ones(1, 5),
                    guidance_scale=1.0, height=128, width=128, num_frames=9)
    # Sana: no VAE in these folders, so the pipeline assumes a 32x VAE; tiny sample sizes need no binning
    kw = dict(prompt_embeds=randn(1, 5, cfg.caption_channels), prompt_attention_mask=torch.ones(1, 5),
              height=256, width=256, use_resolution_binning=False)
    if name == "SanaPipeline":
        kw.update(negative_prompt=None, negative_prompt_embeds=randn(1, 5, cfg.caption_channels),
                  negative_prompt_attention_mask=torch.ones(1, 5))
    if name == "SanaSprintPipeline":  # its intermediate timestep is for 2-step sampling; one step here
        kw.update(intermediate_timesteps=None)
    return kw


@pytest.mark.parametrize("fixture", list(FIXTURES))
def test_diffusers_pipeline_folder_loads_and_runs(splits, fixture):
    out = splits.split(fixture, "diffusers")
    spec = FIXTURES[fixture].spec
    index = json.loads((out / "model_index.json").read_text())
    pipe_cls = getattr(diffusers, index["_class_name"])
    for comp in FIXTURES[fixture].components:
        lib = "transformers" if model_class(comp.diffusers_class)[1] else "diffusers"
        assert index[comp.diffusers_folder] == [lib, comp.diffusers_class]
        assert (out / comp.diffusers_folder / "config.json").is_file()
    sched_lib, sched_name = index["scheduler"]
    scheduler = getattr(diffusers, sched_name).from_pretrained(out, subfolder="scheduler", local_files_only=True)
    assert sched_lib == "diffusers" and type(scheduler).__name__ == sched_name
    assert sched_name in {spec.scheduler["_class_name"], *(v.scheduler["_class_name"] for v in spec.variants
                                                          if v.scheduler)}

    if spec.name == "ltx2":  # LTX2Pipeline runs its text connectors, audio VAE and vocoder: not components here
        model = diffusers.LTX2VideoTransformer3DModel.from_pretrained(out, subfolder="transformer", local_files_only=True)
        assert model.config.num_layers == FIXTURES[fixture].config("diffusion_model")["num_layers"]
        pytest.skip("LTX2Pipeline needs LTX2TextConnectors, the audio VAE and the vocoder (not ckptkit components)")
    # Tokenizers cannot be derived from weights (and SD's safety checker is not in a checkpoint):
    # the pipeline loads with them passed as None, and denoises from precomputed embeddings.
    expected, _ = pipe_cls._get_signature_keys(pipe_cls)
    absent = {name: None for name in expected if name not in index}
    # (Wan 2.2 A14B's second expert, transformer_2, is a second file of the same layout: optional)
    assert all(name.startswith(("tokenizer", "safety_checker", "feature_extractor", "image_encoder",
                                "text_encoder", "vae", "transformer_2")) for name in absent), absent
    pipe = diffusers.DiffusionPipeline.from_pretrained(out, local_files_only=True, **absent)
    assert type(pipe) is pipe_cls
    pipe.set_progress_bar_config(disable=True)
    # Qwen-Image's released scheduler stretches sigmas to shift_terminal: one step divides by zero there
    steps = 2 if scheduler.config.get("shift_terminal") else 1
    result = pipe(**_pipeline_inputs(pipe), num_inference_steps=steps, output_type="latent",
                  generator=torch.Generator().manual_seed(0))
    latents = result.frames if hasattr(result, "frames") else result.images  # video pipelines: frames
    assert latents.dtype == torch.float32 and torch.isfinite(latents).all()


@pytest.mark.parametrize("fixture", list(FIXTURES))
def test_pipeline_components_have_the_classes_the_pipeline_expects(splits, fixture):
    index = json.loads((splits.split(fixture, "diffusers") / "model_index.json").read_text())
    pipe_cls = getattr(diffusers, index["_class_name"])
    types = pipe_cls._get_signature_types()
    wrong = {}
    for name, value in index.items():
        if name.startswith("_") or name == "scheduler" or not isinstance(value, list):  # schedulers: checked by running
            continue
        cls = getattr({"diffusers": diffusers, "transformers": transformers}[value[0]], value[1])
        if not issubclass(cls, tuple(t for t in types[name] if isinstance(t, type))):
            wrong[name] = (value[1], [t.__name__ for t in types[name] if isinstance(t, type)])
    assert wrong == {}


@pytest.mark.parametrize("fixture", ["sd3", "sd35_large"])
def test_sd3_pipeline_encodes_prompts_with_the_split_text_encoders(splits, fixture):
    """SD3's CLIP-L is written as CLIPTextModelWithProjection with the identity text_projection
    diffusers' single-file loader adds (a bundle has none), so StableDiffusion3Pipeline.encode_prompt
    runs: its pooled embedding is `text_embeds` of both CLIPs. Tokenizers are not in a checkpoint:
    a stand-in tokenizer of the fixtures' vocabulary feeds the same ids to all three encoders."""
    out = splits.split(fixture, "diffusers")

    class Ids:
        model_max_length = 77

        def __call__(self, prompts, padding=None, max_length=77, truncation=None, add_special_tokens=True,
                     return_tensors=None, **_):
            ids = torch.tensor([[0, 17, 300, 41] + [2] * (max_length - 4)] * len(prompts))
            return type("Enc", (), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})()

        def batch_decode(self, ids):
            return ["" for _ in ids]

    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(out, local_files_only=True, tokenizer=Ids(),
                                                             tokenizer_2=Ids(), tokenizer_3=Ids())
    with open_checkpoint(out / "text_encoder" / "model.safetensors") as ck:
        proj = ck.load("text_projection.weight")
    assert torch.equal(proj, torch.eye(proj.shape[0], dtype=proj.dtype))
    embeds, _, pooled, _ = pipe.encode_prompt("a cat", "a cat", "a cat", do_classifier_free_guidance=False,
                                              max_sequence_length=16)
    clip_l = pipe.text_encoder(torch.tensor([[0, 17, 300, 41] + [2] * 73]), output_hidden_states=True)
    width_l = clip_l.text_embeds.shape[-1]
    assert torch.equal(pooled[:, :width_l], clip_l.text_embeds)  # identity projection: the pooled state itself
    assert torch.isfinite(embeds).all() and torch.isfinite(pooled).all()


# ---- 2. comfy layout: diffusers' single-file loader, transformers' own state dicts ---------------

# diffusers' LDM UNet converter reads only keys under the bundle prefix (LDM_UNET_KEY); ComfyUI's
# and our prefix-stripped UNet files are given that prefix back.
LDM_UNET_KEY = "model.diffusion_model."


def _single_file_gap(fixture: str, comp: str) -> tuple[type[Exception], str] | None:
    """Comfy files diffusers' from_single_file cannot load, for diffusers' own reasons."""
    spec = _spec(fixture, comp)
    cfg = FIXTURES[fixture].config(comp)
    width = cfg.get("num_attention_heads", 0) * cfg.get("attention_head_dim", 0)
    if spec.diffusers_class == "FluxTransformer2DModel" and width != 3072:
        return RuntimeError, ("diffusers' convert_flux_transformer_checkpoint_to_diffusers hard-codes "
                              "inner_dim = 3072 (and mlp_ratio 4.0) to split the fused qkv/linear1 weights, "
                              "so a FLUX transformer of any other width (the tiny one is 128) cannot load")
    if spec.diffusers_class == "ChromaTransformer2DModel" and width != 3072:
        return RuntimeError, ("diffusers' convert_chroma_transformer_checkpoint_to_diffusers hard-codes "
                              "inner_dim = 3072 and mlp_ratio 4.0 to split linear1, so a Chroma transformer of any "
                              "other width (the tiny one is 64) cannot load; tests/convert/test_layout_chroma_flux2.py "
                              "runs it with the split patched to the tiny width")
    if spec.diffusers_class == "HunyuanVideoTransformer3DModel" and width != 3072:
        return RuntimeError, ("diffusers' convert_hunyuan_video_transformer_to_diffusers hard-codes hidden_size = "
                              "3072 to split linear1, so a HunyuanVideo transformer of any other width (the tiny one "
                              "is 64) cannot load; tests/convert/test_layout_hunyuan_video.py runs it with the split "
                              "patched to the tiny width")
    if spec.diffusers_class == "Lumina2Transformer2DModel" and (
            cfg.get("hidden_size"), cfg.get("num_kv_heads", 0) * cfg.get("hidden_size", 0)
            // max(1, cfg.get("num_attention_heads", 1))) != (2304, 768):
        return RuntimeError, ("diffusers' convert_lumina2_to_diffusers hard-codes the qkv split as q 2304 and "
                              "k = v 768 rows (Lumina-Image-2.0's widths), so a Lumina 2 transformer of any other "
                              "width (the tiny one is 64, k = v 32) cannot load; tests/convert/test_layout_z_image_lumina2.py "
                              "runs it with the split patched to the tiny widths")
    if spec.diffusers_class == "AutoencoderKLWan" and cfg.get("is_residual"):
        return NotImplementedError, ("diffusers' single-file convert_wan_vae_to_diffusers knows Wan 2.1's flat VAE "
                                     "names only (its 2.2 map is scripts/convert_wan_to_diffusers.py convert_vae_22), "
                                     "so a Wan 2.2 VAE's nested levels stay on the meta device; "
                                     "tests/convert/test_layout_wan_vae.py checks ours against convert_vae_22")
    if spec.diffusers_class == "AutoencoderKLLTXVideo":
        return KeyError, ("diffusers' convert_ltx_vae_checkpoint_to_diffusers keeps only keys containing 'vae.' (the "
                          "LTX single file's prefix), so a bare VAE file (ComfyUI's vae/ layout) converts to nothing; "
                          "tests/convert/test_layout_ltxv_vae.py runs it on the prefixed names, bit-exact")
    if spec.diffusers_class == "SanaTransformer2DModel" and cfg.get("guidance_embeds"):
        return NotImplementedError, ("diffusers' convert_sana_transformer_to_diffusers knows only plain Sana: it "
                                     "maps t_embedder to AdaLayerNormSingle names (time_embed.emb.*) and ignores "
                                     "Sana-Sprint's cfg_embedder and q_norm/k_norm, so the guidance/timestep "
                                     "embedder and attention norms stay on the meta device")
    return None


@pytest.mark.parametrize("fixture,comp", SINGLE_FILE_CASES, ids=_ids(SINGLE_FILE_CASES))
def test_comfy_file_loads_with_diffusers_from_single_file(splits, fixture, comp):
    spec = _spec(fixture, comp)
    cls, _ = model_class(spec.diffusers_class)
    path = splits.split(fixture, "comfy") / f"{comp}.safetensors"
    config = splits.split(fixture, "diffusers") / spec.diffusers_folder
    state = load_file(path)
    if cls is diffusers.UNet2DConditionModel:
        state = {LDM_UNET_KEY + k: v for k, v in state.items()}

    gap = _single_file_gap(fixture, comp)
    convert = SINGLE_FILE_LOADABLE_CLASSES[spec.diffusers_class]["checkpoint_mapping_fn"]
    try:
        converted = convert(config=dict(cls.load_config(config)), checkpoint=dict(state))
        source = dict(state) if cls is diffusers.UNet2DConditionModel else str(path)
        model = cls.from_single_file(source, config=str(config), local_files_only=True)
    except Exception as e:
        if gap and isinstance(e, gap[0]):
            pytest.xfail(gap[1])
        raise
    # diffusers' converter maps our file to exactly the model's names: nothing missing, nothing extra
    assert sorted(converted) == sorted(reference(fixture, comp)[0])
    assert_same_model(model, fixture, comp)


@pytest.mark.parametrize("fixture", ["sd1", "sdxl"])
def test_comfy_unet_file_without_prefix(splits, fixture):
    path = splits.split(fixture, "comfy") / "diffusion_model.safetensors"
    config = splits.split(fixture, "diffusers") / "unet"
    try:
        model = diffusers.UNet2DConditionModel.from_single_file(str(path), config=str(config), local_files_only=True)
    except (diffusers.loaders.single_file_utils.SingleFileComponentError, KeyError):
        pytest.xfail("diffusers' convert_ldm_unet_checkpoint keeps only keys under 'model.diffusion_model.' "
                     "(LDM_UNET_KEY), so a prefix-stripped UNet file (ComfyUI's models/unet layout) converts "
                     "to nothing; the same file with the prefix added loads (test above)")
    assert_same_model(model, fixture, "diffusion_model")


@pytest.mark.parametrize("fixture,comp", TEXT_CASES, ids=_ids(TEXT_CASES))
def test_comfy_text_encoder_loads_in_transformers(splits, fixture, comp):
    spec = _spec(fixture, comp)
    cls, config_cls = model_class(spec.diffusers_class)
    config = config_cls.from_pretrained(splits.split(fixture, "diffusers") / spec.diffusers_folder,
                                        local_files_only=True)
    model = cls(config).eval()
    state = load_file(splits.split(fixture, "comfy") / f"{comp}.safetensors")
    pos = state.pop(POSITION_IDS, None)  # kept as the bundle stores it; transformers rebuilds it
    if pos is not None:
        assert torch.allclose(pos.double(), torch.arange(pos.shape[-1], dtype=torch.float64)[None], atol=0.01)
    if not any(k.startswith("text_model.") for k in model.state_dict()):  # CLIPTextModel, flat in transformers>=5.6
        state = {k.removeprefix("text_model."): v for k, v in state.items()}

    if spec.identity_projection:  # SD3's CLIP-L: ComfyUI's file has none; diffusers' loader adds an identity
        assert "text_projection.weight" not in state
        state["text_projection.weight"] = torch.eye(model.text_projection.weight.shape[0])
    missing, unexpected = model.load_state_dict(state, strict=False)

    assert unexpected == []
    assert sorted(missing) == sorted(getattr(model, "_tied_weights_keys", None) or {})  # T5: embed_tokens = shared
    assert_same_model(model, fixture, comp)


# ---- 3. convert: a comfy component file <-> a diffusers component folder ------------------------

@pytest.mark.parametrize("fixture,comp", CASES, ids=_ids(CASES))
def test_convert_round_trip(splits, tmp_path, fixture, comp):
    spec = _spec(fixture, comp)
    source = splits.split(fixture, "comfy") / f"{comp}.safetensors"
    folder, back = tmp_path / "component", tmp_path / f"{comp}.safetensors"
    # a tiny SD3/FLUX text encoder (64 wide) is no released CLIP-L / T5-XXL: the file names its
    # component (ckptkit.component) and ships its config (ckptkit.config), so it converts all the same
    to_diffusers = pipeline.convert(source, folder, "diffusers")
    cls, _ = model_class(spec.diffusers_class)
    model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    assert_same_weights(model, fixture, comp)
    # the config the split wrote, whose model computes what the fixture's does (test above) ...
    config = json.loads((folder / "config.json").read_text())
    split_config = json.loads((splits.split(fixture, "diffusers") / spec.diffusers_folder / "config.json").read_text())
    # a lone VAE's latent scaling is not in its weights: it came with the file (the split ships the
    # bundle's configs in each component file's metadata), not from some family's released VAE
    if spec.role == "vae":
        assert {k: config.get(k) for k in VAE_FAMILY_KEYS} == {
            k: FIXTURES[fixture].config(comp).get(k, config.get(k)) for k in VAE_FAMILY_KEYS}
    assert config == split_config

    pipeline.convert(folder, back, "original")

    want, got = load_file(source), load_file(back)
    # CLIP's float position_ids are no weight of CLIPTextModel: dropped on the way in, with a reason.
    # (Sana's zero pos_embed / y_embedding are dropped too, and written back as the same zeros.)
    assert set(want) - set(got) <= {POSITION_IDS} & set(to_diffusers.plan.dropped)
    assert set(got) <= set(want)
    for name, t in got.items():
        assert t.dtype == want[name].dtype and torch.equal(t, want[name]), name
