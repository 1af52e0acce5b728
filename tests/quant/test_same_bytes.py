"""Every input form quantizes to the same bytes: a bundle, the family's diffusers folder, a comfy /
original / diffusers split of the bundle, and one component file give byte-identical files (tensor
order, types and metadata are canonical: configs in their canonical form, CLIP's position_ids
buffer never written)."""

from __future__ import annotations

import hashlib

import pytest

from ckptkit import pipeline
from ckptkit.convert.split import SplitOptions
from ckptkit.fixtures import factory
from ckptkit.quant.policy import Policy


def digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.suffix in (".gguf", ".safetensors")}


@pytest.mark.parametrize("fixture", ["sd1", "sdxl", "sd3", "flux_dev", "sana"])
def test_every_input_form_gives_the_same_bytes(tmp_path, fixture):
    forms = factory.write_all_forms(fixture, tmp_path / "forms")
    sources = {"bundle": forms["bundle"], "diffusers": forms["diffusers"]}
    for layout in ("comfy", "original", "diffusers"):
        sources[f"split-{layout}"] = pipeline.split(forms["bundle"], tmp_path / layout, SplitOptions(layout=layout)).out_dir
    text_encoders = [c.name for c in factory.FIXTURES[fixture].components if c.role == "text_encoder"]
    # the diffusion model quantized, one text encoder quantized too where its client loads it from
    # GGUF (T5), the others kept (written as plain files: their bytes must agree as well)
    policy = {"diffusion_model": "q8_0", "components": {c: "q8_0" for c in text_encoders if c == "t5xxl"}}
    got = {}
    for name, source in sources.items():
        pipeline.quantize(source, tmp_path / f"q-{name}", Policy(**policy))
        got[name] = digests(tmp_path / f"q-{name}")
    assert len(got["bundle"]) == len(factory.FIXTURES[fixture].components)
    for name, files in got.items():
        assert files == got["bundle"], name
    # one component file: the same diffusion model bytes
    single = tmp_path / "dm.gguf"
    pipeline.quantize(forms["component"], single, Policy(diffusion_model="q8_0"))
    assert hashlib.sha256(single.read_bytes()).hexdigest() == got["bundle"]["diffusion_model.gguf"]
