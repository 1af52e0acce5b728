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
    psnr: float | None = None  # images only: dB on [0, 1] images (inf when identical); video: the worst frame's
    ssim: float | None = None  # images only; video: the worst frame's
    frames: list[dict] | None = None  # video only: {"psnr", "ssim"} of each frame

    def to_json(self) -> dict:
        out = {k: json_float(v) for k, v in self.__dict__.items() if v is not None and k != "frames"}
        if self.frames is not None:
            out["frames"] = [{k: json_float(v) for k, v in f.items()} for f in self.frames]
        return out


def json_float(value):
    """Floats for strict JSON: inf / nan become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def compare(ref: torch.Tensor, cand: torch.Tensor, image: bool = False, frames: int = 0) -> Comparison:
    """Error figures of `cand` against `ref` (same shape), in float64. `image`: both are images in
    [0, 1] of shape (C, H, W) or (B, C, H, W); PSNR and SSIM are added. `frames`: the images are
    strips of that many video frames side by side (video_strip): PSNR and SSIM frame by frame, the
    worst frame's as the figure."""
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
    if image and frames:
        per = [{"psnr": psnr(a, b), "ssim": ssim(a, b)}
               for a, b in zip(r.chunk(frames, dim=-1), c.chunk(frames, dim=-1))]
        out.frames = per
        out.psnr, out.ssim = min(f["psnr"] for f in per), min(f["ssim"] for f in per)
    elif image:
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


# ---------------------------------------------------------------- onestep.png
# One row per stage of the 1-step check, four panels per row: reference | candidate | |ref - cand|
# scaled to its own maximum (where it differs) | a heat map of |ref - cand| relative to the
# reference, log scale (how much). Above the panels: the stage, its figures with their limits and
# PASS/FAIL; above the rows, the whole verify's verdict.
@dataclass
class StageImage:
    """One row of onestep.png: one stage's output on both sides."""

    stage: str  # "text_encoder" | "diffusion_model" | "vae" | "e2e"
    component: str  # e.g. "clip_l", "diffusion_model", "vae", "e2e"
    kind: str  # "hidden": (B, T, D) hidden states | "latent": (B, C, h, w) | "image": (3, H, W) in [0, 1]
    reference: torch.Tensor
    candidate: torch.Tensor
    metrics: dict = field(default_factory=dict)  # "cosine", "rel_rms" (tensors) / "psnr", "ssim" (images)
    limits: dict = field(default_factory=dict)  # "min_cosine", "max_rel_rms" / "min_psnr", "min_ssim"
    passed: bool | None = None  # the row's figures against its limits (None: not judged)


@dataclass
class OneStepImages:
    """The rows of onestep.png, in stage order."""

    rows: list[StageImage]
    verdict: bool | None = None  # the whole verify's PASS/FAIL (None: not judged)
    title: str = ""  # e.g. "sdxl, cpu float32, seed 0"

    @property
    def kind(self) -> str:
        """The report's one word for the rows: "image" when one is a decoded image, else "latent"."""
        return "image" if any(r.kind == "image" for r in self.rows) else "latent"


def decoded_to_image(decoded: torch.Tensor) -> torch.Tensor:
    """A VAE's output in [-1, 1] -> (3, H, W) in [0, 1], as the pipelines' image processor does; a
    video (B, 3, F, H, W) -> its frames side by side (video_strip)."""
    image = (decoded[0].float().cpu() / 2 + 0.5).clamp(0, 1)
    return video_strip(image) if image.ndim == 4 else image


def video_strip(video: torch.Tensor) -> torch.Tensor:
    """(..., C, F, H, W) -> (..., C, H, F * W): the frames left to right, the form the report shows and
    `compare(..., frames=F)` reads frame by frame (a batch of latents too)."""
    *lead, c, f, h, w = video.shape
    return video.transpose(-3, -2).reshape(*lead, c, h, f * w)


HIDDEN_SIGMAS = 2.5  # hidden states: each channel's reference mean +- 2.5 sd -> black..white
HEAT_DECADES = 4  # heat map: |diff| / the reference's RMS, log, from 1e-4 (black) to 1 (white)


