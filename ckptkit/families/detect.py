"""detect(checkpoint) -> Detection: which family, variant and components a checkpoint holds.

Works on bundled files, prefix-stripped component files (and GGUF, which stores those names),
diffusers pipeline folders (`<folder>/<name>`) and single diffusers component folders. Never
guesses: a file no spec recognises is reported as unknown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ckptkit.families import FAMILIES
from ckptkit.families.components import GENERIC_COMPONENTS, SIGNATURES
from ckptkit.families.spec import FamilySpec, Has
from ckptkit.formats.base import Checkpoint


@dataclass
class Detection:
    family: str | None  # None: unknown (or a standalone component, see `standalone`)
    variant: str | None
    form: str  # "bundle" | "component" | "diffusers" | "diffusers-component" | "unknown"
    names: str  # "original" | "diffusers": which naming the tensors use
    components: dict[str, str] = field(default_factory=dict)  # component -> prefix (or "folder/") in the file
    missing: list[str] = field(default_factory=list)  # non-optional components the family has but the file lacks
    junk: list[str] = field(default_factory=list)  # DDPM buffers and the like
    ema: list[str] = field(default_factory=list)  # EMA copies of the diffusion model
    unclaimed: list[str] = field(default_factory=list)  # tensors no component or junk rule claims
    confidence: float = 0.0
    standalone: str | None = None  # description of a standalone component file
    standalone_layout: str | None = None  # its layout kind ("hf_clip", "open_clip", "ldm_vae", ...)
    standalone_class: str | None = None  # the transformers class whose names it holds (LLM text encoders)
    used_by: tuple[str, ...] = ()
    evidence: list[str] = field(default_factory=list)  # the detection conditions that held, said for people
    given: str | None = None  # "--family NAME" when the family was given, not detected
    detected_as: str | None = None  # with `given`: what detection alone finds (None: nothing)

    @property
    def spec(self) -> FamilySpec | None:
        from ckptkit.families import BY_NAME

        return BY_NAME.get(self.family) if self.family else None

    @property
    def lone_prefix(self) -> str:
        """The prefix of a file holding one component under a bundle prefix (a diffusion model saved
        as `model.diffusion_model.*`), else ""."""
        return next(iter(self.components.values())) if self.form == "bundle" and len(self.components) == 1 else ""

    def component_of(self, name: str) -> str | None:
        """Which component a tensor belongs to (longest prefix wins)."""
        best, best_len = None, -1
        for comp, prefix in self.components.items():
            if name.startswith(prefix) and len(prefix) > best_len:
                best, best_len = comp, len(prefix)
        return best


class _View:
    """The names under `prefix`, prefix stripped: `view(key)` is a shape or None, `view.names()`
    the names (for Count / Rank conditions)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], prefix: str):
        self.shapes, self.prefix = shapes, prefix

    def __call__(self, key: str):
        return self.shapes.get(self.prefix + key)

    def names(self):
        n = len(self.prefix)
        return (name[n:] for name in self.shapes if name.startswith(self.prefix))


def _lookup(shapes: dict[str, tuple[int, ...]], prefix: str) -> _View:
    return _View(shapes, prefix)


def _views(spec: FamilySpec):
    """(prefix, names) pairs a family's diffusion model may appear under."""
    dm = spec.diffusion_model
    for prefix in dict.fromkeys((dm.prefix, *dm.alt_prefixes, "")):
        yield prefix, "original"
    yield dm.diffusers_folder + "/", "diffusers"
    yield "", "diffusers"


def _variant(spec: FamilySpec, lookup, names: str) -> str | None:
    for v in spec.variants:
        conds = v.when if names == "original" else v.when_diffusers
        if all(c.holds(lookup) for c in conds):
            return v.name
    return None


def _present(shapes, prefix: str) -> bool:
    return any(n.startswith(prefix) for n in shapes)


# Component names a signature cannot tell apart by structure (a CLIP's name is its role in a family,
# not its shape): a file ckptkit wrote names its component in metadata (`ckptkit.component`).
SAME_STRUCTURE = ({"clip", "clip_l", "clip_g", "clip_h"}, {"t5", "t5xxl"}, {"umt5", "umt5xxl", "pile_t5xl"})


def _component_name(ckpt: Checkpoint, signature_name: str) -> str:
    named = (getattr(ckpt, "metadata", None) or {}).get("ckptkit.component")
    if named and any(signature_name in group and named in group for group in SAME_STRUCTURE):
        return named
    return signature_name


def _used_by(ckpt: Checkpoint, used_by: tuple[str, ...]) -> tuple[str, ...]:
    """The families a standalone component serves, the one its file says it came from first (a
    component file ckptkit split: `ckptkit.family`), so it converts to that family's class."""
    from ckptkit.families import BY_NAME

    family = (getattr(ckpt, "metadata", None) or {}).get("ckptkit.family")
    if family in BY_NAME:
        return (family, *[f for f in used_by if f != family])
    return used_by


def detect(ckpt: Checkpoint, family: str | None = None) -> Detection:
    """Which family by structure; `family` (or `ckpt.family_override`, which `--family` sets)
    overrides detection (see `_given`)."""
    shapes = {n: t.shape for n, t in ckpt.tensors.items()}
    family = family or ckpt.family_override
    if family:
        return _given(ckpt, shapes, family)
    return _detect(ckpt, shapes)


