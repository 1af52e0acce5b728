"""Error figures for the 1-step check (relative RMS, cosine, max abs; PSNR and SSIM for images)
and the `onestep.png` report image.

SSIM is the Wang et al. (2004) index, computed here in torch: an 11x11 Gaussian window with
sigma 1.5 (shrunk to the largest odd size that fits an image smaller than 11 pixels), constants
C1 = (0.01 L)^2 and C2 = (0.03 L)^2 with data range L = 1 (images in [0, 1]), local statistics by
'valid' filtering (no padding), computed per colour channel in float64 and averaged over every
position and channel. PSNR is 10 log10(L^2 / MSE), inf for identical images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


@dataclass
class Comparison:
    """Candidate vs reference for one output tensor."""

    rel_rms: float  # ||c - r|| / ||r||
    cosine: float  # <c, r> / (||c|| ||r||), 1.0 for identical tensors
    max_abs: float  # max |c - r|
    shape: list[int] = field(default_factory=list)
    psnr: float | None = None  # images only: dB on [0, 1] images (inf when identical)
    ssim: float | None = None  # images only

    def to_json(self) -> dict:
        return {k: json_float(v) for k, v in self.__dict__.items() if v is not None}


def json_float(value):
    """Floats for strict JSON: inf / nan become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def compare(ref: torch.Tensor, cand: torch.Tensor, image: bool = False) -> Comparison:
    """Error figures of `cand` against `ref` (same shape), in float64. `image`: both are images in
    [0, 1] of shape (C, H, W) or (B, C, H, W); PSNR and SSIM are added."""
    if tuple(ref.shape) != tuple(cand.shape):
        raise ValueError(f"shapes differ: {list(ref.shape)} vs {list(cand.shape)}")
    r, c = ref.detach().double().cpu(), cand.detach().double().cpu()
    shape = list(r.shape)
    if torch.equal(r, c):
        out = Comparison(0.0, 1.0, 0.0, shape)
    else:
        rf, cf = r.reshape(-1), c.reshape(-1)
        diff = cf - rf
        rn, cn = float(rf.norm()), float(cf.norm())
        rel = float(diff.norm()) / rn if rn else math.inf
        cos = float(torch.dot(rf, cf)) / (rn * cn) if rn and cn else 0.0
        if not math.isnan(cos):  # min/max would turn NaN (non-finite outputs) into 1.0
            cos = max(-1.0, min(1.0, cos))
        out = Comparison(rel, cos, float(diff.abs().max()), shape)
    if image:
        out.psnr, out.ssim = psnr(r, c), ssim(r, c)
    return out


def psnr(ref: torch.Tensor, cand: torch.Tensor, data_range: float = 1.0) -> float:
    mse = float(((ref.double() - cand.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(data_range ** 2 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(ref: torch.Tensor, cand: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean SSIM of two images (C, H, W) or (B, C, H, W) with values in [0, data_range]."""
    import torch.nn.functional as F

    x, y = ref.double(), cand.double()
    if x.ndim == 3:
        x, y = x[None], y[None]
    b, ch, h, w = x.shape
    size = min(SSIM_WINDOW, h, w)
    size -= 1 - size % 2  # odd
    win = gaussian_window(size).expand(ch, 1, size, size).contiguous()

    def filt(t):
        return F.conv2d(t, win, groups=ch)

    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x ** 2
    syy = filt(y * y) - mu_y ** 2
    sxy = filt(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return float(s.mean())


# ---------------------------------------------------------------- images for the report
@dataclass
class OneStepImages:
    """The report images, (3, H, W) float tensors in [0, 1]."""

    reference: torch.Tensor
    candidate: torch.Tensor
    kind: str = "image"  # "image" (decoded) | "latent" (a preview of 3 latent channels, no VAE)
    amplify: float = 10.0

    @property
    def difference(self) -> torch.Tensor:
        """|reference - candidate| * amplify, clipped to [0, 1]."""
        return ((self.reference - self.candidate).abs() * self.amplify).clamp(0, 1)


def decoded_to_image(decoded: torch.Tensor) -> torch.Tensor:
    """A VAE's output in [-1, 1] -> (3, H, W) in [0, 1], as the pipelines' image processor does."""
    return (decoded[0].float().cpu() / 2 + 0.5).clamp(0, 1)


def latent_preview(ref: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 3 channels of two latents (B, C, h, w), scaled to [0, 1] by the reference's range."""
    r, c = ref[0, :3].float().cpu(), cand[0, :3].float().cpu()
    if r.shape[0] < 3:
        r, c = r.repeat(3, 1, 1)[:3], c.repeat(3, 1, 1)[:3]
    lo, hi = float(r.min()), float(r.max())
    span = hi - lo or 1.0
    return ((r - lo) / span).clamp(0, 1), ((c - lo) / span).clamp(0, 1)


PANEL_MIN = 128  # small images are scaled up (nearest) to at least this width per panel
LABEL_HEIGHT = 16


def panel_scale(h: int, w: int) -> int:
    return max(1, math.ceil(PANEL_MIN / max(1, w)))


def onestep_png_size(h: int, w: int) -> tuple[int, int]:
    """(width, height) of onestep.png for (H, W) images: 3 panels side by side under a label strip."""
    s = panel_scale(h, w)
    return 3 * w * s, h * s + LABEL_HEIGHT


def _to_pil(img: torch.Tensor, scale: int):
    from PIL import Image

    arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    pil = Image.fromarray(arr, "RGB")
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST) if scale > 1 else pil


def save_onestep_png(images: OneStepImages, path: str | Path) -> Path:
    """Write reference | candidate | amplified difference, labelled, as a PNG (atomically)."""
    from PIL import Image, ImageDraw

    from ckptkit.formats.atomic import atomic_write

    _, h, w = images.reference.shape
    s = panel_scale(h, w)
    width, height = onestep_png_size(h, w)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    what = "" if images.kind == "image" else " latent"
    labels = (f"reference{what}", f"candidate{what}", f"|diff| x{images.amplify:g}")
    for i, (img, label) in enumerate(zip((images.reference, images.candidate, images.difference), labels)):
        canvas.paste(_to_pil(img, s), (i * w * s, LABEL_HEIGHT))
        draw.text((i * w * s + 3, 2), label, fill=(0, 0, 0))
    path = Path(path)
    with atomic_write(path) as fh:
        canvas.save(fh, format="PNG")
    return path
