"""Open what `verify` is given (a bundle, one component file, a component-set folder with
ckptkit.json, or a diffusers folder) as components, keeping each file's read errors instead of
stopping at the first, so integrity can report them."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ckptkit.convert.components import HF_NATIVE, shipped_config
from ckptkit.engine.manifest import MANIFEST, read_manifest
from ckptkit.errors import CkptError
from ckptkit.families import BY_NAME
from ckptkit.families.detect import Detection, detect
from ckptkit.families.spec import ComponentSpec
from ckptkit.formats import Checkpoint, open_checkpoint
from ckptkit.formats.scaled import dequantizing
from ckptkit.errors import printable

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
class ManifestRow:
    """One finding about the manifest itself (integrity rows "manifest", "manifest_sha256",
    "unlisted_file", "file")."""

    metric: str
    value: object
    threshold: object
    passed: bool | None
    detail: str = ""


@dataclass
class ComponentSet:
    path: Path
    family: str | None
    variant: str | None
    components: dict[str, Component] = field(default_factory=dict)
    manifest: dict | None = None
    folder: bool = False  # a component-set folder (not a file, not a diffusers folder)
    manifest_rows: list[ManifestRow] = field(default_factory=list)

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


DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "model.safetensors")


def _open_values(path) -> Checkpoint:
    """A file read as values: a scaled fp8 file as weight x scale (formats/scaled.py); a
    quantization scheme this reader does not know makes it unreadable (CkptError)."""
    path = Path(path)
    if path.name in DIFFUSERS_WEIGHTS and (path.parent / "config.json").is_file():
        path = path.parent  # a diffusers component folder: its config.json says what the weights cannot
    ckpt = open_checkpoint(path)
    try:
        return dequantizing(ckpt)
    except BaseException:
        ckpt.close()
        raise


def open_set(path: str | Path, family: str | None = None, expect_manifest: str | None = None) -> ComponentSet:
    """Raises CkptError only when nothing at all can be read (or `family`, `--family`, is not in
    it); per-file failures are recorded. expect_manifest: the sha256 the folder's ckptkit.json must
    have, or a manifest file to read instead of it (see `_pinned_manifest`)."""
    path = Path(path)
    if not path.exists():
        raise CkptError(f"{path}: no such file or directory")
    if path.is_dir() and not (path / "model_index.json").exists() and not (path / "config.json").exists():
        return _open_folder(path, family, expect_manifest)
    if expect_manifest is not None:
        raise CkptError(f"--expect-manifest: {path} is not a component-set folder (no ckptkit.json to pin)")
    try:
        ckpt = _open_values(path)
    except CkptError as exc:
        if path.is_dir():
            raise
        # A single unreadable file: integrity fails, nothing else can be checked.
        cset = ComponentSet(path, None, None)
        cset.components["file"] = Component("file", None, path, error=str(exc))
        return cset
    return _from_checkpoint(path, ckpt, family)


SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


def _pinned_manifest(folder: Path, expect: str | None, rows: list[ManifestRow]) -> Path | None:
    """Which manifest to trust, with the rows that say why. `expect` a sha256: the folder's
    ckptkit.json must hash to it; `expect` a file: that file is the manifest, and a ckptkit.json in
    the folder must be byte-identical to it. None: the folder's own (unpinned) manifest."""
    own = folder / MANIFEST
    if expect is None:
        return own
    if SHA256_HEX.fullmatch(expect):
        if not own.is_file():
            rows.append(ManifestRow("manifest_sha256", None, expect.lower()[:16], False, f"no {MANIFEST} in {folder}"))
            return None
        actual = hashlib.sha256(own.read_bytes()).hexdigest()
        ok = actual == expect.lower()
        rows.append(ManifestRow("manifest_sha256", actual[:16], expect.lower()[:16], ok,
                                "" if ok else f"{MANIFEST} is not the pinned manifest (edited or replaced)"))
        return own if ok else None
    pinned = Path(expect)
    if not pinned.is_file():
        raise CkptError(f"--expect-manifest {expect}: neither a sha256 (64 hex digits) nor a file")
    if own.is_file() and own.read_bytes() != pinned.read_bytes():
        rows.append(ManifestRow("manifest_sha256", hashlib.sha256(own.read_bytes()).hexdigest()[:16],
                                hashlib.sha256(pinned.read_bytes()).hexdigest()[:16], False,
                                f"{MANIFEST} differs from {pinned}"))
    else:
        rows.append(ManifestRow("manifest_sha256", hashlib.sha256(pinned.read_bytes()).hexdigest()[:16], None, True,
                                f"manifest read from {pinned}"))
    return pinned


