"""The one-step samplers (pure tensor math, checked against diffusers' schedulers in the tests)
and the call conventions of each denoiser class (how a pipeline feeds it one step).

A denoiser convention knows a model class's inputs: latent channels and the spatial multiple it
needs, how to pack latents and build position ids (FLUX), and which conditioning shapes a random
stand-in needs. Which convention, sampler and timestep a family uses is `recipes.RECIPES`.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import torch

SIGMA_DATA = 0.5  # TrigFlow's data std (SCMScheduler's sigma_data)


# ---------------------------------------------------------------- sampler math
def eps_x0(x: torch.Tensor, out: torch.Tensor, alpha_cumprod: float, prediction: str = "epsilon") -> torch.Tensor:
    """x0 of a DDPM-family model from x_t: epsilon `(x - sqrt(1-a) eps) / sqrt(a)`, v-prediction
    `sqrt(a) x - sqrt(1-a) v`, sample-prediction `out`."""
    a = float(alpha_cumprod)
    if prediction == "epsilon":
        return (x - math.sqrt(1 - a) * out) / math.sqrt(a)
    if prediction == "v_prediction":
        return math.sqrt(a) * x - math.sqrt(1 - a) * out
    if prediction == "sample":
        return out
    raise ValueError(f"unknown prediction_type {prediction!r}")


def flow_euler(z: torch.Tensor, v: torch.Tensor, t: float = 1.0, t_next: float = 0.0) -> torch.Tensor:
    """One Euler step of a flow model (`x_t = (1 - t) x0 + t z`, v ~ z - x0): from t = 1 to 0, x0 = z - v."""
    return z + (t_next - t) * v


def trigflow_time(s: float) -> float:
    """The flow time of TrigFlow time s (arXiv 2503.09641 Prop. 3.1): t = sin s / (sin s + cos s)."""
    return math.sin(s) / (math.sin(s) + math.cos(s))


def trigflow_onestep(z: torch.Tensor, flow_model: Callable[[torch.Tensor, float], torch.Tensor],
                     s: float = math.pi / 2, sigma_d: float = SIGMA_DATA) -> torch.Tensor:
    """One sCM step from s of a flow-parametrised model wrapped as TrigFlow, as SanaSprintPipeline
    runs it. `z` is unit noise (the pipeline's latents / sigma_d); returns x0 / sigma_d, the latent
    the pipeline decodes. `flow_model(x_fm, t)` returns the velocity. At s = pi/2: z - v(z, 1)."""
    x_s = sigma_d * z  # x_s = cos(s) x0 + sin(s) sigma_d z, and x0 is unknown: start at s = pi/2
    t = trigflow_time(s)
    norm = math.sqrt(t ** 2 + (1 - t) ** 2)
    x_fm = (x_s / sigma_d) * norm
    v = flow_model(x_fm, t)
    F = ((1 - 2 * t) * x_fm + (1 - 2 * t + 2 * t ** 2) * v) / norm
    x0 = math.cos(s) * x_s - math.sin(s) * sigma_d * F
    return x0 / sigma_d


@lru_cache(maxsize=16)
def _alphas_cumprod(items: tuple) -> torch.Tensor:
    import diffusers

    cfg = dict(items)
    cls = getattr(diffusers, cfg.get("_class_name", "DDPMScheduler"))
    sched = cls.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    return sched.alphas_cumprod.double()


def alphas_cumprod(scheduler: dict) -> torch.Tensor:
    """The family scheduler's alphas_cumprod, from diffusers' own scheduler class (so the betas
    are computed exactly as the pipeline computes them)."""
    return _alphas_cumprod(tuple(sorted((k, v if not isinstance(v, list) else tuple(v)) for k, v in scheduler.items())))


# ---------------------------------------------------------------- denoiser call conventions
def _cfg(model, key, default=None):
    return getattr(model.config, key, default) if not isinstance(model.config, dict) else model.config.get(key, default)


class _LatentCall:
    """What the transformers' call conventions share unless they say otherwise: latents with the
    model's own channels, sides a multiple of its patch size (2 when unset), no cap from position
    tables, the text states `text_width` wide."""

    text_width = "joint_attention_dim"

    @staticmethod
    def latent_channels(cfg: dict) -> int:
        return cfg.get("out_channels") or cfg["in_channels"]

    @staticmethod
    def multiple(cfg: dict) -> int:
        return cfg.get("patch_size", 2)

    @staticmethod
    def max_side(cfg: dict) -> int | None:
        return None

    def cond_shapes(self, cfg: dict, recipe, text_length: int) -> dict[str, tuple[int, ...]]:
        return {"context": (text_length, cfg[self.text_width])}

    @staticmethod
    def extra_cond(cfg: dict) -> dict[str, tuple[int, ...]]:
        """Inputs besides the text states that no encoder of the set gives (Wan 2.1 I2V's CLIP image
        states): their shapes, for seeded random stand-ins."""
        return {}


class _PackedCall(_LatentCall):
    """Latents packed 2x2 into tokens (FLUX.1's packing): the model's input channels are 4x the latent's."""

    @staticmethod
    def latent_channels(cfg: dict) -> int:
        return (cfg.get("out_channels") or cfg["in_channels"]) // 4

    @staticmethod
    def multiple(cfg: dict) -> int:
        return 2


class UNetCall(_LatentCall):
    """UNet2DConditionModel: (x, t, encoder_hidden_states, added_cond_kwargs for SDXL)."""

    @staticmethod
    def multiple(cfg: dict) -> int:
        return 2 ** (len(cfg["block_out_channels"]) - 1)

    @staticmethod
    def cond_shapes(cfg: dict, recipe, text_length: int) -> dict[str, tuple[int, ...]]:
        shapes = {"context": (77, cfg["cross_attention_dim"])}
        if cfg.get("addition_embed_type") == "text_time":
            from ckptkit.verify.recipes import TIME_IDS

            n = TIME_IDS[recipe.time_ids or "sdxl"]
            shapes["pooled"] = (cfg["projection_class_embeddings_input_dim"] - n * cfg["addition_time_embed_dim"],)
        return shapes

    @staticmethod
    def __call__(model, x, timestep: float, cond: dict, guidance) -> torch.Tensor:
        extra = None
        if cond.get("time_ids") is not None:
            extra = {"text_embeds": cond["pooled"], "time_ids": cond["time_ids"]}
        t = torch.full((x.shape[0],), timestep, device=x.device, dtype=torch.float32)
        return model(_pad_channels(model, x), t, encoder_hidden_states=cond["context"],
                     added_cond_kwargs=extra).sample


class MMDiTCall(_LatentCall):
    """SD3Transformer2DModel: (hidden_states, encoder_hidden_states, pooled_projections, timestep)."""

    @staticmethod
    def max_side(cfg: dict) -> int | None:
        m = cfg.get("pos_embed_max_size")
        return m * cfg.get("patch_size", 2) if m else None

    @staticmethod
    def cond_shapes(cfg: dict, recipe, text_length: int) -> dict[str, tuple[int, ...]]:
        return {"context": (77 + text_length, cfg["joint_attention_dim"]), "pooled": (cfg["pooled_projection_dim"],)}

    @staticmethod
    def __call__(model, x, timestep: float, cond: dict, guidance) -> torch.Tensor:
        t = torch.full((x.shape[0],), timestep, device=x.device, dtype=torch.float32)
        return model(hidden_states=_pad_channels(model, x), encoder_hidden_states=cond["context"],
                     pooled_projections=cond["pooled"], timestep=t).sample


def flux_pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C), FluxPipeline._pack_latents."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def flux_unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of flux_pack (FluxPipeline._unpack_latents)."""
    b, _, c4 = x.shape
    x = x.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h, w)


