"""Detection on every fixture in every input form, and on the real layouts of the manifests."""

import pytest

from ckptkit.families.detect import detect
from ckptkit.fixtures.factory import FIXTURES, diffusers_state, write_all_forms
from ckptkit.formats import open_checkpoint
from ckptkit.formats.base import Checkpoint, TensorInfo
from tests.conftest import load_manifest


class ShapesOnly(Checkpoint):
    """A checkpoint of names and shapes only (no data), for detection tests at real sizes."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        super().__init__(paths=[], format="meta")
        self.tensors = {n: TensorInfo(n, tuple(s), "F16", 0) for n, s in shapes.items()}


def manifest_checkpoint(name: str) -> ShapesOnly:
    m = load_manifest(name)
    shapes = {}
    for comp in m["components"].values():
        for key, (shape, _dtype) in comp["tensors"].items():
            shapes[comp["prefix"] + key] = tuple(shape)
    return ShapesOnly(shapes)


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    root = tmp_path_factory.mktemp("fixtures")
    return {name: write_all_forms(name, root / name) for name in FIXTURES}


@pytest.mark.parametrize("form", ["bundle", "component", "diffusers", "gguf"])
@pytest.mark.parametrize("fixture", list(FIXTURES))
def test_every_fixture_in_every_form(forms, fixture, form):
    fx = FIXTURES[fixture]
    with open_checkpoint(forms[fixture][form]) as ckpt:
        det = detect(ckpt)
    assert (det.family, det.variant) == (fx.family, fx.variant)
    expected_form = {"bundle": "bundle", "component": "component", "diffusers": "diffusers", "gguf": "component"}[form]
    if form == "bundle" and not fx.spec.diffusion_model.prefix:
        expected_form = "component"  # Sana ships the transformer alone, with no prefix
    assert det.form == expected_form
    if form == "diffusers" or det.form == "bundle":
        assert set(det.components) == {c.name for c in fx.components}
        assert det.missing == []
        assert det.unclaimed == []
    else:
        assert set(det.components) == {"diffusion_model"}


def test_bundle_junk_and_ema_are_separated(forms):
    with open_checkpoint(forms["sd1"]["bundle"]) as ckpt:
        det = detect(ckpt)
    assert {"betas", "alphas_cumprod", "alphas_cumprod_prev", "model_ema.decay", "model_ema.num_updates"} <= set(det.junk)
    dm = [n for n in ckpt.tensors if n.startswith("model.diffusion_model.")]
    assert len(det.ema) == len(dm)
    assert det.confidence == 1.0


@pytest.mark.parametrize("manifest, family, variant, components", [
    ("sd15", "sd1", "base", {"diffusion_model", "clip_l", "vae"}),
    ("sd21", "sd2", "base", {"diffusion_model", "clip_h", "vae"}),
    ("sdxl_base", "sdxl", "base", {"diffusion_model", "clip_l", "clip_g", "vae"}),
    ("sd3_medium", "sd3", "sd3-medium", {"diffusion_model", "clip_l", "clip_g", "t5xxl", "vae"}),
    ("sd35_large", "sd3", "sd3.5-large", {"diffusion_model", "vae"}),
    ("sd35_medium", "sd3", "sd3.5-medium", {"diffusion_model", "vae"}),
    ("flux1_dev", "flux", "dev", {"diffusion_model"}),
    ("flux1_schnell", "flux", "schnell", {"diffusion_model"}),
    ("sana_1600m", "sana", "sana", {"diffusion_model"}),
])
def test_real_layouts_from_manifests(manifest, family, variant, components):
    det = detect(manifest_checkpoint(manifest))
    assert (det.family, det.variant) == (family, variant)
    assert set(det.components) == components
    assert det.unclaimed == []


@pytest.mark.parametrize("manifest, component", [("clip_l", "clip_l"), ("t5xxl", "t5xxl"), ("ae", "vae")])
def test_standalone_components(manifest, component):
    det = detect(manifest_checkpoint(manifest))
    assert det.family is None
    assert det.standalone is not None
    assert list(det.components) == [component]


def test_unknown_file_is_unknown_never_sd1():
    det = detect(ShapesOnly({"foo.weight": (4, 4), "bar.bias": (4,)}))
    assert det.family is None and det.standalone is None and det.form == "unknown"
    assert det.confidence == 0.0


def test_pixart_is_not_sana():
    import diffusers

    model = diffusers.PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
        cross_attention_dim=16, caption_channels=24, sample_size=8, norm_type="ada_norm_single",
        use_additional_conditions=False)
    det = detect(ShapesOnly({k: tuple(v.shape) for k, v in model.state_dict().items()}))
    assert det.family == "pixart"
    # the original PixArt layout: same cross_attn/y_embedder names as Sana, but a plain MLP
    original = {"blocks.0.mlp.fc1.weight": (64, 16), "blocks.0.cross_attn.kv_linear.weight": (32, 16),
                "y_embedder.y_proj.fc1.weight": (16, 24), "x_embedder.proj.weight": (16, 4, 2, 2)}
    assert detect(ShapesOnly(original)).family == "pixart"


def test_transformers5_flat_clip_is_named():
    sd = diffusers_state("sd1", "clip_l")
    flat = {k.removeprefix("text_model."): tuple(v.shape) for k, v in sd.items()}
    det = detect(ShapesOnly(flat))
    assert list(det.components) == ["clip_l"]
