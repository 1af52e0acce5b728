"""A model is known by its structure, at any width or depth: LDM UNets of other widths, head counts,
context widths and depths, with layers, transformer blocks or the whole mid block removed (BK-SDM,
SSD-1B, Vega, KOALA style), are their family in every input form, and go through split (3 layouts,
bit-exact), merge, the diffusers layout (checked against diffusers' own converter) and a Q8_0
quantize + verify with every check, 1-step included."""

from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file

from ckptkit import pipeline
from ckptkit.convert.layouts import get_layout
from ckptkit.convert.split import SplitOptions
from ckptkit.families.detect import detect
from ckptkit.fixtures import factory
from ckptkit.fixtures.factory import FIXTURES, Fixture
from ckptkit.formats import open_checkpoint
from ckptkit.quant.policy import Policy
from ckptkit.verify import VerifyOptions, run_verify

CASES = {
    # SD1 with one layer per level, 3 heads of 32, no mid block (BK-SDM-Tiny), and a 96-wide CLIP of
    # two 48-wide heads as its context
    "sd1_pruned": Fixture("sd1_pruned", "sd1", "base", {
        "diffusion_model": {"block_out_channels": [96, 96], "layers_per_block": 1, "attention_head_dim": 3,
                            "cross_attention_dim": 96, "mid_block_type": None},
        "clip_l": {"hidden_size": 96, "num_attention_heads": 2, "projection_dim": 96}}),
    # SD2 at other widths and head counts
    "sd2_wide": Fixture("sd2_wide", "sd2", "base", {"diffusion_model": {
        "block_out_channels": [96, 96], "attention_head_dim": [2, 4]}}),
    # SDXL with every transformer depth cut to 1 (SSD-1B / Vega style) and other widths
    "sdxl_distilled": Fixture("sdxl_distilled", "sdxl", "base", {"diffusion_model": {
        "block_out_channels": [32, 64, 96], "transformer_layers_per_block": [1, 1, 1], "attention_head_dim": [1, 2, 3]}}),
    # the refiner at other widths, with its mid block's attention removed
    "refiner_narrow": Fixture("refiner_narrow", "sdxl_refiner", "base", {"diffusion_model": {
        "block_out_channels": [32, 64, 64, 64], "attention_head_dim": [1, 2, 2, 2], "mid_block_type": "UNetMidBlock2D"}}),
}


@pytest.fixture(autouse=True)
def cases(monkeypatch):
    for name, fixture in CASES.items():
        monkeypatch.setitem(FIXTURES, name, fixture)


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    root = tmp_path_factory.mktemp("structure")
    built = {}

    def get(name):
        if name not in built:
            FIXTURES[name] = CASES[name]
            built[name] = factory.write_all_forms(name, root / name)
            built[name]["fp32"] = factory.write_bundle(name, root / name / "fp32.safetensors", dtype=None)
        return built[name]
    return get


@pytest.mark.parametrize("name", CASES)
def test_detected_in_every_form(forms, name):
    for form, path in forms(name).items():
        with open_checkpoint(path) as ckpt:
            det = detect(ckpt)
        assert det.family == CASES[name].family, (form, det)
        assert det.confidence == 1.0 and not det.unclaimed and not det.missing, (form, det)