def flux_img_ids(h: int, w: int) -> torch.Tensor:
    """Position ids of the packed latent tokens: (0, row, column)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


class FluxCall(_PackedCall):
    """FluxTransformer2DModel: packed 2x2 latents, img_ids / txt_ids, timestep t in [0, 1],
    guidance tensor for dev."""

    @staticmethod
    def cond_shapes(cfg: dict, recipe, text_length: int) -> dict[str, tuple[int, ...]]:
        return {"context": (text_length, cfg["joint_attention_dim"]), "pooled": (cfg["pooled_projection_dim"],)}

    @staticmethod
    def __call__(model, x, timestep: float, cond: dict, guidance) -> torch.Tensor:
        b, _, h, w = x.shape
        packed = flux_pack(x)
        extra = _cfg(model, "in_channels") - packed.shape[-1]
        if extra > 0:  # Fill / depth variants: their image conditioning channels as zeros
            packed = torch.cat([packed, packed.new_zeros(b, packed.shape[1], extra)], -1)
        t = torch.full((b,), timestep, device=x.device, dtype=x.dtype)
        g = None if guidance is None else torch.full((b,), guidance, device=x.device, dtype=torch.float32)
        ctx = cond["context"]
        out = model(hidden_states=packed, encoder_hidden_states=ctx, pooled_projections=cond["pooled"], timestep=t,
                    img_ids=flux_img_ids(h, w).to(x.device, x.dtype),
                    txt_ids=torch.zeros(ctx.shape[1], 3, device=x.device, dtype=x.dtype), guidance=g).sample
        return flux_unpack(out, h, w)


class SanaCall(_LatentCall):
    """SanaTransformer2DModel: (hidden_states, encoder_hidden_states, timestep, guidance for Sprint)."""

    text_width = "caption_channels"

    @staticmethod
    def multiple(cfg: dict) -> int:
        return cfg.get("patch_size", 1)

    @staticmethod
    def __call__(model, x, timestep: float, cond: dict, guidance) -> torch.Tensor:
        b = x.shape[0]
        t = torch.full((b,), timestep, device=x.device, dtype=torch.float32)
        g = None if guidance is None else torch.full((b,), guidance, device=x.device, dtype=x.dtype)
        return model(hidden_states=_pad_channels(model, x), encoder_hidden_states=cond["context"], timestep=t,
                     guidance=g).sample


class QwenImageCall(_PackedCall):
    """QwenImageTransformer2DModel: 2x2-packed latents (QwenImagePipeline._pack_latents, FLUX's
    packing), `img_shapes` (frames, rows, columns) of the token grid, a text mask, timestep t in [0, 1]
    (the pipeline divides its 1000-scale timesteps by 1000; the model scales by 1000 inside)."""

    @staticmethod
    def latent_channels(cfg: dict) -> int:
        return cfg.get("out_channels") or cfg["in_channels"] // 4

    @staticmethod
    def __call__(model, x, timestep: float, cond: dict, guidance) -> torch.Tensor:
        b, _, h, w = x.shape
        ctx = cond["context"]
        t = torch.full((b,), timestep, device=x.device, dtype=x.dtype)
        out = model(hidden_states=flux_pack(x), encoder_hidden_states=ctx,
                    encoder_hidden_states_mask=torch.ones(ctx.shape[:2], device=x.device, dtype=torch.long),
                    timestep=t, img_shapes=[[(1, h // 2, w // 2)]] * b).sample
        return flux_unpack(out, h, w)


class ChromaCall(_PackedCall):
    """ChromaTransformer2DModel: FLUX.1's 2x2 packing and 3-axis ids (ChromaPipeline._pack_latents,
    _prepare_latent_image_ids, text ids all zero), timestep t in [0, 1] (the pipeline divides its
    1000-scale timesteps by 1000; the model scales by 1000 inside). No guidance input (the
    approximator's guidance channel is fixed at 0), no pooled text. The mask is the pipeline's for a
    caption with no padding: text tokens then image tokens, all 1, in the latents' dtype
    (ChromaPipeline._get_t5_prompt_embeds / _prepare_attention_mask)."""

    @staticmethod
    def __call__(model, x, timestep: float, cond: dict, guidance) -> torch.Tensor:
        b, _, h, w = x.shape
        ctx = cond["context"]
        t = torch.full((b,), timestep, device=x.device, dtype=x.dtype)
        packed = flux_pack(x)
        mask = torch.ones(b, ctx.shape[1] + packed.shape[1], device=x.device, dtype=x.dtype)
        out = model(hidden_states=packed, encoder_hidden_states=ctx, timestep=t,
                    img_ids=flux_img_ids(h, w).to(x.device, x.dtype),
                    txt_ids=torch.zeros(ctx.shape[1], 3, device=x.device, dtype=x.dtype), attention_mask=mask).sample
        return flux_unpack(out, h, w)


def flux2_ids(h: int, w: int, text_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FLUX.2's 4-axis (t, row, column, l) position ids: latent tokens (0, row, column, 0) of the
    2x2-patchified grid (Flux2Pipeline._prepare_latent_ids), text tokens (0, 0, 0, index)
    (_prepare_text_ids)."""
    img = torch.cartesian_prod(torch.arange(1), torch.arange(h // 2), torch.arange(w // 2), torch.arange(1))
    txt = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(text_length))
    return img, txt


class Flux2Call(_PackedCall):
    """Flux2Transformer2DModel: the latents (in_channels / 4 channels; the VAE's, before its 2x2
    patchify) patchified 2x2 and flattened row by row (Flux2Pipeline._patchify_latents then
    _pack_latents: the same tensor as FLUX.1's packing), 4-axis ids (`flux2_ids`), timestep t in
    [0, 1] and, for guidance-distilled [dev], the guidance scale itself (the model scales both by
    1000 inside). The latent compared is the pipeline's, in its batch-norm-normalised space."""

    @staticmethod
    def __call__(model, x, timestep: float, cond: dict, guidance) -> torch.Tensor:
        b, _, h, w = x.shape
        ctx = cond["context"]
        img_ids, txt_ids = flux2_ids(h, w, ctx.shape[1])
        t = torch.full((b,), timestep, device=x.device, dtype=x.dtype)
        g = None if guidance is None else torch.full((b,), guidance, device=x.device, dtype=torch.float32)
        out = model(hidden_states=flux_pack(x), encoder_hidden_states=ctx, timestep=t, guidance=g,
                    img_ids=img_ids.to(x.device), txt_ids=txt_ids.to(x.device)).sample
        return flux_unpack(out, h, w)


class HiDreamCall(_LatentCall):
    """HiDreamImageTransformer2DModel: unpacked latents (it patchifies inside), `timesteps` in
    [0, 1000], T5 states, the Llama states of every layer its blocks read ((layers, B, L, C)), the
    pooled CLIP-L + CLIP-G embedding. HiDreamImagePipeline negates the output (`noise_pred = -...`):
    the model predicts x0 - noise, so the velocity is minus its output."""

    @staticmethod
    def max_side(cfg: dict) -> int | None:
        m = cfg.get("max_resolution")
        return min(m) * cfg.get("patch_size", 2) if m else None

    @staticmethod
    def cond_shapes(cfg: dict, recipe, text_length: int) -> dict[str, tuple[int, ...]]:
        t5, llama = cfg["caption_channels"]
        return {"context": (text_length, t5), "llama": (max(cfg["llama_layers"]) + 1, text_length, llama),
                "pooled": (cfg["text_emb_dim"],)}

    @staticmethod
    def __call__(model, x, timestep: float, cond: dict, guidance) -> torch.Tensor:
        t = torch.full((x.shape[0],), timestep, device=x.device, dtype=torch.float32)
        llama = cond["llama"].transpose(0, 1)  # (B, layers, L, C) -> (layers, B, L, C)
        out = model(hidden_states=x, timesteps=t, encoder_hidden_states_t5=cond["context"],
                    encoder_hidden_states_llama3=llama, pooled_embeds=cond["pooled"]).sample
        return -out


class ZImageCall(_LatentCall):
    """ZImageTransformer2DModel: lists, one (C, 1, H, W) latent (a frame axis) and one (L, C) caption
    per sample (it patchifies inside), and `t` in [0, 1] with 0 at the noise: ZImagePipeline feeds
    (1000 - timestep) / 1000 = 1 - t (the model scales it by its t_scale) and negates the output, so the
    model predicts x0 - noise and the velocity is minus its output."""

    text_width = "cap_feat_dim"

    @staticmethod
    def multiple(cfg: dict) -> int:
        return cfg["all_patch_size"][0]

    @staticmethod
    def max_side(cfg: dict) -> int | None:
        lens = cfg.get("axes_lens")
        return min(lens[1:]) * cfg["all_patch_size"][0] if lens else None

    @staticmethod
    def __call__(model, x, timestep: float, cond: dict, guidance) -> torch.Tensor:
        t = torch.full((x.shape[0],), 1.0 - timestep, device=x.device, dtype=torch.float32)
        out = model(list(x.unsqueeze(2).unbind(0)), t, list(cond["context"].unbind(0)), return_dict=False)[0]
        return -torch.stack(out, 0).squeeze(2)


class Lumina2Call(_LatentCall):
    """Lumina2Transformer2DModel: unpacked latents (it patchifies inside), a text mask, and `timestep`
    in [0, 1] with 0 at the noise: Lumina2Pipeline feeds 1 - timestep / 1000 = 1 - t (no scaling
    inside) and negates the output, so the velocity is minus the model's output."""

    text_width = "cap_feat_dim"

    @staticmethod
    def max_side(cfg: dict) -> int | None:
        lens = cfg.get("axes_lens")
        return min(lens[1:]) * cfg.get("patch_size", 2) if lens else None

    @staticmethod
    def __call__(model, x, timestep: float, cond: dict, guidance) -> torch.Tensor:
        ctx = cond["context"]
        t = torch.full((x.shape[0],), 1.0 - timestep, device=x.device, dtype=torch.float32)
        mask = torch.ones(ctx.shape[:2], device=x.device, dtype=torch.bool)
        return -model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, encoder_attention_mask=mask).sample


class AuraFlowCall(_LatentCall):
    """AuraFlowTransformer2DModel: unpacked latents, the text states, timestep t in [0, 1]
    (AuraFlowPipeline feeds `t / 1000` of its 1000-scale timesteps; the model scales by 1000 inside)."""

    @staticmethod
    def max_side(cfg: dict) -> int | None:
        m = cfg.get("pos_embed_max_size")
        return math.isqrt(m) * cfg.get("patch_size", 2) if m else None

    @staticmethod
    def __call__(model, x, timestep: float, cond: dict, guidance) -> torch.Tensor:
        t = torch.full((x.shape[0],), timestep, device=x.device, dtype=x.dtype)
        return model(x, encoder_hidden_states=cond["context"], timestep=t).sample


class WanCall(_LatentCall):
    """WanTransformer3DModel: video latents (B, C, frames, H, W), timestep 1000 t (WanPipeline feeds its
    0..1000 timesteps), the UMT5 states. The I2V models' extra input channels (mask + image latents,
    WanImageToVideoPipeline) are zeros (a video with no reference image: _pad_channels); Wan 2.1 I2V /
    FLF2V also take CLIP image states (B, 257 per image, image_dim), seeded random here (`extra_cond`)."""

    text_width = "text_dim"

    @staticmethod
    def multiple(cfg: dict) -> int:
        patch = cfg.get("patch_size") or [1, 2, 2]
        return patch[-1]

    @staticmethod
    def extra_cond(cfg: dict) -> dict[str, tuple[int, ...]]:
        if not cfg.get("image_dim"):
            return {}
        return {"image": (cfg.get("pos_embed_seq_len") or 257, cfg["image_dim"])}

    @staticmethod
    def __call__(model, x, timestep: float, cond: dict, guidance) -> torch.Tensor:
        t = torch.full((x.shape[0],), timestep, device=x.device, dtype=torch.float32)
        return model(hidden_states=_pad_channels(model, x), timestep=t, encoder_hidden_states=cond["context"],
                     encoder_hidden_states_image=cond.get("image")).sample


class HunyuanVideoCall(_LatentCall):
    """HunyuanVideoTransformer3DModel: video latents (B, C, frames, H, W), timestep 1000 t, the LLM text
    states with their mask, CLIP-L's pooled output, and for guidance-distilled models the embedded
    guidance x 1000 (HunyuanVideoPipeline). The I2V-33ch model's extra input channels (image latents and
    mask) are zeros (_pad_channels)."""

    text_width = "text_embed_dim"

    def cond_shapes(self, cfg: dict, recipe, text_length: int) -> dict[str, tuple[int, ...]]:
        return {"context": (text_length, cfg["text_embed_dim"]), "pooled": (cfg["pooled_projection_dim"],)}

    @staticmethod
    def __call__(model, x, timestep: float, cond: dict, guidance) -> torch.Tensor:
        t = torch.full((x.shape[0],), timestep, device=x.device, dtype=x.dtype)
        ctx = cond["context"]
        mask = torch.ones(ctx.shape[:2], device=x.device, dtype=torch.long)
        g = None if guidance is None else torch.full((x.shape[0],), guidance * 1000.0, device=x.device, dtype=x.dtype)
        return model(hidden_states=_pad_channels(model, x), timestep=t, encoder_hidden_states=ctx,
                     encoder_attention_mask=mask, pooled_projections=cond["pooled"], guidance=g).sample


class LTXCall(_LatentCall):
    """LTXVideoTransformer3DModel: video latents (B, C, frames, H, W) packed into tokens (B, F * H * W, C)
    (LTXPipeline._pack_latents at patch 1, the released value: the pipeline packs with the model's patch
    but sizes the latents by its in_channels, so only patch 1 runs) plus the grid's frames / rows /
    columns, timestep 1000 t (LTXPipeline feeds its 0..1000 timesteps: 1000 at sigma 1), the T5 states
    with an all-ones mask, and LTXPipeline's rotary scale (VAE temporal compression / frame rate, spatial
    compression, spatial compression) = (8 / 25, 32, 32): the LTX VAE at the default 25 fps. The output
    is unpacked back to (B, C, F, H, W) (LTXPipeline._unpack_latents). An image latent (B, C, H, W) runs
    as a one-frame clip."""

    text_width = "caption_channels"
    ROPE_SCALE = (8 / 25, 32, 32)

    @staticmethod
    def multiple(cfg: dict) -> int:
        return 1

    @staticmethod
    def pack(x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        return x.permute(0, 2, 3, 4, 1).reshape(b, f * h * w, c)

    @staticmethod
    def unpack(x: torch.Tensor, f: int, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        return x.reshape(b, f, h, w, c).permute(0, 4, 1, 2, 3)

    def __call__(self, model, x, timestep: float, cond: dict, guidance) -> torch.Tensor:
        if x.ndim == 4:  # an image latent (B, C, H, W): a one-frame clip
            return self(model, x[:, :, None], timestep, cond, guidance)[:, :, 0]
        b, _, f, h, w = x.shape
        ctx = cond["context"]
        t = torch.full((b,), timestep, device=x.device, dtype=torch.float32)
        mask = torch.ones(ctx.shape[:2], device=x.device, dtype=x.dtype)
        out = model(hidden_states=self.pack(x), encoder_hidden_states=ctx, timestep=t, encoder_attention_mask=mask,
                    num_frames=f, height=h, width=w, rope_interpolation_scale=self.ROPE_SCALE).sample
        return self.unpack(out, f, h, w)


class LTX2Call(LTXCall):
    """LTX2VideoTransformer3DModel, as LTX2Pipeline calls it (diffusers 0.42 pipeline_ltx2.py denoising loop):
    the video latents packed into tokens as LTX-Video's (patch 1), audio latent tokens (B, audio frames,
    audio_in_channels), timestep 1000 t for both streams and as `sigma` (the pipeline passes
    sigma=timestep; LTX-2.3's prompt modulation reads it), `use_cross_timestep=True` (the pipeline's
    default), all-ones masks, fps 24 (its default frame_rate at motion_speed 1); the rotary coordinates
    are the model's own (the pipeline computes them with the same rope.prepare_video_coords /
    prepare_audio_coords). The audio latents are seeded random noise (`extra_cond`: at sigma 1 the audio
    latent is noise), as many frames as the pipeline gives the clip: round(pixel frames / fps x sampling rate
    / hop / audio scale factor), pixel frames = (F - 1) x 8 + 1. The text states: 2.0 (caption projections)
    takes caption_channels-wide states for both streams (the connectors' outputs), 2.3 its cross-attention
    widths; seeded random stand-ins for the Gemma-3 + connector outputs. Only the video output is compared
    (the audio prediction is computed and left out: the check compares one latent per stage)."""

    FPS = 24.0

    @staticmethod
    def _widths(cfg: dict) -> tuple[int, int]:
        if cfg.get("use_prompt_embeddings", True):
            return cfg["caption_channels"], cfg["caption_channels"]
        return cfg["cross_attention_dim"], cfg["audio_cross_attention_dim"]

    def cond_shapes(self, cfg: dict, recipe, text_length: int) -> dict[str, tuple[int, ...]]:
        video, audio = self._widths(cfg)
        return {"context": (text_length, video), "audio_context": (text_length, audio)}

    @classmethod
    def audio_frames(cls, cfg: dict, latent_frames: int) -> int:
        temporal = (cfg.get("vae_scale_factors") or (8, 32, 32))[0]
        per_second = cfg.get("audio_sampling_rate", 16000) / cfg.get("audio_hop_length", 160) / cfg.get(
            "audio_scale_factor", 4)
        return max(1, round(((latent_frames - 1) * temporal + 1) / cls.FPS * per_second))

    @classmethod
    def extra_cond(cls, cfg: dict) -> dict[str, tuple[int, ...]]:
        return {"audio_latents": (cls.audio_frames(cfg, 2), cfg["audio_in_channels"])}

    def __call__(self, model, x, timestep: float, cond: dict, guidance) -> torch.Tensor:
        if x.ndim == 4:  # an image latent (B, C, H, W): a one-frame clip
            return self(model, x[:, :, None], timestep, cond, guidance)[:, :, 0]
        b, _, f, h, w = x.shape
        ctx, actx, audio = cond["context"], cond.get("audio_context", cond["context"]), cond["audio_latents"]
        t = torch.full((b,), timestep, device=x.device, dtype=torch.float32)
        mask = torch.ones(ctx.shape[:2], device=x.device, dtype=x.dtype)
        video_out, _audio_out = model(
            hidden_states=self.pack(x), audio_hidden_states=audio.to(x.dtype), encoder_hidden_states=ctx,
            audio_encoder_hidden_states=actx.to(x.dtype), timestep=t, sigma=t, encoder_attention_mask=mask,
            audio_encoder_attention_mask=mask, num_frames=f, height=h, width=w, fps=self.FPS,
            audio_num_frames=audio.shape[1], use_cross_timestep=True, return_dict=False)
        return self.unpack(video_out, f, h, w)


def _pad_channels(model, x: torch.Tensor) -> torch.Tensor:
    """Inpainting models take extra input channels (mask, masked image): zeros here."""
    extra = _cfg(model, "in_channels", x.shape[1]) - x.shape[1]
    if extra <= 0:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], extra, *x.shape[2:])], 1)


