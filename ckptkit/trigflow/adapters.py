"""How each flow-matching network is called: a small table keyed by diffusers class.

An adapter turns "velocity at flow time t" into the network's own call: the timestep number it embeds
(its time scale times t), how latents are laid out (FLUX packs 2x2 patches into tokens), and which
conditioning keyword arguments it takes. Everything else (the TrigFlow math, the sampler) is shared.

Time scales, per unit of flow time t (a subtle convention, so spelled out):
  SanaTransformer2DModel, flow (guidance_embeds=False): diffusers' SanaPipeline feeds its scheduler's timesteps
      in [0, 1000] times `config.timestep_scale` -> 1000 * timestep_scale (NVlabs' flow Sana embeds 1000 t).
  SanaTransformer2DModel, TrigFlow form (guidance_embeds=True): SanaSprintPipeline feeds t itself and never
      reads `timestep_scale`; ckptkit defines `timestep_scale` there as the factor on t -> timestep_scale
      (1 for SANA-Sprint and its dense-time teacher, 1000 for a remapped original Sana; see convert/trigflow.py).
  SD3Transformer2DModel: 1000 (StableDiffusion3Pipeline feeds sigma * 1000).
  FluxTransformer2DModel: 1 (FluxPipeline feeds timestep / 1000; the model multiplies by 1000 itself).
Timesteps are passed in the sampler's dtype (float32), never cast to a bf16 model dtype: 1000 t in bf16
would keep 3 significant digits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ckptkit.errors import CkptError
from ckptkit.trigflow.wrapper import Velocity

Call = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, dict], torch.Tensor]


@dataclass(frozen=True)
class Adapter:
    family: str
    time_scale: Callable[[dict], float]  # timestep the network embeds per unit of flow time, from its config
    call: Call  # (model, x [B, C, H, W], timestep [B], conditioning kwargs) -> velocity [B, C, H, W]
    latent_channels: Callable[[dict], int]
    guidance: Callable[[dict], float | None]  # factor on the guidance scale fed to the model; None: no input
    caption: Callable[[dict], dict[str, tuple[int, ...]]]  # conditioning kwargs -> shape without batch
    vae_factor: int  # pixels per latent cell of the family's VAE (when no VAE is at hand)
    latent_multiple: int = 1  # latent sides must divide by it
    max_latent: Callable[[dict], int | None] = lambda c: None  # largest latent side the positions allow
    checkpoint_form: bool = False  # a TrigFlow checkpoint form exists (`ckptkit trigflow`)
    frames: int = 0  # video models: latent frames sampled (latents [B, C, F, H, W]); 0: images


def _sana_time_scale(cfg: dict) -> float:

    scale = parse_time_scale(cfg.get("timestep_scale", 1.0), "transformer config: timestep_scale") or 1.0
    return scale * (1.0 if cfg.get("guidance_embeds") else 1000.0)


def _sana_call(model, x, timestep, cond):
    kwargs = {k: v for k, v in cond.items() if k in ("encoder_hidden_states", "encoder_attention_mask", "guidance")}
    return model(x, timestep=timestep, return_dict=False, **kwargs)[0]


def _sd3_call(model, x, timestep, cond):
    return model(hidden_states=x, encoder_hidden_states=cond["encoder_hidden_states"],
                 pooled_projections=cond["pooled_projections"], timestep=timestep, return_dict=False)[0]


def _flux_call(model, x, timestep, cond):
    """FluxPipeline._pack_latents / _prepare_latent_image_ids / _unpack_latents around the call."""
    b, c, h, w = x.shape
    packed = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
    img_ids = torch.zeros(h // 2, w // 2, 3, dtype=x.dtype, device=x.device)
    img_ids[..., 1] += torch.arange(h // 2, dtype=x.dtype, device=x.device)[:, None]
    img_ids[..., 2] += torch.arange(w // 2, dtype=x.dtype, device=x.device)[None, :]
    text = cond["encoder_hidden_states"]
    txt_ids = torch.zeros(text.shape[1], 3, dtype=x.dtype, device=x.device)
    out = model(hidden_states=packed, encoder_hidden_states=text, pooled_projections=cond["pooled_projections"],
                timestep=timestep, img_ids=img_ids.reshape(-1, 3), txt_ids=txt_ids, guidance=cond.get("guidance"),
                return_dict=False)[0]
    return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


ADAPTERS: dict[str, Adapter] = {
    "SanaTransformer2DModel": Adapter(
        "sana", _sana_time_scale, _sana_call, lambda c: c["in_channels"],
        # SanaSprintPipeline: guidance = guidance_scale * config.guidance_embeds_scale
        lambda c: c.get("guidance_embeds_scale", 0.1) if c.get("guidance_embeds") else None,
        lambda c: {"encoder_hidden_states": (300, c["caption_channels"]), "encoder_attention_mask": (300,)},
        vae_factor=32, checkpoint_form=True),
    "SD3Transformer2DModel": Adapter(
        "sd3", lambda c: 1000.0, _sd3_call, lambda c: c["in_channels"], lambda c: None,
        lambda c: {"encoder_hidden_states": (333, c["joint_attention_dim"]),
                   "pooled_projections": (c["pooled_projection_dim"],)},
        vae_factor=8, latent_multiple=2,
        max_latent=lambda c: c["pos_embed_max_size"] * c["patch_size"] if c.get("pos_embed_max_size") else None),
    "FluxTransformer2DModel": Adapter(
        "flux", lambda c: 1.0, _flux_call, lambda c: c["in_channels"] // 4,
        lambda c: 1.0 if c.get("guidance_embeds") else None,  # FLUX.1-dev; schnell has no guidance input
        lambda c: {"encoder_hidden_states": (256, c["joint_attention_dim"]),
                   "pooled_projections": (c["pooled_projection_dim"],)},
        vae_factor=8, latent_multiple=2),
}


CAPTION_TOKENS = 32  # random caption length for the newer families (the 1-step check's text length)


def _from_one_step_call(family, recipe) -> Adapter:
    """The adapter of a newer flow family, from the 1-step check's call convention for it
    (verify/samplers.py DENOISERS: latent layout, ids, conditioning keys, sign), so that each network's
    call is written once. Conditioning is the seeded random embedding of its `cond_shapes` (these
    families' text encoders ship separately; trigflow/text.py)."""
    from ckptkit.verify.samplers import DENOISERS

    call = DENOISERS[recipe.denoiser]

    def run(model, x, timestep, cond):
        g = cond.get("guidance")
        t = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        return call(model, x, t, cond, None if g is None else float(g.flatten()[0]))

    released = dict(family.diffusion_model.config)
    return Adapter(
        family.name, lambda c: recipe.time_scale, run, call.latent_channels,
        lambda c: 1.0 if recipe.guidance is not None and c.get("guidance_embeds") else None,
        lambda c: {**call.cond_shapes(c, recipe, CAPTION_TOKENS), **call.extra_cond(c)},
        vae_factor=recipe.latent_factor, latent_multiple=call.multiple(released), max_latent=call.max_side,
        frames=recipe.frames)


def _newer_flow_adapters() -> dict[str, Adapter]:
    from ckptkit.families import FAMILIES
    from ckptkit.verify.recipes import RECIPES

    out = {}
    for family in FAMILIES:
        recipe, cls = RECIPES.get(family.name), family.diffusion_model.diffusers_class
        if recipe is not None and recipe.sampler == "flow" and cls not in ADAPTERS:
            out[cls] = _from_one_step_call(family, recipe)
    return out


ADAPTERS.update(_newer_flow_adapters())


def adapter_for(model_or_class) -> Adapter:
    name = model_or_class if isinstance(model_or_class, str) else type(model_or_class).__name__
    if name not in ADAPTERS:
        raise CkptError(f"{name} is not a flow-matching model ckptkit can run through TrigFlow "
                        f"(flow models: {', '.join(ADAPTERS)})")
    return ADAPTERS[name]


def velocity(model: torch.nn.Module, cond: dict, time_scale: float | None = None) -> Velocity:
    """v(x_fm, t) of `model` with fixed conditioning; `time_scale` overrides the one its config implies."""
    adapter = adapter_for(model)
    scale = float(time_scale if time_scale is not None else adapter.time_scale(dict(model.config)))
    dtype = next(model.parameters()).dtype

    def v(x_fm: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return adapter.call(model, x_fm.to(dtype), t * scale, cond)

    return v


def parse_time_scale(value, where: str) -> float | None:
    """A recorded time scale (metadata string or manifest number): a positive finite float, or None."""
    import math

    if value is None or value == "":
        return None
    try:
        scale = float(value)
    except (TypeError, ValueError):
        scale = float("nan")
    if isinstance(value, bool) or not math.isfinite(scale) or scale <= 0:
        from ckptkit.formats.files import printable

        raise CkptError(f"{where}: time scale {printable(repr(value))[:40]} is not a positive number")
    return scale