def _grid(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The tensor as (C, rows, columns) float64: an image as is, a latent's first batch item, hidden
    states (1, T, D) as one channel of T token rows by D feature columns."""
    t = t.detach().double().cpu()
    return t if kind == "image" else t[0] if kind == "latent" else t[0][None]


def _display(row: StageImage) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference and candidate as (3, h, w) in [0, 1], both mapped by the reference's scale so that
    what differs in the pictures differs in the tensors."""
    r, c = _grid(row.reference, row.kind), _grid(row.candidate, row.kind)
    if row.kind == "image":
        lo, span = _stretch(r)
        return ((r - lo) / span).clamp(0, 1), ((c - lo) / span).clamp(0, 1)
    if row.kind == "latent":  # the first 3 channels as RGB, each by the reference's range
        r, c = r.repeat(3, 1, 1)[:3], c.repeat(3, 1, 1)[:3]  # (a latent of 1 or 2 channels repeats them)
        lo, hi = r.amin((1, 2), keepdim=True), r.amax((1, 2), keepdim=True)
        scale = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        r, c = (r - lo) / scale, (c - lo) / scale
    else:  # hidden: per channel (column), because a few channels are orders of magnitude larger
        dims = 1 if r.shape[1] > 1 else (1, 2)  # a pooled output (one token): one scale for all
        mean, sd = r.mean(dims, keepdim=True), r.std(dims, keepdim=True, correction=0)
        sd = torch.where(sd > 0, sd, torch.ones_like(sd))
        r, c = [0.5 + (t - mean) / (2 * HIDDEN_SIGMAS * sd) for t in (r, c)]
    return r.clamp(0, 1).expand(3, -1, -1), c.clamp(0, 1).expand(3, -1, -1)


LOW_CONTRAST = 0.25  # an image whose values span less than this is shown stretched to its range


def _stretch(ref: torch.Tensor) -> tuple[float, float]:
    """(offset, span) that show an image: (0, 1) as it is, or the reference's own range when it is
    low in contrast (an untrained or random-weight VAE decodes to an almost flat grey, which shows
    nothing); the candidate is mapped the same way, and the label says so."""
    finite = ref[torch.isfinite(ref)]
    if not finite.numel():
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi - lo) if 0 < hi - lo < LOW_CONTRAST else (0.0, 1.0)


def _magnitude(row: StageImage) -> torch.Tensor:
    """|reference - candidate| per position (rows, columns): the largest over an image's colours,
    the RMS over a latent's channels (all of them, not only the 3 shown); inf where not finite."""
    d = _grid(row.reference, row.kind) - _grid(row.candidate, row.kind)
    d = d.abs().amax(0) if row.kind == "image" else d.pow(2).mean(0).sqrt()
    return d.nan_to_num(nan=math.inf)


def _difference(row: StageImage) -> torch.Tensor:
    """|reference - candidate| as (3, h, w): per colour for images, the magnitude in grey otherwise;
    inf where not finite."""
    if row.kind == "image":
        return (_grid(row.reference, "image") - _grid(row.candidate, "image")).abs().nan_to_num(nan=math.inf)
    return _magnitude(row).expand(3, -1, -1)


def _finite_max(d: torch.Tensor) -> float:
    finite = d[torch.isfinite(d)]
    return float(finite.max()) if finite.numel() else 0.0


def difference_panel(row: StageImage) -> torch.Tensor:
    """|reference - candidate| / its (finite) maximum, (3, h, w) in [0, 1]: all zero when the two are
    equal, else the brightest value is 1; white where the difference is not finite (NaN/inf)."""
    d = _difference(row)
    top = _finite_max(d)
    scaled = d / top if top > 0 else torch.zeros_like(d)
    return torch.where(torch.isfinite(d), scaled, torch.ones_like(d))


