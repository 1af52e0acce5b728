"""Manifests of released models: the real tensor names, shapes and dtypes of a family's released
diffusion model, in the format of the shared manifests (../shared/manifests/README.md), made
from public model definitions without downloading a weight:

  diffusers class + the released config (every value cited in `source.config_sources`)
    -> state-dict names and shapes on the meta device
    -> our layout map to the original (ComfyUI / official release) names.

`python -m ckptkit.families.manifests [--check] [OUT_DIR]` writes (or, with --check, compares)
manifests/<name>.json for every `Release` of every family spec. The tests check that the
committed files are what this makes, that each is detected as its family and variant from a
sparse real-shape file, and that the names pass diffusers' own single-file converter where one exists.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ckptkit.families.spec import FamilySpec, Release

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8}


def original_shapes(spec: FamilySpec, release: Release) -> dict[str, tuple[int, ...]]:
    """The released diffusion model's original-layout names and shapes (no bundle prefix)."""
    from ckptkit.convert.layouts import get_layout
    from ckptkit.convert.models import diffusers_shapes
    from ckptkit.engine import expr

    comp = spec.diffusion_model
    dshapes = diffusers_shapes(comp.diffusers_class, release.config)
    mapping = get_layout(comp.layout).to_original(dshapes, release.config)
    return expr.shapes(mapping, dshapes)


def build(spec: FamilySpec, release: Release) -> dict:
    import diffusers

    comp = spec.diffusion_model
    shapes = original_shapes(spec, release)
    tensors = {name: [list(shape), release.dtype] for name, shape in sorted(shapes.items())}
    params = sum(_numel(s) for s in shapes.values())
    missing = sorted(set(release.config) - set(release.sources) - {"_class_name"}) if "*" not in release.sources else []
    if missing:
        raise ValueError(f"{release.manifest}: config values without a source: {', '.join(missing)}")
    return {
        "format": release.manifest,
        "description": release.description or f"{spec.title} diffusion model, original layout, keys without prefix",
        "source": {
            "code": f"diffusers=={diffusers.__version__}: {comp.diffusers_class}(**config) on the meta device, "
                    f"state_dict names mapped to the original layout by ckptkit's `{comp.layout}` layout map",
            "models": list(release.models),
            "config": release.config,
            "config_sources": release.sources,
            "family": spec.name,
            "variant": release.variant,
            "gguf_arch": spec.gguf_arch,
        },
        "dtype_basis": f"{release.dtype}: the released files' dtype (see the family spec)",
        "components": {
            comp.name: {
                "prefix": comp.prefix,
                "reference": comp.diffusers_class,
                "tensor_count": len(tensors),
                "param_count": params,
                "tensors": tensors,
            }
        },
        "summary": {comp.name: {"prefix": comp.prefix, "tensors": len(tensors), "params": params,
                                "bytes": sum(_numel(s) * BYTES[release.dtype] for s in shapes.values())}},
        **({"published_gguf": release.published_gguf} if release.published_gguf else {}),
    }


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def all_releases():
    from ckptkit.families import FAMILIES

    for spec in FAMILIES:
        for release in spec.releases:
            yield spec, release


def text(manifest: dict) -> str:
    """JSON as the shared manifests write it: one line per tensor."""
    import re

    out = json.dumps(manifest, indent=1)
    # [\n  [\n   3072,\n   64\n  ],\n  "BF16"\n ] -> [[3072, 64], "BF16"]
    return re.sub(r"\[\s*\[([\d,\s]*)\],\s*(\"\w+\")\s*\]",
                  lambda m: "[[" + ", ".join(m.group(1).split()).replace(",,", ",") + "], " + m.group(2) + "]",
                  out) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    out = Path(args[0]) if args else MANIFESTS
    stale = []
    for spec, release in all_releases():
        path = out / f"{release.manifest}.json"
        want = text(build(spec, release))
        if check:
            if not path.is_file() or path.read_text() != want:
                stale.append(path.name)
        else:
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(want)
            print(f"wrote {path}")
    if stale:
        print(f"stale manifests (rerun python -m ckptkit.families.manifests): {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
