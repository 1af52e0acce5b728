"""Reading a set of component files as one source (merge and quantize of a folder)."""

from __future__ import annotations

from pathlib import Path

from ckptkit.convert.components import HF_NATIVE
from ckptkit.convert.configs import metadata_configs
from ckptkit.engine.manifest import component_file, read_manifest
from ckptkit.errors import CkptError
from ckptkit.families.detect import detect
from ckptkit.formats import open_checkpoint
from ckptkit.formats.sharded import CompositeCheckpoint

WEIGHT_SUFFIXES = (".safetensors", ".gguf")


def stored_naming(comp, names: set[str], detected: str | None) -> str:
    if detected == "diffusers":
        return "diffusers"
    if comp.role == "text_encoder" and comp.layout not in HF_NATIVE:
        # OpenCLIP components in a comfy set are stored in transformers names
        return "diffusers" if any(n.startswith("text_model.") for n in names) else "original"
    return "original"


def open_component_set(folder: Path, family_given: str | None = None) -> tuple[CompositeCheckpoint, str, dict[str, tuple[str, str, dict | None]]]:
    """A folder of component files as one source: a diffusers pipeline folder, a set ckptkit wrote
    (its ckptkit.json), or loose component files. (composite checkpoint with tensors as `<component>/<name>`, family, {component: (prefix, naming, config)})."""
    if (folder / "model_index.json").is_file():
        ckpt = open_checkpoint(folder)
        det = detect(ckpt, family_given)
        if det.family is None:
            raise CkptError(f"{folder}: no known family in this diffusers folder")
        comps = {c: (p, "diffusers", ckpt.members[p.rstrip("/")].config) for c, p in det.components.items()}
        return ckpt, det.family, comps
    manifest = read_manifest(folder)
    files: dict[str, Path] = {}
    if manifest:
        family = family_given or manifest.get("family")
        for name, info in manifest["components"].items():
            files[name] = component_file(folder, manifest, name)
    else:
        family = family_given
        for path in sorted(folder.iterdir()):
            if path.suffix in WEIGHT_SUFFIXES and path.is_file():
                files[path.stem] = path
    if not files:
        raise CkptError(f"{folder}: no component files (and no {'ckptkit.json'})")
    composite = CompositeCheckpoint([folder], "component-set")
    comps = {}
    for name, path in files.items():
        member = open_checkpoint(path)
        det = detect(member)
        if family_given and det.family != family_given and not det.standalone:
            det = detect(member, family_given)  # --family: a file detection alone does not place
        if det.family and "diffusion_model" in det.components:
            family = family or det.family
            name = "diffusion_model"
        composite.add(name, member, prefix=f"{name}/")
        # a file holding one component under its bundle prefix (model.diffusion_model.*) is read under it
        # a component file ckptkit wrote ships its config in metadata (convert/configs.py)
        comps[name] = (f"{name}/{det.lone_prefix}", det.names, member.config or metadata_configs(member).get(name))
    if family is None:
        raise CkptError(f"{folder}: cannot tell the family (no ckptkit.json and no recognisable diffusion model file)")
    return composite, family, comps