def heat_panel(row: StageImage) -> torch.Tensor:
    """How large the difference is, not where it is largest: the magnitude relative to the
    reference's RMS (images: to their range 1), log10 from 10^-HEAT_DECADES (black) to 1 (white)
    through red and yellow; (3, h, w) in [0, 1]. A quantized model's error is red to yellow, a broken
    one's white."""
    scale = 1.0 if row.kind == "image" else float(_grid(row.reference, row.kind).pow(2).mean().sqrt())
    rel = (_magnitude(row) / (scale if 0 < scale < math.inf else 1.0)).clamp_min(1e-300)
    t = (1 + torch.log10(rel) / HEAT_DECADES).clamp(0, 1)
    return torch.stack([(3 * t).clamp(0, 1), (3 * t - 1).clamp(0, 1), (3 * t - 2).clamp(0, 1)])


# layout, in pixels
PANEL_MIN, PANEL_MAX = 256, 512  # panel width: smaller scaled up (nearest), larger pooled down
TOKENS_MIN, TOKENS_MAX = 128, 256  # the same for the height of a hidden-states panel (tokens)
MARGIN, GAP = 10, 8  # around the image; between panels
LINE, HEADER_LINE = 20, 28  # text line heights (14 px and 20 px fonts)
HEADER = MARGIN + HEADER_LINE + LINE + GAP  # verdict line, column legend
ROW_TEXT = 3 * LINE  # stage and verdict, figures, column captions


def _fit(n: int, lo: int, hi: int) -> int:
    return n * math.ceil(lo / n) if n < lo else min(n, hi)


def panel_width(images: OneStepImages) -> int:
    """The width of every panel: the widest picture's (image or latent; hidden states' channels only
    when there is nothing else), in whole multiples up to at least PANEL_MIN, at most PANEL_MAX."""
    widths = ([r.reference.shape[-1] for r in images.rows if r.kind != "hidden"]
              or [r.reference.shape[-1] for r in images.rows] or [PANEL_MIN])
    return _fit(max(widths), PANEL_MIN, PANEL_MAX)


def panel_height(row: StageImage, width: int) -> int:
    """A row's panel height: a picture keeps its aspect, hidden states get TOKENS_MIN..MAX."""
    h, w = row.reference.shape[-2:]
    return _fit(h, TOKENS_MIN, TOKENS_MAX) if row.kind == "hidden" else max(1, round(h * width / w))


def row_tops(images: OneStepImages) -> list[int]:
    """The y of each row's first text line, and last, the y where the rows end."""
    tops, width = [HEADER], panel_width(images)
    for row in images.rows:
        tops.append(tops[-1] + ROW_TEXT + panel_height(row, width) + 2 * GAP)
    return tops


def onestep_png_size(images: OneStepImages) -> tuple[int, int]:
    """(width, height) of onestep.png: 4 panels side by side, the rows under the header."""
    return 4 * panel_width(images) + 3 * GAP + 2 * MARGIN, row_tops(images)[-1] + MARGIN


def font(size: int = 14):
    """Pillow's bundled scalable font at `size` px (Pillow >= 10.1 with FreeType), else its bitmap one."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _fmt(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else str(value)


def figures(row: StageImage) -> str:
    """The row's figures with their limits, e.g. "PSNR 41.2 dB (min 30)   SSIM 0.99100 (min 0.95)"."""
    m, lim = row.metrics, row.limits
    parts = []
    for key, name, spec, unit, bound in (("cosine", "cosine", ".6f", "", "min_cosine"),
                                         ("rel_rms", "rel RMS", ".3g", "", "max_rel_rms"),
                                         ("psnr", "PSNR", ".1f", " dB", "min_psnr"),
                                         ("ssim", "SSIM", ".5f", "", "min_ssim")):
        if key in m:
            limit = f" ({bound[:3]} {lim[bound]:g})" if bound in lim else ""
            parts.append(f"{name} {_fmt(float(m[key]), spec)}{unit}{limit}")
    return "   ".join(parts)


