"""A model is known by its structure, at any width or depth: LDM UNets of other widths, head counts,
context widths and depths, with layers, transformer blocks or the whole mid block removed (BK-SDM,
SSD-1B, Vega, KOALA style), and SD3 / FLUX / Sana transformers with other head widths, head counts,
rotary splits and depths, are their family in every input form, and go through split (3 layouts,
bit-exact), merge, the diffusers layout (computing what the fixture's own model computes, and for
the UNets the same tensors as diffusers' own converter) and a Q8_0 quantize + verify with every
check, 1-step included."""

from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file

from ckptkit import pipeline
from ckptkit.convert.layouts import get_layout
from ckptkit.convert.models import model_class
from ckptkit.convert.split import SplitOptions
from ckptkit.families.detect import detect
from ckptkit.fixtures import factory
from ckptkit.fixtures.factory import FIXTURES, Fixture
from ckptkit.formats import open_checkpoint
from ckptkit.quant.policy import Policy
from ckptkit.verify import VerifyOptions, run_verify
from tests.convert.test_interop import forward

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
    # SD3 with a third block and two 32-wide heads (SD3's are 64 wide)
    "sd3_narrow_heads": Fixture("sd3_narrow_heads", "sd3", "sd3-medium", {"diffusion_model": {
        "num_layers": 3, "attention_head_dim": 32, "num_attention_heads": 2}}),
    # FLUX.1-dev with two 64-wide heads (FLUX's are 128), its own rotary split, two double blocks and one single
    "flux_heads": Fixture("flux_heads", "flux", "dev", {"diffusion_model": {
        "guidance_embeds": True, "num_layers": 2, "num_single_layers": 1, "num_attention_heads": 2,
        "attention_head_dim": 64, "axes_dims_rope": [8, 28, 28]}}),
    # Sana cut to one block, four 56-wide self-attention heads
    "sana_pruned": Fixture("sana_pruned", "sana", "sana", {"diffusion_model": {
        "num_layers": 1, "num_attention_heads": 4, "attention_head_dim": 56}}),
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
        prefix = FIXTURES[name].spec.diffusion_model.prefix
        assert all(torch.equal(t, want[prefix + n]) for n, t in dm.items())
    pipeline.split(bundle, tmp_path / "diffusers", SplitOptions(layout="diffusers"))
    comp = FIXTURES[name].spec.diffusion_model
    cls, _ = model_class(comp.diffusers_class)
    model = cls.from_pretrained(tmp_path / "diffusers" / comp.diffusers_folder, local_files_only=True).eval()
    config = FIXTURES[name].config("diffusion_model")
    assert {k: model.config[k] for k in config} == {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    if comp.layout == "ldm_unet" and config.get("mid_block_type", "UNetMidBlock2DCrossAttn") == "UNetMidBlock2DCrossAttn":
        # independent: diffusers' own LDM converter on the original-layout weights
        ours = model.state_dict()
        theirs = get_layout("ldm_unet").to_diffusers(factory.original_state(name, "diffusion_model"), dict(model.config))
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[n], theirs[n]) for n in ours)
    # and the network computes what the fixture's own model (built by the class from its config) does
    got, want = forward(model), forward(factory.component_model(name, "diffusion_model").eval())
    assert got.keys() == want.keys()
    for key in got:
        assert torch.allclose(got[key], want[key], rtol=1e-5, atol=1e-6), key


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
    from ckptkit.convert import configs
    from ckptkit.engine import expr
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


def test_inspect_names_the_structure_it_recognised(forms):
    """SD1 and SD2 UNets share every key: the rank of proj_in (a 1x1 conv, 4-D, against a linear
    layer, 2-D) tells them apart, and the report says so; SDXL and the refiner by their levels."""
    from ckptkit.inspect import inspect_checkpoint

    for name, expected in (("sd1_pruned", "proj_in is 4-D"), ("sd2_wide", "proj_in is 2-D"),
                           ("sdxl_distilled", "2 downsamplers (2 expected)"),
                           ("refiner_narrow", "3 downsamplers (3 expected)")):
        for form in ("bundle", "component"):
            report = inspect_checkpoint(forms(name)[form])
            assert expected in report.evidence and report.confidence == 1.0, (name, form, report.evidence)
