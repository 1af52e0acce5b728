"""The 1-step check's per-family conventions, as ONE table: which one-step sampler a family uses,
what its denoiser takes as timestep, and how its pipeline builds the conditioning from its text
encoders. `onestep.py` reads only this table; no family name appears anywhere else.

The conventions are those of the diffusers pipelines (0.42):

* eps samplers (SD1.x, SD2.x, SDXL base / Turbo, SDXL refiner): SDXL-Turbo / SD-Turbo's one step,
  timestep 999, guidance 0, `x0 = (x - sqrt(1 - a) eps) / sqrt(a)` with `a = alphas_cumprod[999]`
  of the family scheduler (v-prediction: `x0 = sqrt(a) x - sqrt(1 - a) v`).
* flow samplers (SD3, FLUX.1, flow Sana): Euler from t = 1 to 0, `x0 = z - v(z, 1)`.
  SD3Transformer2DModel and SanaTransformer2DModel take `1000 t` (Sana also times its config's
  `timestep_scale`), FluxTransformer2DModel takes `t` itself (it scales by 1000 inside) plus, for
  guidance-distilled dev, a guidance tensor (3.5, the pipeline default).
* trigflow (Sana-Sprint): one sCM step from s = pi/2 with the flow -> TrigFlow wrap of
  SanaSprintPipeline; the transformer takes `t = sin s / (sin s + cos s)` (= 1) itself (times
  `timestep_scale`, 1 in released configs) and a guidance embedding `4.5 * guidance_embeds_scale`.
  At s = pi/2 this equals one flow Euler step exactly, so a flow teacher and its training-free
  TrigFlow conversion compare directly.

Conditioning: each text encoder's output is picked by `hidden` ("last": last_hidden_state,
final layer norm included; "penultimate": hidden_states[-2] as SDXL and SD3 take it, no final
norm; "penultimate_ln": hidden_states[-2] through the final norm, as SD2's OpenCLIP
`layer="penultimate"`) and `pooled` ("projected": text_embeds, or pooler_output for a CLIP
without projection such as SD3's bundled CLIP-L, which ComfyUI also pools unprojected; "pooler":
pooler_output). `context` lists groups: the members of a group are concatenated along channels,
then every group is zero-padded to the widest and the groups are concatenated along the sequence
(SD3: [clip_l ++ clip_g] padded to the T5 width, then T5). `pooled` members are concatenated.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TextUse:
    component: str  # component name in the family spec
    tokens: str  # token id scheme: "clip" (77, BOS ... EOS, EOS padding) | "t5" (text_length, EOS, 0 padding)
    hidden: str | None  # "last" | "penultimate" | "penultimate_ln" | None (only the pooled output is used)
    pooled: str | None = None  # "projected" | "pooler" | None


@dataclass(frozen=True)
class OneStepRecipe:
    denoiser: str  # call convention in samplers.DENOISERS: "unet" | "mmdit" | "flux" | "sana" | ...
    sampler: str  # "eps" | "flow" | "trigflow"
    start: float  # the sampler's start time: eps 999 (train step), flow t = 1, trigflow s = pi/2
    time_scale: float  # model timestep = (flow/trigflow: t; eps: the step) * time_scale ...
    time_scale_key: str | None = None  # ... * model.config[time_scale_key] (Sana's timestep_scale)
    text: tuple[TextUse, ...] = ()
    context: tuple[tuple[str, ...], ...] = ()  # see the module doc; "caption" = seeded random caption
    pooled: tuple[str, ...] = ()
    zeros_when_absent: tuple[str, ...] = ()  # encoders the pipeline replaces by zeros when missing (SD3's T5)
    time_ids: str | None = None  # "sdxl" (orig size, crop, target size) | "refiner" (orig size, crop, aesthetic)
    guidance: float | None = None  # fed when the model's config has guidance_embeds
    guidance_scale_key: str | None = None  # guidance *= model.config[key] (Sana-Sprint)
    latent_factor: int = 8  # pixels per latent pixel when the set has no VAE (Sana's DC-AE: 32)
    has_vae: bool = True  # False: the family has no VAE component (images not applicable)
    frames: int = 0  # video families: latent frames of the check's clip (0: an image, latents (B, C, H, W))
    decode_timestep: float = 0.0  # a timestep-conditioned VAE decoder's timestep (LTXPipeline's decode_timestep)
    timestep_doc: str = ""

    def to_json(self) -> dict:
        return asdict(self)


TIME_IDS = {"sdxl": 6, "refiner": 5}  # values per kind (see conditioning.time_ids)
AESTHETIC_SCORE = 6.0  # StableDiffusionXLImg2ImgPipeline's default

_CLIP = "clip"
_T5 = "t5"

_EPS = dict(denoiser="unet", sampler="eps", start=999.0, time_scale=1.0,
            timestep_doc="discrete step 999 (SDXL-Turbo / SD-Turbo one step)")

# family (or "family:variant", which wins) -> recipe
RECIPES: dict[str, OneStepRecipe] = {
    "sd1": OneStepRecipe(**_EPS, text=(TextUse("clip_l", _CLIP, "last"),), context=(("clip_l",),)),
    "sd2": OneStepRecipe(**_EPS, text=(TextUse("clip_h", _CLIP, "penultimate_ln"),), context=(("clip_h",),)),
    "sdxl": OneStepRecipe(
        **_EPS, text=(TextUse("clip_l", _CLIP, "penultimate"), TextUse("clip_g", _CLIP, "penultimate", "projected")),
        context=(("clip_l", "clip_g"),), pooled=("clip_g",), time_ids="sdxl"),
    "sdxl_refiner": OneStepRecipe(
        **_EPS, text=(TextUse("clip_g", _CLIP, "penultimate", "projected"),), context=(("clip_g",),),
        pooled=("clip_g",), time_ids="refiner"),
    "sd3": OneStepRecipe(
        denoiser="mmdit", sampler="flow", start=1.0, time_scale=1000.0, timestep_doc="1000 t",
        text=(TextUse("clip_l", _CLIP, "penultimate", "projected"),
              TextUse("clip_g", _CLIP, "penultimate", "projected"), TextUse("t5xxl", _T5, "last")),
        context=(("clip_l", "clip_g"), ("t5xxl",)), pooled=("clip_l", "clip_g"), zeros_when_absent=("t5xxl",)),
    "flux": OneStepRecipe(
        denoiser="flux", sampler="flow", start=1.0, time_scale=1.0, guidance=3.5,
        timestep_doc="t in [0, 1] (the transformer scales by 1000); dev: guidance 3.5; latents packed 2x2",
        text=(TextUse("clip_l", _CLIP, None, "pooler"), TextUse("t5xxl", _T5, "last")),
        context=(("t5xxl",),), pooled=("clip_l",)),
    "sana": OneStepRecipe(
        denoiser="sana", sampler="flow", start=1.0, time_scale=1000.0, time_scale_key="timestep_scale",
        context=(("caption",),), latent_factor=32, has_vae=False,
        timestep_doc="1000 t * timestep_scale; seeded random caption embedding (no bundled text encoder)"),
    "sana:sana-sprint": OneStepRecipe(
        denoiser="sana", sampler="trigflow", start=math.pi / 2, time_scale=1.0, time_scale_key="timestep_scale",
        guidance=4.5, guidance_scale_key="guidance_embeds_scale", context=(("caption",),), latent_factor=32,
        has_vae=False,
        timestep_doc="TrigFlow s = pi/2 -> t = 1 fed as t * timestep_scale; guidance 4.5 * guidance_embeds_scale"),
    "qwen_image": OneStepRecipe(
        denoiser="qwen_image", sampler="flow", start=1.0, time_scale=1.0, context=(("caption",),),
        timestep_doc="t in [0, 1] (the transformer scales by 1000); latents packed 2x2; seeded random "
                     "Qwen2.5-VL-width text states (the text encoder ships separately); the VAE "
                     "(AutoencoderKLQwenImage) decodes z * latents_std + latents_mean as one frame "
                     "(onestep.decode_frames)"),
    "chroma": OneStepRecipe(
        denoiser="chroma", sampler="flow", start=1.0, time_scale=1.0, text=(TextUse("t5xxl", _T5, "last"),),
        context=(("t5xxl",),),
        timestep_doc="t in [0, 1] (the transformer scales by 1000); no guidance input; latents packed 2x2; "
                     "T5's last hidden state (seeded random T5-width states when the set has no T5)"),
    "flux2": OneStepRecipe(
        denoiser="flux2", sampler="flow", start=1.0, time_scale=1.0, guidance=4.0, context=(("caption",),),
        timestep_doc="t in [0, 1] (the transformer scales by 1000); dev: guidance 4.0 (Flux2Pipeline's "
                     "default, also scaled by 1000 inside); latents patchified 2x2, 4-axis ids; seeded random "
                     "text states of the 3 stacked text-encoder layers' width (the text encoder ships separately); "
                     "the VAE decodes after the batch-norm de-normalisation (onestep.vae_latent)"),
    "hidream": OneStepRecipe(
        denoiser="hidream", sampler="flow", start=1.0, time_scale=1000.0, context=(("caption",),),
        timestep_doc="1000 t; the model's output negated (HiDreamImagePipeline); seeded random T5, Llama (every "
                     "layer its blocks read) and pooled CLIP states (the text encoders ship separately)"),
    "z_image": OneStepRecipe(
        denoiser="z_image", sampler="flow", start=1.0, time_scale=1.0, context=(("caption",),),
        timestep_doc="1 - t (0 at the noise; ZImagePipeline's (1000 - timestep) / 1000, scaled by t_scale "
                     "inside); the model's output negated; seeded random Qwen3-width caption states (the text "
                     "encoder ships separately)"),
    "lumina2": OneStepRecipe(
        denoiser="lumina2", sampler="flow", start=1.0, time_scale=1.0, context=(("caption",),),
        timestep_doc="1 - t (0 at the noise; Lumina2Pipeline's 1 - timestep / 1000, not scaled inside); the "
                     "model's output negated; seeded random Gemma-2-width caption states (the text encoder "
                     "ships separately)"),
    "auraflow": OneStepRecipe(
        denoiser="auraflow", sampler="flow", start=1.0, time_scale=1.0, text=(TextUse("pile_t5xl", _T5, "last"),),
        context=(("pile_t5xl",),),
        timestep_doc="t in [0, 1] (AuraFlowPipeline feeds t / 1000; the model scales by 1000); Pile-T5-XL's "
                     "last hidden state (seeded random states of its width when the set has no text encoder)"),
    "hunyuan_video": OneStepRecipe(
        denoiser="hunyuan_video", sampler="flow", start=1.0, time_scale=1000.0, guidance=6.0, context=(("caption",),),
        frames=2, latent_factor=8,
        timestep_doc="1000 t (HunyuanVideoPipeline's 0..1000 timesteps); guidance-distilled: guidance 6.0 (the "
                     "pipeline default) x 1000; video latents (1, C, 2 frames, h, w): 5 pixel frames through the "
                     "causal VAE (latent / scaling_factor, as HunyuanVideoPipeline decodes), compared frame by "
                     "frame; seeded random LLM text states and CLIP-L pooled output (the text encoders are not run)"),
    "wan": OneStepRecipe(
        denoiser="wan", sampler="flow", start=1.0, time_scale=999.0, text=(TextUse("umt5xxl", _T5, "last"),),
        context=(("umt5xxl",),), frames=2,
        timestep_doc="999 t (at sigma 1 WanPipeline's UniPC scheduler feeds the integer timestep 999); video "
                     "latents (1, C, 2 frames, h, w): 5 pixel frames through the Wan VAE (temporal stride 4, the first frame alone), compared frame by "
                     "frame; UMT5-XXL's last hidden state (seeded random states of its width when the set has no "
                     "text encoder); I2V: zero mask / image-latent channels, seeded random CLIP image states"),
    "ltxv": OneStepRecipe(
        denoiser="ltxv", sampler="flow", start=1.0, time_scale=1000.0, text=(TextUse("t5xxl", _T5, "last"),),
        context=(("t5xxl",),), frames=2, latent_factor=32, decode_timestep=0.0,
        timestep_doc="1000 t (LTXPipeline's FlowMatchEuler timesteps: 1000 at sigma 1); video latents (1, C, 2 "
                     "frames, h, w) packed into tokens (patch 1) with the grid's size and LTXPipeline's rotary "
                     "scale (8 / 25 fps, 32, 32); T5-XXL's last hidden state with an all-ones mask (seeded random "
                     "T5-width states when the set has no T5); the LTX VAE (32x spatial, 8x temporal: 2 latent "
                     "frames are 9 pixel frames, compared frame by frame) decodes z * latents_std + latents_mean "
                     "(LTXPipeline._denormalize_latents, scaling 1.0) with LTXPipeline's default decode_timestep 0 "
                     "(0.9.1+) and its injected noise seeded alike on both sides (onestep.decode_frames)"),
    "ltx2": OneStepRecipe(
        denoiser="ltx2", sampler="flow", start=1.0, time_scale=1000.0, context=(("caption",),), frames=2,
        latent_factor=32, decode_timestep=0.0,
        timestep_doc="1000 t for video and audio, also as sigma (LTX2Pipeline: sigma=timestep, use_cross_timestep); "
                     "video latents (1, C, 2 frames, h, w) packed into tokens (patch 1), fps 24; seeded random "
                     "audio latent tokens (the clip's audio frames) and seeded random text states for both streams "
                     "(Gemma-3 and the text connectors are not components); the video output is compared; the "
                     "video VAE (32x spatial, 8x temporal: 2 latent frames are 9 pixel frames, compared frame by "
                     "frame) decodes z * latents_std + latents_mean (LTX2Pipeline._denormalize_latents, scaling "
                     "1.0; the released decoder is not timestep-conditioned, so no decode timestep or noise); the "
                     "audio VAE and vocoder are not components"),
}


def recipe_for(family: str | None, variant: str | None = None) -> OneStepRecipe:
    from ckptkit.errors import CkptError

    recipe = RECIPES.get(f"{family}:{variant}") or RECIPES.get(family or "")
    if recipe is None:
        raise CkptError(f"the 1-step check has no recipe for family {family or 'unknown'!r} "
                        f"(known: {', '.join(sorted({k.split(':')[0] for k in RECIPES}))})")
    return recipe