def verdict_text(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[passed]


def describe(row: StageImage) -> str:
    """What a row shows, e.g. "text encoder clip_l: hidden states, 77 tokens x 768 channels"."""
    *_, h, w = row.reference.shape
    if row.kind == "hidden":  # a pooled output is shown as one token, all channels on one scale
        what = f"pooled output, {w} channels" if h == 1 else f"hidden states, {h} tokens x {w} channels"
        return (f"text encoder {row.component}: {what} ({'each channel' if h > 1 else 'scaled'} by the reference's "
                f"mean +- {HIDDEN_SIGMAS:g} sd)")
    if row.kind == "latent":
        return (f"{row.stage.replace('_', ' ')} {row.component}: 1-step latent x0, {row.reference.shape[-3]} x {h} x "
                f"{w} (channels 1-3 as RGB by the reference's range)")
    what = {"vae": f"VAE {row.component}: both decoders on the reference's latent",
            "e2e": "end to end: all-reference chain vs all-candidate chain"}
    lo, span = _stretch(_grid(row.reference, "image"))
    stretched = f", contrast stretched to the reference's range {lo:.3g}..{lo + span:.3g}" if span != 1.0 else ""
    return f"{what.get(row.stage, row.stage + ' ' + row.component)}, {h} x {w} px{stretched}"


def captions(row: StageImage) -> list[str]:
    """The four column captions; the difference's says its scale, e.g. "|diff| x 812 (max 0.00123)"."""
    d = _difference(row)
    top, bad = _finite_max(d), int((~torch.isfinite(d)).any(0).sum())  # positions
    diff = (f"|diff|: {bad} NaN/inf (white)" if bad else f"|diff| x {1 / top:.3g} (max {top:.3g})" if top > 0
            else "|diff|: identical")
    return ["reference", "candidate", diff,
            f"heat: |diff|{'' if row.kind == 'image' else ' / ref RMS'}, log 1e-{HEAT_DECADES}..1"]


COLOURS = {True: (0, 130, 0), False: (210, 0, 0), None: (110, 110, 110)}


def _to_pil(img: torch.Tensor, size: tuple[int, int], pool: str):
    """(3, h, w) in [0, 1] -> a PIL image of `size` (w, h): pooled (avg or max) where smaller,
    then scaled up nearest."""
    import torch.nn.functional as F
    from PIL import Image

    w, h = size
    t = img.float().nan_to_num(0.0)[None]  # a NaN output shows black
    if t.shape[-2] > h or t.shape[-1] > w:
        down = (min(h, t.shape[-2]), min(w, t.shape[-1]))
        t = F.adaptive_max_pool2d(t, down) if pool == "max" else F.adaptive_avg_pool2d(t, down)
    t = F.interpolate(t, size=(h, w), mode="nearest-exact")[0]
    arr = (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(arr, "RGB")


def save_onestep_png(images: OneStepImages, path: str | Path) -> Path:
    """Write onestep.png (see the section comment above) atomically."""
    from PIL import Image, ImageDraw

    from ckptkit.formats.atomic import atomic_write

    canvas = Image.new("RGB", onestep_png_size(images), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    small, big = font(14), font(20)

    def label(x, y, text, fill=(0, 0, 0), f=small):  # returns the x after the text
        draw.text((x, y), text, fill=fill, font=f)
        return x + draw.textlength(text, font=f)

    x = label(MARGIN, MARGIN, verdict_text(images.verdict), COLOURS[images.verdict], big)
    label(x + GAP, MARGIN, "verify (all checks); 1-step check" + (f": {images.title}" if images.title else ""), f=big)
    label(MARGIN, MARGIN + HEADER_LINE, "columns: reference | candidate | |reference - candidate| scaled to its own "
                                        f"max | |difference| / reference RMS, log: black 1e-{HEAT_DECADES}, red, "
                                        "yellow, white 1")
    pw = panel_width(images)
    for row, y in zip(images.rows, row_tops(images)):
        x = label(MARGIN, y, verdict_text(row.passed), COLOURS[row.passed])
        label(x + GAP, y, describe(row))
        label(MARGIN, y + LINE, figures(row))
        ph = panel_height(row, pw)
        panels = (*_display(row), difference_panel(row), heat_panel(row))
        for i, (img, caption, pool) in enumerate(zip(panels, captions(row), ("avg", "avg", "max", "max"))):
            px = MARGIN + i * (pw + GAP)
            label(px, y + 2 * LINE, caption)
            canvas.paste(_to_pil(img, (pw, ph), pool), (px, y + ROW_TEXT))
    path = Path(path)
    with atomic_write(path) as fh:
        canvas.save(fh, format="PNG")
    return path