def _detect(ckpt: Checkpoint, shapes: dict) -> Detection:
    for spec in FAMILIES:
        for prefix, names in _views(spec):
            lookup = _lookup(shapes, prefix)
            conds = spec.detect if names == "original" else spec.detect_diffusers
            if all(c.holds(lookup) for c in conds):
                det = _describe(spec, shapes, prefix, names, _variant(spec, lookup, names))
                det.evidence = [c.describe(lookup) for c in conds]
                return det
    for sig in SIGNATURES:
        if all(c.holds(_lookup(shapes, "")) for c in sig.when):
            return Detection(None, None, "component", "diffusers" if sig.layout.startswith("diffusers:") else "original",
                             components={_component_name(ckpt, sig.name): ""}, confidence=1.0,
                             standalone=sig.description, used_by=_used_by(ckpt, sig.used_by),
                             standalone_layout=sig.layout.removeprefix("diffusers:"),
                             standalone_class=sig.diffusers_class or None)
    return Detection(None, None, "unknown", "original", unclaimed=list(shapes), confidence=0.0)


def _evidence(spec: FamilySpec, shapes, prefix: str, names: str) -> int:
    """How many of the family's detection keys are present under a view, whatever their sizes."""
    lookup = _lookup(shapes, prefix)
    conds = spec.detect if names == "original" else spec.detect_diffusers
    return sum(1 for c in conds if isinstance(c, Has) and lookup(c.key) is not None)


def names_of(spec: FamilySpec) -> set[str]:
    return {c.name for c in spec.components}


def _given(ckpt: Checkpoint, shapes: dict, family: str) -> Detection:
    """`--family NAME`: the file is read as that family whether or not its structure passes the
    family's detection conditions (a model pruned past them, or a structure two families share).
    Its diffusion model is looked for under every view the family has; the view holding most of the
    family's detection keys wins. A file without any of them may be a component the family uses (a
    text encoder, a VAE): it is detected as usual and the family is put first among its users.
    Nothing of the family at all is one line, never a silent unknown."""
    from ckptkit.errors import CkptError
    from ckptkit.families import get_family

    spec = get_family(family)
    alone = _detect(ckpt, shapes)
    scored = [(_evidence(spec, shapes, prefix, names), -i, prefix, names) for i, (prefix, names) in enumerate(_views(spec))]
    score, _, prefix, names = max(scored)
    if score > 0:
        lookup = _lookup(shapes, prefix)
        det = _describe(spec, shapes, prefix, names, _variant(spec, lookup, names))
        conds = spec.detect if names == "original" else spec.detect_diffusers
        det.evidence = [c.describe(lookup) + ("" if c.holds(lookup) else " - does not hold") for c in conds]
    elif alone.standalone and (family in alone.used_by or any(GENERIC_COMPONENTS.get(n, n) in names_of(spec)
                                                              for n in alone.components)):
        det = alone
        det.used_by = (family, *[f for f in alone.used_by if f != family])
    else:
        keys = [c.key for c in spec.detect if isinstance(c, Has)]
        raise CkptError(f"--family {family}: this file holds no {spec.title} diffusion model (none of its keys, e.g. "
                        f"{keys[0]!r}, under any of its prefixes) and no component {spec.title} uses")
    det.given = f"--family {family}"
    det.detected_as = alone.family or (alone.standalone and "standalone component") or None
    return det


def _describe(spec: FamilySpec, shapes, prefix: str, names: str, variant: str | None) -> Detection:
    components: dict[str, str] = {}
    if names == "diffusers":
        form = "diffusers" if prefix else "diffusers-component"
        for comp in spec.components:
            folder = comp.diffusers_folder + "/"
            if prefix and _present(shapes, folder):
                components[comp.name] = folder
        if not prefix:
            components[spec.diffusion_model.name] = ""
    elif not prefix:
        form = "component"
        components[spec.diffusion_model.name] = ""
    else:
        form = "bundle"
        for comp in spec.components:
            found = [p for p in (comp.prefix, *comp.alt_prefixes) if p and _present(shapes, p)]
            if comp.role == "diffusion_model":
                components[comp.name] = prefix
            elif found:
                components[comp.name] = found[0]
    if form in ("bundle", "diffusers"):
        missing = [c.name for c in spec.components if c.name not in components and not c.optional]
    else:
        missing = []
    det = Detection(spec.name, variant, form, names, components=components, missing=missing)
    junk_re = re.compile("|".join(f"(?:{j})" for j in spec.junk)) if spec.junk else None
    for name in shapes:
        if det.component_of(name) is not None and (not junk_re or not junk_re.fullmatch(name)):
            continue
        if spec.ema_prefix and name.startswith(spec.ema_prefix) and name not in ("model_ema.decay", "model_ema.num_updates"):
            det.ema.append(name)
        elif junk_re and junk_re.fullmatch(name):
            det.junk.append(name)
        else:
            det.unclaimed.append(name)
    claimed = len(shapes) - len(det.unclaimed)
    det.confidence = round(claimed / max(1, len(shapes)) * (1.0 if not missing else 0.75), 3)
    return det
