"""Merge planner: a component set (any layout) -> one bundled original-layout checkpoint.

The inverse of split: each component is mapped to original names and given its family's bundle
prefix. Components are found from `ckptkit.json` when present, else by file name and detection.
"""

from __future__ import annotations

from pathlib import Path

from ckptkit.convert.components import HF_NATIVE, map_component
from ckptkit.convert.configs import metadata_configs, metadata_value
from ckptkit.convert.manifest import component_file, read_manifest
from ckptkit.convert.plan import OutputFile, Plan
from ckptkit.convert.split import tensor_ops
from ckptkit.errors import CkptError
from ckptkit.families import get_family
from ckptkit.families.detect import detect
from ckptkit.formats import open_checkpoint
from ckptkit.formats.sharded import CompositeCheckpoint

WEIGHT_SUFFIXES = (".safetensors", ".gguf")


def _naming(comp, names: set[str], detected: str | None) -> str:
    if detected == "diffusers":
        return "diffusers"
    if comp.role == "text_encoder" and comp.layout not in HF_NATIVE:
        # OpenCLIP components in a comfy set are stored in transformers names
        return "diffusers" if any(n.startswith("text_model.") for n in names) else "original"
    return "original"


def open_component_set(folder: Path) -> tuple[CompositeCheckpoint, str, dict[str, tuple[str, str, dict | None]]]:
    """(composite checkpoint with tensors as `<component>/<name>`, family, {component: (prefix, naming, config)})."""
    if (folder / "model_index.json").is_file():
        ckpt = open_checkpoint(folder)
        det = detect(ckpt)
        if det.family is None:
            raise CkptError(f"{folder}: no known family in this diffusers folder")
        comps = {c: (p, "diffusers", ckpt.members[p.rstrip("/")].config) for c, p in det.components.items()}
        return ckpt, det.family, comps
    manifest = read_manifest(folder)
    files: dict[str, Path] = {}
    if manifest:
        family = manifest.get("family")
        for name, info in manifest["components"].items():
            files[name] = component_file(folder, manifest, name)
    else:
        family = None
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
        if det.family and "diffusion_model" in det.components:
            family = family or det.family
            name = "diffusion_model"
        composite.add(name, member, prefix=f"{name}/")
        # a component file ckptkit wrote ships its config in metadata (convert/configs.py)
        comps[name] = (f"{name}/", det.names, member.config or metadata_configs(member).get(name))
    if family is None:
        raise CkptError(f"{folder}: cannot tell the family (no ckptkit.json and no recognisable diffusion model file)")
    return composite, family, comps


def plan_merge(folder: Path, output_name: str) -> tuple[Plan, CompositeCheckpoint]:
    ckpt, family, comps = open_component_set(folder)
    spec = get_family(family)
    plan = Plan("merge", str(folder), [], info={"family": family, "layout": "original", "components": {}})
    tensors = []
    carried: dict[str, dict] = {}
    for comp in spec.components:
        if comp.name not in comps:
            continue
        prefix, naming, config = comps[comp.name]
        naming = _naming(comp, {n[len(prefix):] for n in ckpt.tensors if n.startswith(prefix)}, naming)
        cmap = map_component(ckpt, comp, prefix, naming, "original", config=config)
        plan.dropped.update(cmap.dropped)
        if config is not None or cmap.config is not None:
            carried[comp.name] = cmap.config or config
        ops = {comp.prefix + n: e for n, e in cmap.ops.items()}
        tensors += tensor_ops(ckpt, ops, None, False, plan.notes, comp.name)
        plan.info["components"][comp.name] = {"role": comp.role, "file": output_name, "naming": "original"}
    unknown = sorted(set(comps) - {c.name for c in spec.components})
    if unknown:
        raise CkptError(f"{folder}: {', '.join(unknown)} are not components of {family}")
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise CkptError(f"{folder}: components overlap (the same tensor name twice)")
    plan.outputs.append(OutputFile(output_name, None, "original", tensors,
                                   metadata={"ckptkit.family": family, "ckptkit.merged_from": str(folder),
                                             **metadata_value(carried)}))
    return plan, ckpt
