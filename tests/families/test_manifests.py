"""The manifests of released models (manifests/*.json, families/manifests.py): what the generator
makes, detected as their family and variant from sparse real-shape files (41 GB on paper, a few MB
on disk), their released configs read back from the shapes, and their original names checked
against what ComfyUI-GGUF's converter detects."""

from __future__ import annotations

import json

import pytest

from ckptkit.convert.layouts import get_layout
from ckptkit.families.detect import detect
from ckptkit.families.manifests import MANIFESTS, all_releases, build, text
from ckptkit.fixtures.sparse import manifest_tensors, write_sparse_safetensors
from ckptkit.formats import open_checkpoint

RELEASES = list(all_releases())
IDS = [r.manifest for _, r in RELEASES]

# ComfyUI-GGUF tools/convert.py `keys_detect` (all keys of one tuple present) of the arch each
# family's GGUF files are written as: city96/ComfyUI-GGUF@4dfc025e (branch auto_convert, the first
# with qwen_image) and @795e4515 (main).
COMFY_GGUF_KEYS_DETECT = {
    "qwen_image": [("time_text_embed.timestep_embedder.linear_2.weight", "transformer_blocks.0.attn.norm_added_q.weight",
                    "transformer_blocks.0.img_mlp.net.0.proj.weight")],
    "hidream": [("caption_projection.0.linear.weight", "double_stream_blocks.0.block.ff_i.shared_experts.w3.weight")],
    "auraflow": [("double_layers.3.modX.1.weight",)],
    "z_image": [("cap_embedder.1.weight", "context_refiner.0.attention.qkv.weight")],
    "lumina2": [("cap_embedder.1.weight", "context_refiner.0.attention.qkv.weight")],
    "chroma": [("double_blocks.0.img_attn.proj.weight",)],  # written as arch flux
    "flux2": [("double_blocks.0.img_attn.proj.weight",)],  # written as arch flux
    "wan": [("blocks.0.self_attn.norm_q.weight", "text_embedding.2.weight", "head.modulation")],  # ModelWan
    "ltxv": [("adaln_single.emb.timestep_embedder.linear_2.weight", "transformer_blocks.27.scale_shift_table",
              "caption_projection.linear_2.weight")],  # ModelLTXV
    "hunyuan_video": [("double_blocks.0.img_attn_proj.weight",
                       "txt_in.individual_token_refiner.blocks.1.self_attn_qkv.weight")],  # ModelHyVid
}


def _load(release) -> dict:
    return json.loads((MANIFESTS / f"{release.manifest}.json").read_text())


@pytest.mark.parametrize("spec,release", RELEASES, ids=IDS)
def test_manifest_is_what_the_generator_makes(spec, release):
    assert (MANIFESTS / f"{release.manifest}.json").read_text() == text(build(spec, release))


@pytest.mark.parametrize("spec,release", RELEASES, ids=IDS)
@pytest.mark.parametrize("prefix", [None, ""], ids=["bundle-prefix", "bare"])
def test_manifest_detected_from_a_sparse_real_shape_file(tmp_path, spec, release, prefix):
    manifest = _load(release)
    path = write_sparse_safetensors(tmp_path / "m.safetensors", manifest_tensors(manifest, prefix))
    assert path.stat().st_size > 10**9 and path.stat().st_blocks * 512 < 64 * 2**20  # sparse: nothing on disk
    with open_checkpoint(path) as ck:
        det = detect(ck)
    assert (det.family, det.variant) == (spec.name, release.variant)
    assert det.unclaimed == [] and det.confidence == 1.0
    assert det.components == {spec.diffusion_model.name: spec.diffusion_model.prefix if prefix is None else ""}


@pytest.mark.parametrize("spec,release", RELEASES, ids=IDS)
def test_released_config_read_back_from_the_shapes(spec, release):
    comp = spec.diffusion_model
    shapes = {k: tuple(v[0]) for k, v in _load(release)["components"][comp.name]["tensors"].items()}
    layout = get_layout(comp.layout)
    derived = layout.config_from_original(shapes, release.config)
    assert {k: derived[k] for k in layout.shape_keys} == {k: release.config[k] for k in layout.shape_keys}


