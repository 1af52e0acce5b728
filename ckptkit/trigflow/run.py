"""`ckptkit sample`: model set -> caption conditioning -> sCM sampler (through TrigFlow) -> VAE -> PNG."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ckptkit.errors import CkptError
from ckptkit.trigflow import image, sampler
from ckptkit.trigflow.adapters import velocity
from ckptkit.trigflow.loader import load_model_set
from ckptkit.trigflow.text import conditioning
from ckptkit.trigflow.wrapper import SIGMA_DATA, TrigFlow

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class SampleResult:
    path: str
    latent_shape: tuple[int, ...]
    schedule: tuple[float, ...]
    time_scale: float
    conditioning: str
    output: str  # "decoded by the VAE" | "latent visualisation (no VAE)"
    device: str
    seconds: float
    latents: torch.Tensor | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "latents"}


def pick_device(device: str) -> str:
    if device not in DEVICES:
        raise CkptError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise CkptError("--device cuda: no CUDA device here (use --device auto or cpu)")
    return device


def latent_shape(ms, height: int | None, width: int | None) -> tuple[int, ...]:
    cfg = dict(ms.transformer.config)
    factor = image.vae_factor(ms.vae) if ms.vae is not None else ms.adapter.vae_factor
    multiple = ms.adapter.latent_multiple
    largest = ms.adapter.max_latent(cfg)
    default = cfg.get("sample_size") or 1024 // factor  # Sana/SD3 configs give their native latent size
    default = min(default, largest) if largest else default
    sides = []
    for px in (height, width):
        side = default if px is None else px // factor
        if px is not None and (px % factor or side % multiple or side < multiple):
            raise CkptError(f"image size {px} must be a multiple of {factor * multiple} for this model")
        if largest and side > largest:
            raise CkptError(f"image size {px} is more than this model's positions allow ({largest * factor} px)")
        sides.append(side)
    frames = (ms.adapter.frames,) if ms.adapter.frames else ()  # a video model: a short clip
    return (1, ms.adapter.latent_channels(cfg), *frames, *sides)


def sample_image(model: str | Path, out: str | Path, *, steps: int = 1, seed: int = 0,
                 schedule: str | Sequence[float] = "auto", prompt: str = "", height: int | None = None,
                 width: int | None = None, device: str = "auto", dtype: str = "fp32", guidance_scale: float = 4.5,
                 time_scale: float | None = None, force: bool = False, config: str | None = None,
                 family: str | None = None) -> SampleResult:
    from ckptkit.outputs import check_output, output_file

    out = Path(out)
    check_output(out, [Path(model)], "file")  # refused before any work; the folder is made only to write
    if out.exists() and not force:
        raise CkptError(f"{out}: exists (use --force to replace it)")
    if dtype not in DTYPES:
        raise CkptError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    angles = sampler.make_schedule(steps, schedule)
    dev = pick_device(device)
    started = time.perf_counter()
    ms = load_model_set(model, DTYPES[dtype], dev, config=config, family=family)
    cfg = dict(ms.transformer.config)
    shape = latent_shape(ms, height, width)
    cond, how = conditioning(ms.adapter, cfg, prompt, ms.text_encoders, ms.tokenizers, seed, guidance_scale, dev,
                             DTYPES[dtype])
    # precedence: --time-scale, then what `ckptkit trigflow` recorded, then the model config's convention
    scale = time_scale if time_scale is not None else ms.time_scale
    scale = float(scale if scale is not None else ms.adapter.time_scale(cfg))
    F = TrigFlow(velocity(ms.transformer, cond, scale), SIGMA_DATA)
    latents = sampler.sample(F, shape, angles, seed=seed, device=dev)  # sampler math in float32
    if ms.vae is not None:
        pixels, output = image.decode(ms.vae, latents), "decoded by the VAE"
    else:
        pixels, output = image.visualise(latents), "latent visualisation (no VAE)"
    with output_file(out, [Path(model)], force):
        image.save_png(pixels, out)
    return SampleResult(str(out), shape, angles, scale, how, output, dev, round(time.perf_counter() - started, 3),
                        latents.cpu())
