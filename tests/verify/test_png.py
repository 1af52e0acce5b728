"""onestep.png from synthetic rows (no model): its size, its panels, its labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ckptkit.verify import images as imgs
from ckptkit.verify.images import OneStepImages, StageImage, difference_panel, onestep_png_size, save_onestep_png
from ckptkit.verify.onestep_check import judge
from ckptkit.verify.thresholds import Thresholds


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _rows(e2e_error: float = 1e-3) -> list[StageImage]:
    hidden = _randn(1, 77, 32)
    hidden[..., 5] *= 1000  # an outlier channel, as real CLIPs have
    latent = _randn(1, 4, 16, 16, seed=1)
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    return [
        StageImage("text_encoder", "clip_l", "hidden", hidden, hidden + 1e-4 * _randn(1, 77, 32, seed=3),
                   {"cosine": 0.999999, "rel_rms": 1e-6}, {"min_cosine": 0.9998}, True),
        StageImage("diffusion_model", "diffusion_model", "latent", latent, latent + 0.01 * _randn(1, 4, 16, 16, seed=4),
                   {"cosine": 0.9995, "rel_rms": 0.01}, {"min_cosine": 0.999}, True),
        StageImage("vae", "vae", "image", image, image.clone(), {"cosine": 1.0, "rel_rms": 0.0, "psnr": float("inf"),
                                                                 "ssim": 1.0}, {"min_cosine": 0.9998}, True),
        StageImage("e2e", "e2e", "image", image, (image + e2e_error * _randn(3, 32, 32, seed=5)).clamp(0, 1),
                   {"psnr": 41.2, "ssim": 0.991}, {"min_psnr": 30.0, "min_ssim": 0.95}, True),
    ]


def _save(tmp_path, images: OneStepImages, name="onestep.png") -> np.ndarray:
    path = save_onestep_png(images, tmp_path / name)
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.size == onestep_png_size(images)
        return np.asarray(im).copy()


def _panel(png: np.ndarray, images: OneStepImages, row: int, column: int) -> np.ndarray:
    """The pixels of one panel, from the layout."""
    w = imgs.panel_width(images)
    h = imgs.panel_height(images.rows[row], w)
    x, y = imgs.MARGIN + column * (w + imgs.GAP), imgs.row_tops(images)[row] + imgs.ROW_TEXT
    return png[y:y + h, x:x + w]


def _text(size: tuple[int, int], text: str, fill, font) -> np.ndarray:
    """`text` drawn as save_onestep_png draws it, at (MARGIN, 0) on a white strip."""
    strip = Image.new("RGB", size, (255, 255, 255))
    ImageDraw.Draw(strip).text((imgs.MARGIN, 0), text, fill=fill, font=font)
    return np.asarray(strip)


def test_size_rows_and_panels(tmp_path):
    images = OneStepImages(_rows(), verdict=True, title="sdxl, cpu float32, seed 0")
    png = _save(tmp_path, images)
    width = imgs.panel_width(images)
    assert width == 256  # 32 px images and 16 px latents scaled up 8x and 16x, the hidden states pooled to it
    tops = imgs.row_tops(images)
    assert len(tops) == len(images.rows) + 1  # one row per stage given, then the end
    heights = [imgs.panel_height(r, width) for r in images.rows]
    assert heights == [154, 256, 256, 256]  # 77 tokens x2; the pictures keep their aspect
    assert png.shape == (tops[-1] + imgs.MARGIN, 4 * 256 + 3 * imgs.GAP + 2 * imgs.MARGIN, 3)
    assert [t - s for s, t in zip(tops, tops[1:])] == [imgs.ROW_TEXT + h + 2 * imgs.GAP for h in heights]
    assert [p.name for p in tmp_path.iterdir()] == ["onestep.png"]  # written atomically: no temporary left
    assert images.kind == "image" and OneStepImages(_rows()[:2]).kind == "latent"


def test_large_images_are_pooled_keeping_the_largest_difference(tmp_path):
    ref = torch.full((3, 1024, 768), 0.5)
    cand = ref.clone()
    cand[1, 700, 3] += 0.01  # one value of one pixel
    images = OneStepImages([StageImage("e2e", "e2e", "image", ref, cand, {"psnr": 99.0})])
    png = _save(tmp_path, images)
    assert imgs.panel_width(images) == imgs.PANEL_MAX == 512 and imgs.panel_height(images.rows[0], 512) == 683
    diff, heat = _panel(png, images, 0, 2), _panel(png, images, 0, 3)
    assert diff.shape == (683, 512, 3)
    assert diff.max() == 255 and (diff.max(axis=2) > 0).sum() < 10  # still there after pooling, and nowhere else
    assert heat.max() > 0 and (heat.max(axis=2) > 0).sum() < 10
    assert (_panel(png, images, 0, 0) == 128).all()  # the reference: flat grey


def test_difference_panel_is_scaled_to_its_own_maximum(tmp_path):
    for row in _rows(e2e_error=1e-6):
        d = difference_panel(row)
        assert d.shape[0] == 3 and d.shape[1:] == row.reference.shape[-2:]
        if torch.equal(row.reference, row.candidate):
            assert float(d.max()) == 0.0
        else:  # however small the error (1e-6 on the e2e image), the brightest difference is white
            assert float(d.max()) == 1.0 and float(d.min()) >= 0.0
    images = OneStepImages(_rows(e2e_error=1e-6))
    png = _save(tmp_path, images)
    assert [int(_panel(png, images, i, 2).max()) for i in range(4)] == [255, 255, 0, 255]
    # the heat map is on an absolute scale: 1e-4 of the hidden states' RMS and 1e-6 on an image are black
    assert [int(_panel(png, images, i, 3).max()) > 0 for i in range(4)] == [False, True, False, False]
    images.rows[3].candidate = (images.rows[3].reference + 1e-3 * _randn(3, 32, 32, seed=5)).clamp(0, 1)
    png = _save(tmp_path, images)
    for i in (0, 1, 3):  # the heat map is another picture than the difference
        assert not np.array_equal(_panel(png, images, i, 2), _panel(png, images, i, 3))
    assert imgs.captions(images.rows[2])[2] == "|diff|: identical"
    top = float((images.rows[3].reference - images.rows[3].candidate).abs().max())
    assert imgs.captions(images.rows[3])[2] == f"|diff| x {1 / top:.3g} (max {top:.3g})"


def test_non_finite_outputs_are_white(tmp_path):
    row = _rows()[1]
    row.candidate = row.candidate.clone()
    row.candidate[0, :, 2, 3] = float("nan")  # one position, every channel
    d, heat = difference_panel(row), imgs.heat_panel(row)
    assert d[:, 2, 3].tolist() == [1.0, 1.0, 1.0] and heat[:, 2, 3].tolist() == [1.0, 1.0, 1.0]
    assert torch.isfinite(d).all() and float(d.max()) == 1.0 and float(d.flatten()[d.flatten() < 1].max()) > 0.1
    assert imgs.captions(row)[2] == "|diff|: 1 NaN/inf (white)"
    images = OneStepImages([row])
    assert _panel(_save(tmp_path, images), images, 0, 2)[2 * 16:3 * 16, 3 * 16:4 * 16].min() == 255  # 16x nearest


def test_heat_map_says_how_large_the_difference_is():
    row = _rows()[1]  # a latent, candidate = reference + 1% noise
    big = StageImage(row.stage, row.component, row.kind, row.reference, row.reference + _randn(1, 4, 16, 16, seed=9))
    small_heat, big_heat = imgs.heat_panel(row), imgs.heat_panel(big)
    # both differences fill their own scale, the heat map tells them apart: red for 1e-2, white near 1
    assert float(difference_panel(row).max()) == float(difference_panel(big).max()) == 1.0
    assert float(small_heat[2].max()) == 0.0 < float(small_heat[0].mean())  # no blue: below the yellow..white third
    assert float(big_heat.mean()) > float(small_heat.mean()) + 0.2
    assert imgs.heat_panel(_rows()[2]).max() == 0  # identical: black


def test_hidden_states_are_shown_per_channel(tmp_path):
    images = OneStepImages(_rows()[:1])
    ref = _panel(_save(tmp_path, images), images, 0, 0).astype(float)
    assert ref.std() > 40  # the outlier channel does not flatten the others into one grey
    columns = ref[:, :, 0].std(axis=0)
    assert (columns > 20).mean() > 0.9  # each channel shows its tokens' spread


def test_labels_are_rendered(tmp_path):
    images = OneStepImages(_rows(), verdict=True, title="sdxl, cpu float32, seed 0")
    png = _save(tmp_path, images, "pass.png")
    small, big = imgs.font(14), imgs.font(20)
    width = png.shape[1]
    e2e = images.rows[3]
    assert imgs.figures(e2e) == "PSNR 41.2 dB (min 30)   SSIM 0.99100 (min 0.95)"
    assert imgs.figures(images.rows[1]) == "cosine 0.999500 (min 0.999)   rel RMS 0.01"
    assert imgs.figures(images.rows[2]) == "cosine 1.000000 (min 0.9998)   rel RMS 0   PSNR inf dB   SSIM 1.00000"
    for row, y in zip(images.rows, imgs.row_tops(images)):  # each row's figures line, pixel for pixel
        line = png[y + imgs.LINE:y + 2 * imgs.LINE]
        assert np.array_equal(line, _text((width, imgs.LINE), imgs.figures(row), (0, 0, 0), small))
        assert (line < 100).any()  # dark text pixels
    y = imgs.row_tops(images)[3]
    assert np.array_equal(png[y:y + imgs.LINE, :imgs.MARGIN + 34],
                          _text((imgs.MARGIN + 34, imgs.LINE), "PASS", imgs.COLOURS[True], small))
    verdict = png[imgs.MARGIN:imgs.MARGIN + imgs.HEADER_LINE, :imgs.MARGIN + 50]  # "PASS" is 49 px wide
    assert np.array_equal(verdict, _text((imgs.MARGIN + 50, imgs.HEADER_LINE), "PASS", imgs.COLOURS[True], big))
    # a failing verify and a failing row: other words, in red
    images.verdict, e2e.passed, e2e.metrics["psnr"] = False, False, 21.5
    failed = _save(tmp_path, images, "fail.png")
    red_verdict = failed[imgs.MARGIN:imgs.MARGIN + imgs.HEADER_LINE, :imgs.MARGIN + 42]  # "FAIL": 42 px
    assert np.array_equal(red_verdict, _text((imgs.MARGIN + 42, imgs.HEADER_LINE), "FAIL", imgs.COLOURS[False], big))
    assert not np.array_equal(red_verdict, verdict[:, :imgs.MARGIN + 42])
    reds = (red_verdict[..., 0] > 150) & (red_verdict[..., 1] < 80)
    assert reds.sum() > 20 and not ((verdict[..., 0] > 150) & (verdict[..., 1] < 80)).any()
    assert np.array_equal(failed[y:y + imgs.LINE, :imgs.MARGIN + 30],
                          _text((imgs.MARGIN + 30, imgs.LINE), "FAIL", imgs.COLOURS[False], small))
    assert not np.array_equal(failed[y + imgs.LINE:y + 2 * imgs.LINE], png[y + imgs.LINE:y + 2 * imgs.LINE])
    assert imgs.figures(e2e).startswith("PSNR 21.5 dB (min 30)")


def test_without_freetype_the_bitmap_font_is_used(tmp_path, monkeypatch):
    from PIL import ImageFont

    bitmap = ImageFont.load_default_imagefont() if hasattr(ImageFont, "load_default_imagefont") else None

    def no_sizes(size=None):  # what load_default does without FreeType (or before Pillow 10.1: no size)
        if size is not None:
            raise ImportError("The _imagingft C module is not installed")
        return bitmap

    monkeypatch.setattr(ImageFont, "load_default", no_sizes)
    assert imgs.font(14) is bitmap
    images = OneStepImages(_rows(), verdict=False)
    png = _save(tmp_path, images)
    assert (png[imgs.MARGIN:imgs.MARGIN + imgs.HEADER_LINE] < 100).any()


@pytest.mark.parametrize("stage, metrics, passed", [
    ("diffusion_model", {"cosine": 0.9995, "rel_rms": 0.03}, True),
    ("diffusion_model", {"cosine": 0.9985, "rel_rms": 0.03}, False),
    ("vae", {"cosine": 0.9995, "rel_rms": 0.03, "psnr": 20.0, "ssim": 0.5}, True),  # judged as verify does: cosine
    ("e2e", {"cosine": 0.9995, "rel_rms": 0.03, "psnr": 51.0, "ssim": 0.9995}, True),
    ("e2e", {"cosine": 0.9995, "rel_rms": 0.03, "psnr": 51.0, "ssim": 0.998}, False),
    ("e2e", {"cosine": 0.9995, "rel_rms": 0.03, "psnr": float("nan"), "ssim": 0.9995}, False),
])
def test_rows_are_judged_with_the_check_s_limits(stage, metrics, passed):
    row = StageImage(stage, stage, "image" if stage in ("vae", "e2e") else "latent", torch.zeros(1), torch.zeros(1),
                     metrics)
    judge(row, Thresholds(min_cosine=0.999, min_psnr=50.0, min_ssim=0.999, max_rel_rms=0.02))
    assert row.passed is passed
    assert row.limits == ({"min_psnr": 50.0, "min_ssim": 0.999} if stage == "e2e" else {"min_cosine": 0.999})


def test_a_flat_image_is_shown_stretched_and_says_so(tmp_path):
    """A random-weight VAE decodes to an almost flat grey: shown by its own range, labelled."""
    flat = 0.5 + 0.01 * torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(7))
    row = StageImage("vae", "vae", "image", flat, flat.clone(), {"psnr": float("inf"), "ssim": 1.0},
                     {"min_psnr": 30.0, "min_ssim": 0.95}, True)
    images = OneStepImages([row], verdict=True)
    png = _save(tmp_path, images)
    ref = _panel(png, images, 0, 0)
    assert ref.min() <= 5 and ref.max() >= 250  # the full range, not a flat grey
    assert "contrast stretched to the reference's range 0.5" in imgs.describe(row)
    vivid = StageImage("vae", "vae", "image", torch.rand(3, 32, 32), torch.rand(3, 32, 32), {}, {}, None)
    assert "stretched" not in imgs.describe(vivid)
