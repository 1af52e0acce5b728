"""Open what `verify` is given (a bundle, one component file, a component-set folder with
ckptkit.json, or a diffusers folder) as components, keeping each file's read errors instead of
stopping at the first, so integrity can report them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ckptkit.convert.components import HF_NATIVE, shipped_config
from ckptkit.engine.manifest import component_file, read_manifest
from ckptkit.errors import CkptError
from ckptkit.families import BY_NAME
from ckptkit.families.detect import Detection, detect
from ckptkit.families.spec import ComponentSpec
from ckptkit.formats import Checkpoint, open_checkpoint

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".ckpt", ".pt", ".pth", ".bin")


@dataclass
class Component:
    name: str
    spec: ComponentSpec | None
    file: Path
    ckpt: Checkpoint | None = None  # None when the file could not be read
    prefix: str = ""
    names: str = "original"  # "original" | "diffusers"
    config: dict | None = None
    exclude: frozenset[str] = frozenset()  # junk/EMA names in a bundle
    error: str | None = None  # why the file could not be read
    manifest: dict | None = None  # this component's manifest entry


@dataclass
class ComponentSet:
    path: Path
    family: str | None
    variant: str | None
    components: dict[str, Component] = field(default_factory=dict)
    manifest: dict | None = None

    def close(self) -> None:
        seen = set()
        for comp in self.components.values():
            if comp.ckpt is not None and id(comp.ckpt) not in seen:
                seen.add(id(comp.ckpt))
                comp.ckpt.close()


def _spec_for(family: str | None, name: str, det: Detection | None) -> ComponentSpec | None:
    if family in BY_NAME:
        spec = BY_NAME[family]
        if any(c.name == name for c in spec.components):
            return spec.component(name)
    if det is not None and det.standalone:
        from ckptkit.convert.components import component_spec

        return component_spec(det)
    return None


def _naming(spec: ComponentSpec | None, ckpt: Checkpoint, det: Detection) -> str:
    if det.names == "diffusers":
        return "diffusers"
    if spec is not None and spec.role == "text_encoder" and spec.layout not in HF_NATIVE:
        return "diffusers" if any(n.startswith("text_model.") for n in ckpt.tensors) else "original"
    return "original"


def _from_checkpoint(path: Path, ckpt: Checkpoint, family: str | None = None) -> ComponentSet:
    det = detect(ckpt, family)
    # a standalone component read with --family: checked as that family's component
    cset = ComponentSet(path, det.family or (family if det.standalone else None), det.variant)
    exclude = frozenset(det.junk + det.ema + det.unclaimed)
    for name, prefix in det.components.items():
        spec = _spec_for(cset.family, name, det)
        config = shipped_config(ckpt, det.names, prefix)
        cset.components[name] = Component(name, spec, path, ckpt, prefix, _naming(spec, ckpt, det), config, exclude)
    if not cset.components:  # a model no spec knows: one generic component, checked tensor by tensor
        from ckptkit.families.components import generic_component

        cset.components["model"] = Component("model", generic_component(), path, ckpt)
    return cset


def open_set(path: str | Path, family: str | None = None) -> ComponentSet:
    """Raises CkptError only when nothing at all can be read (or `family`, `--family`, is not in
    it); per-file failures are recorded."""
    path = Path(path)
    if not path.exists():
        raise CkptError(f"{path}: no such file or directory")
    if path.is_dir() and not (path / "model_index.json").exists() and not (path / "config.json").exists():
        return _open_folder(path, family)
    try:
        ckpt = open_checkpoint(path)
    except CkptError as exc:
        if path.is_dir():
            raise
        # A single unreadable file: integrity fails, nothing else can be checked.
        cset = ComponentSet(path, None, None)
        cset.components["file"] = Component("file", None, path, error=str(exc))
        return cset
    return _from_checkpoint(path, ckpt, family)


def _open_folder(folder: Path, family: str | None = None) -> ComponentSet:
    manifest = read_manifest(folder)
    if manifest:
        files = {name: component_file(folder, manifest, name) for name in manifest["components"]}
    else:
        files = {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in WEIGHT_SUFFIXES}
    if not files:
        raise CkptError(f"{folder}: no component files and no ckptkit.json")
    cset = ComponentSet(folder, family or (manifest.get("family") if manifest else None),
                        manifest.get("variant") if manifest else None, manifest=manifest)
    opened: dict[str, tuple[Checkpoint, Detection]] = {}
    for name, file in files.items():
        entry = manifest["components"].get(name) if manifest else None
        try:
            ckpt = open_checkpoint(file)
        except CkptError as exc:
            cset.components[name] = Component(name, None, file, error=str(exc), manifest=entry)
            continue
        det = detect(ckpt)
        if family and det.family != family and not det.standalone:
            det = detect(ckpt, family)  # --family: a file detection alone does not place
        if det.family and "diffusion_model" in det.components and not (manifest or family):
            cset.family, cset.variant, name = det.family, det.variant, "diffusion_model"
        opened[name] = (ckpt, det)
        # a file holding one component under its bundle prefix (model.diffusion_model.*) is read under it
        cset.components[name] = Component(name, None, file, ckpt, det.lone_prefix, manifest=entry)
    for name, (ckpt, det) in opened.items():
        comp = cset.components[name]
        comp.spec = _spec_for(cset.family, name, det)
        comp.names = _naming(comp.spec, ckpt, det)
        comp.config = ckpt.config
    for name, comp in cset.components.items():
        if comp.spec is None and comp.error is None:
            comp.spec = _spec_for(cset.family, name, None)
    return cset