DENOISERS = {"unet": UNetCall(), "mmdit": MMDiTCall(), "flux": FluxCall(), "sana": SanaCall(),
             "qwen_image": QwenImageCall(), "chroma": ChromaCall(), "flux2": Flux2Call(),
             "hidream": HiDreamCall(), "z_image": ZImageCall(), "lumina2": Lumina2Call(),
             "auraflow": AuraFlowCall(), "wan": WanCall(), "ltxv": LTXCall(), "hunyuan_video": HunyuanVideoCall(),
             "ltx2": LTX2Call()}


def model_time(recipe, model, t: float) -> float:
    scale = recipe.time_scale
    if recipe.time_scale_key:
        scale *= float(_cfg(model, recipe.time_scale_key, 1.0) or 1.0)
    return t * scale


def guidance_value(recipe, model) -> float | None:
    if recipe.guidance is None or not _cfg(model, "guidance_embeds", False):
        return None
    g = recipe.guidance
    if recipe.guidance_scale_key:
        g *= float(_cfg(model, recipe.guidance_scale_key, 1.0))
    return g


def one_step(recipe, model, z: torch.Tensor, cond: dict, scheduler: dict) -> torch.Tensor:
    """The family's one-step sample from unit noise `z` (on the model's device and dtype): the
    latent the pipeline would hand to the VAE (before VAE scaling), as float32.

    eps: the pipeline starts from `sigma_max z` (Euler's init_noise_sigma with trailing spacing)
    and scales it by 1 / sqrt(sigma_max^2 + 1), so the model sees x_T = sqrt(1 - a) z;
    flow: x_1 = z; trigflow: x_{pi/2} = sigma_d z (SanaSprintPipeline's latents * sigma_data)."""
    call = DENOISERS[recipe.denoiser]
    guidance = guidance_value(recipe, model)
    with torch.no_grad():
        if recipe.sampler == "eps":
            step = int(recipe.start)
            a = float(alphas_cumprod(scheduler)[step])
            x = z * math.sqrt(1 - a)  # x_T as diffusers' Euler (trailing, SDXL-Turbo's) feeds the model
            out = call(model, x, model_time(recipe, model, step), cond, guidance)
            return eps_x0(x.float(), out.float(), a, scheduler.get("prediction_type", "epsilon"))
        if recipe.sampler == "flow":
            v = call(model, z, model_time(recipe, model, recipe.start), cond, guidance)
            return flow_euler(z.float(), v.float(), recipe.start, 0.0)
        if recipe.sampler == "trigflow":
            sigma_d = float(scheduler.get("sigma_data", SIGMA_DATA))

            def flow_model(x_fm, t):
                return call(model, x_fm.to(z.dtype), model_time(recipe, model, t), cond, guidance).float()

            return trigflow_onestep(z.float(), flow_model, recipe.start, sigma_d)
    raise ValueError(f"unknown sampler {recipe.sampler!r}")