@pytest.mark.parametrize("name", CASES)
def test_split_layouts_merge_and_diffusers(forms, name, tmp_path):
    bundle = forms(name)["fp32"]
    want = load_file(bundle)
    for layout in ("comfy", "original"):
        pipeline.split(bundle, tmp_path / layout, SplitOptions(layout=layout))
        pipeline.merge(tmp_path / layout, tmp_path / f"{layout}.safetensors")
        merged = load_file(tmp_path / f"{layout}.safetensors")
        assert merged.keys() <= want.keys()
        assert all(torch.equal(t, want[n]) for n, t in merged.items())
        dm = load_file(tmp_path / layout / "diffusion_model.safetensors")
        assert all(torch.equal(t, want["model.diffusion_model." + n]) for n, t in dm.items())
    pipeline.split(bundle, tmp_path / "diffusers", SplitOptions(layout="diffusers"))
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tmp_path / "diffusers" / "unet", local_files_only=True).eval()
    config = FIXTURES[name].config("diffusion_model")
    assert {k: unet.config[k] for k in config} == {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    ours = {n: t for n, t in unet.state_dict().items()}
    original = factory.original_state(name, "diffusion_model")
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") == "UNetMidBlock2DCrossAttn":
        # independent: diffusers' own LDM converter on the original-layout weights
        theirs = get_layout("ldm_unet").to_diffusers(original, dict(unet.config))
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[n], theirs[n]) for n in ours)
    # and the network computes what the fixture's does
    ref = factory.component_model(name, "diffusion_model").eval()
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=gen)
    context = torch.randn(1, 5, config["cross_attention_dim"], generator=gen)
    kwargs = {}
    if config.get("addition_embed_type") == "text_time":
        pooled = config["projection_class_embeddings_input_dim"] - (6 if FIXTURES[name].family == "sdxl" else 5) * 256
        ids = 6 if FIXTURES[name].family == "sdxl" else 5
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, generator=gen),
                                       "time_ids": torch.randn(1, ids, generator=gen)}
    with torch.no_grad():
        got = unet(sample, 500, context, **kwargs).sample
        exp = ref(sample, 500, context, **kwargs).sample
    assert torch.allclose(got, exp, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_q8_0_quantize_and_verify_with_every_check(forms, name, tmp_path):
    bundle = forms(name)["fp32"]
    pipeline.quantize(bundle, tmp_path / "q8", Policy(diffusion_model="q8_0"))
    report = run_verify(tmp_path / "q8", VerifyOptions(against=str(bundle), device="cpu"))
    failed = [r for r in report.results if r.passed is False]
    assert not failed, failed
    checks = {(r.check, r.metric) for r in report.results if r.passed}
    assert ("layout", "tensors") in checks and ("numeric", "min_cosine") in checks
    assert any(c == "onestep" for c, _ in checks)


def test_inspect_names_what_differs_from_the_released_model(tmp_path):
    from ckptkit.convert import configs
    from ckptkit.inspect import inspect_checkpoint

    bare = factory.write_bundle("sdxl_distilled", tmp_path / "bare.safetensors", ship_config=False)
    report = inspect_checkpoint(bare)
    dm = next(c for c in report.components if c.name == "diffusion_model")
    assert dm.config["transformer_layers_per_block"] == {"value": 1, "source": configs.WEIGHTS}
    assert dm.config["attention_head_dim"] == {"value": None, "source": configs.UNDETERMINED}
    assert dm.not_released["transformer_layers_per_block"] == [1, [1, 2, 10]]
    assert any(p.code == "config_undetermined" and "attention_head_dim" in p.message for p in report.problems)


def test_a_model_that_only_lost_layers_is_called_pruned():
    """The released SDXL's shapes with fewer transformer blocks (SSD-1B's kind of distillation)."""
    from ckptkit.convert import configs, expr
    from ckptkit.convert.models import diffusers_shapes
    from ckptkit.families import get_family
    from ckptkit.inspect import _released_difference

    spec = get_family("sdxl").diffusion_model
    layout = get_layout(spec.layout)
    config = dict(spec.config, transformer_layers_per_block=[1, 2, 4])
    dshapes = diffusers_shapes(spec.diffusers_class, config)
    original = expr.shapes(layout.to_original(dshapes, config), dshapes)
    resolved = configs.resolve(spec, original, "original", strict=False)
    differs, note = _released_difference(spec, resolved)
    assert differs == {"transformer_layers_per_block": [[1, 2, 4], [1, 2, 10]]}
    assert note.startswith("pruned/distilled: transformer_layers_per_block")