@pytest.mark.parametrize("spec,release", RELEASES, ids=IDS)
def test_original_names_are_what_comfyui_gguf_detects(spec, release):
    tuples = COMFY_GGUF_KEYS_DETECT.get(spec.name)
    if tuples is None:
        pytest.skip(f"no ComfyUI-GGUF keys_detect template recorded for {spec.name}"
                    + (" (it has none for LTX-2: tests/convert/test_layout_ltx2.py checks which releases its ltxv "
                       "template takes)" if spec.name == "ltx2" else ""))
    names = set(_load(release)["components"][spec.diffusion_model.name]["tensors"])
    assert any(set(t) <= names for t in tuples)


def test_qwen_image_is_20b_and_plans_13_gb_at_q4_k_m(tmp_path):
    """The released size (20.43B parameters, 40.9 GB in BF16: qwen_image_bf16.safetensors) and the
    planned Q4_K_M file (published Qwen-Image-Edit-2511 Q4_K_M: 13.1 GB) from the sparse file."""
    from ckptkit.families import get_family
    from ckptkit.pipeline import planned_bytes, quantize
    from ckptkit.quant.policy import Policy

    manifest = json.loads((MANIFESTS / "qwen_image.json").read_text())
    assert manifest["summary"]["diffusion_model"]["params"] == 20_430_401_088
    path = write_sparse_safetensors(tmp_path / "qwen.safetensors", manifest_tensors(manifest, ""))
    run = quantize(path, tmp_path / "q.gguf", Policy("q4_k_m"), dry_run=True, scan=False)
    assert 13.05e9 < planned_bytes(run.plan) < 13.15e9, planned_bytes(run.plan)
    types = {t.name: t.dtype for t in run.plan.outputs[0].tensors}
    # ComfyUI-GGUF's lcpp.patch: the first and last block up to Q5_K, the mix's v / FFN-down to Q6_K
    assert types["transformer_blocks.0.attn.to_q.weight"] == types["transformer_blocks.59.img_mod.1.weight"] == "Q5_K"
    assert types["transformer_blocks.1.attn.to_q.weight"] == types["transformer_blocks.58.img_mod.1.weight"] == "Q4_K"
    assert types["transformer_blocks.0.attn.to_v.weight"] == types["transformer_blocks.30.img_mlp.net.2.weight"] == "Q6_K"
    assert types["img_in.weight"] == "BF16" and types["txt_norm.weight"] == "F32"
    assert not (tmp_path / "q.gguf").exists()
    assert get_family("qwen_image").gguf_arch == "qwen_image"


# diffusers' own single-file converter of each family (diffusers/loaders/single_file_utils.py,
# SINGLE_FILE_LOADABLE_CLASSES); Qwen-Image's is the identity (its files carry diffusers' names).
DIFFUSERS_CONVERTERS = {"hidream": "convert_hidream_transformer_to_diffusers", "qwen_image": None,
                        "auraflow": "convert_auraflow_transformer_checkpoint_to_diffusers",
                        "ltxv": "convert_ltx_transformer_checkpoint_to_diffusers"}


@pytest.mark.parametrize("spec,release", [(s, r) for s, r in RELEASES if s.name in DIFFUSERS_CONVERTERS],
                         ids=[r.manifest for s, r in RELEASES if s.name in DIFFUSERS_CONVERTERS])
def test_manifest_names_are_what_diffusers_single_file_converter_reads(spec, release):
    """The manifest's original names, given to diffusers' converter as meta tensors, give exactly the
    diffusers model's names and shapes (ComfyUI's `model.diffusion_model.` prefix stripped as
    diffusers' loader does)."""
    import torch
    from diffusers.loaders import single_file_utils

    from ckptkit.convert.models import diffusers_shapes

    comp = spec.diffusion_model
    tensors = _load(release)["components"][comp.name]["tensors"]
    state = {comp.prefix + k: torch.empty(v[0], device="meta") for k, v in tensors.items()}
    name = DIFFUSERS_CONVERTERS[spec.name]
    if name is None or spec.name == "auraflow":  # diffusers' AuraFlow converter reads bare names only
        state = {k.removeprefix(comp.prefix): v for k, v in state.items()}
    if name is None:
        out = state
    else:
        out = getattr(single_file_utils, name)(dict(state))
    assert {k: tuple(v.shape) for k, v in out.items()} == diffusers_shapes(comp.diffusers_class, release.config)