def _manifest_files(folder: Path, manifest: dict, rows: list[ManifestRow]) -> dict[str, Path | str]:
    """Each listed component's file, or why it cannot be opened (a name that leaves the folder)."""
    from ckptkit.formats.files import inside

    files: dict[str, Path | str] = {}
    for name, info in manifest["components"].items():
        try:
            files[name] = inside(folder, info["file"], MANIFEST, f"component {name!r}: file")
        except CkptError as exc:
            rows.append(ManifestRow("file", printable(info["file"])[:80], "inside the folder", False, str(exc)))
            files[name] = str(exc)
    return files


def _open_folder(folder: Path, family: str | None = None, expect_manifest: str | None = None) -> ComponentSet:
    rows: list[ManifestRow] = []
    manifest = None
    where = _pinned_manifest(folder, expect_manifest, rows)
    if where is not None:
        try:
            manifest = read_manifest(folder, where, check_files=False)
        except CkptError as exc:
            rows.append(ManifestRow("manifest", None, None, False, f"unreadable: {exc}"))
    if manifest is None and not rows:
        # a folder of component files with nothing saying what they are meant to be (hashes, types)
        rows.append(ManifestRow("manifest", None, None, False, f"no {MANIFEST}: nothing pins the files' hashes "
                                "or the requested types (write sets with split/quantize; a bare folder is not a "
                                "verifiable set)"))
    elif manifest is not None:
        rows.append(ManifestRow("manifest", len(manifest["components"]), None, True,
                                f"{len(manifest['components'])} components listed"))
    files = _manifest_files(folder, manifest, rows) if manifest else {}
    listed = {os.path.realpath(p) for p in files.values() if isinstance(p, Path)}  # never raises (link loops)
    on_disk = {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in WEIGHT_SUFFIXES}
    if manifest:  # a weight file the manifest does not list is either a leftover or a hidden component
        unlisted = sorted(p.name for p in on_disk.values() if os.path.realpath(p) not in listed)
        if unlisted:
            rows.append(ManifestRow("unlisted_file", len(unlisted), 0, False,
                                    f"{', '.join(printable(n) for n in unlisted[:3])}"
                                    f"{' ...' if len(unlisted) > 3 else ''} in the folder but not in {MANIFEST}"))
    else:
        files = dict(on_disk)
    if not files:
        raise CkptError(f"{folder}: no component files and no ckptkit.json")
    cset = ComponentSet(folder, family or (manifest.get("family") if manifest else None),
                        manifest.get("variant") if manifest else None, manifest=manifest, folder=True,
                        manifest_rows=rows)
    opened: dict[str, tuple[Checkpoint, Detection]] = {}
    for name, file in files.items():
        entry = manifest["components"].get(name) if manifest else None
        if isinstance(file, str):  # refused name: recorded above, unreadable here
            cset.components[name] = Component(name, None, folder, error=file, manifest=entry)
            continue
        try:
            ckpt = _open_values(file)
        except CkptError as exc:
            cset.components[name] = Component(name, None, file, error=str(exc), manifest=entry)
            continue
        det = detect(ckpt)
        if family and det.family != family and not det.standalone:
            det = detect(ckpt, family)  # --family: a file detection alone does not place
        if det.family and "diffusion_model" in det.components and not (manifest or family):
            cset.family, cset.variant, name = det.family, det.variant, "diffusion_model"
        elif det.family and "diffusion_model" in det.components and cset.family is None:
            cset.family, cset.variant = det.family, det.variant  # a manifest without a family: the weights say
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


def expected_components(cset: ComponentSet, ref: "ComponentSet | None" = None) -> dict[str, str]:
    """The components a set must hold, each with where the demand comes from: the family's
    non-optional components (detected from the weights or --family) for a component-set folder or
    a bundle, and with --against every component of the reference. Never the manifest: an edited
    manifest that lists fewer components must not shrink what is checked. A single component file
    is its own whole (its reference component is compared; the others are not demanded)."""
    single = not cset.folder and len(cset.components) == 1
    need: dict[str, str] = {}
    if cset.family in BY_NAME and not single:
        for comp in BY_NAME[cset.family].components:
            if not comp.optional:
                need[comp.name] = f"the {cset.family} family"
    if ref is not None and not single:
        for name in ref.components:
            need.setdefault(name, "the reference")
    return need
