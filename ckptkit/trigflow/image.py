"""Latents -> PNG: through the VAE when the model set has one, else a visualisation of the latent.

The visualisation (no VAE, e.g. Sana's DC-AE shipped separately): the first three latent channels (fewer
repeated) as R, G, B, each min-max normalised on its own, enlarged by whole pixels to at least 256 px.
It shows structure and seeds apart, not the picture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ckptkit.formats.atomic import atomic_write


def vae_factor(vae) -> int:
    """Pixels per latent cell of a VAE model (verify's rule on its config)."""
    from ckptkit.verify.onestep import vae_factor as factor_of

    return factor_of(dict(vae.config))


def decode(vae, latents: torch.Tensor) -> np.ndarray:
    """As the pipelines do: latents / scaling_factor (+ shift_factor), decode (a video VAE with its
    per-channel latent statistics: verify's decode_frames), [-1, 1] -> uint8 HWC; a clip's frames
    side by side."""
    from ckptkit.verify.images import decoded_to_image
    from ckptkit.verify.onestep import decode_frames

    cfg = vae.config
    param = next(vae.parameters())
    z = latents.to(param.device, param.dtype) / (cfg.get("scaling_factor") or 1.0) + (cfg.get("shift_factor") or 0.0)
    with torch.no_grad():
        image = decode_frames(vae, z)
    return _to_uint8(decoded_to_image(image))


def visualise(latents: torch.Tensor, min_size: int = 256) -> np.ndarray:
    lat = latents[0].float().cpu()
    if lat.ndim == 4:  # a clip (C, F, H, W): its frames side by side
        from ckptkit.verify.images import video_strip

        lat = video_strip(lat)
    rgb = lat[[i % lat.shape[0] for i in range(3)]]
    lo = rgb.amin(dim=(1, 2), keepdim=True)
    hi = rgb.amax(dim=(1, 2), keepdim=True)
    rgb = (rgb - lo) / (hi - lo).clamp_min(1e-12)
    scale = max(1, -(-min_size // min(rgb.shape[1:])))
    rgb = rgb.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    return _to_uint8(rgb)


def _to_uint8(chw: torch.Tensor) -> np.ndarray:
    return (chw.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_png(pixels: np.ndarray, path: str | Path) -> Path:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    path = Path(path)
    with atomic_write(path) as fh:
        fh.write(buf.getvalue())
    return path
