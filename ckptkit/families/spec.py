"""The vocabulary of family specs: what a family is made of, and how it is recognised.

A family file is data built from these classes; detection, splitting, quantization policy and
verification read the same specs instead of branching on family names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

Lookup = Callable[[str], "tuple[int, ...] | None"]  # name -> shape, or None when absent

ROLES = ("diffusion_model", "text_encoder", "vae", "unknown")


@dataclass(frozen=True)
class Has:
    """`key` is present; optionally `shape[dim] == size` (dim=None: the whole shape equals `size`)."""

    key: str
    dim: int | None = None
    size: int | tuple | None = None

    def holds(self, lookup: Lookup) -> bool:
        shape = lookup(self.key)
        if shape is None:
            return False
        if self.size is None:
            return True
        if self.dim is None:
            return tuple(shape) == tuple(self.size)
        return len(shape) > abs(self.dim) - (self.dim < 0) and shape[self.dim] == self.size

    def describe(self, lookup: Lookup) -> str:
        if self.size is None:
            return f"has {self.key}"
        where = "shape" if self.dim is None else f"dim {self.dim}"
        return f"{self.key} {where} = {self.size}"


@dataclass(frozen=True)
class Lacks:
    key: str

    def holds(self, lookup: Lookup) -> bool:
        return lookup(self.key) is None

    def describe(self, lookup: Lookup) -> str:
        return f"no {self.key}"


@dataclass(frozen=True)
class Count:
    """The number of distinct values of group 1 of `pattern` (full match) among the names is in
    [lo, hi]: how many levels, downsamplers or blocks a network has, whatever its widths."""

    pattern: str
    lo: int
    hi: int | None = None
    what: str = ""  # what is counted, for the report ("downsamplers")

    def found(self, lookup: Lookup) -> int | None:
        import re

        names = getattr(lookup, "names", None)
        if names is None:
            return None
        rx = re.compile(self.pattern)
        return len({m.group(1) for n in names() if (m := rx.fullmatch(n))})

    def holds(self, lookup: Lookup) -> bool:
        n = self.found(lookup)
        return n is not None and self.lo <= n and (self.hi is None or n <= self.hi)

    def describe(self, lookup: Lookup) -> str:
        expected = self.lo if self.lo == self.hi else f"{self.lo}..{self.hi if self.hi is not None else ''}"
        return f"{self.found(lookup)} {self.what or self.pattern} ({expected} expected)"


@dataclass(frozen=True)
class Rank:
    """Some name full-matching `pattern` exists, and every one has `ndim` dimensions: a 1x1 conv
    (SD1's proj_in, 4-D) against a linear layer (SD2's, 2-D), whatever the widths."""

    pattern: str
    ndim: int
    what: str = ""  # the layer, for the report ("proj_in")

    def describe(self, lookup: Lookup) -> str:
        return f"{self.what or self.pattern} is {self.ndim}-D"

    def holds(self, lookup: Lookup) -> bool:
        import re

        names = getattr(lookup, "names", None)
        if names is None:
            return False
        rx = re.compile(self.pattern)
        ranks = {len(lookup(n)) for n in names() if rx.fullmatch(n)}
        return ranks == {self.ndim}


Condition = Has | Lacks | Count | Rank


@dataclass(frozen=True)
class Variant:
    name: str
    when: tuple[Condition, ...] = ()  # in original names of the diffusion model (prefix-stripped)
    when_diffusers: tuple[Condition, ...] = ()  # the same test in diffusers names
    description: str = ""
    pipeline: str = ""  # diffusers pipeline class when it differs from the family's (Sana-Sprint)
    scheduler: dict | None = None  # scheduler config when it differs from the family's


@dataclass(frozen=True)
class ComponentSpec:
    name: str  # "diffusion_model", "clip_l", "clip_g", "clip_h", "t5xxl", "vae"
    role: str  # one of ROLES
    prefix: str  # prefix in the bundled file ("" when the family ships it as a separate file)
    layout: str  # layout kind: convert/layouts/<kind>.py
    diffusers_class: str  # e.g. "UNet2DConditionModel", "CLIPTextModel"
    diffusers_folder: str  # "unet", "transformer", "text_encoder", "text_encoder_2", "vae", ...
    config: dict = field(default_factory=dict)  # the released model's diffusers/transformers config
    released: tuple[dict, ...] = ()  # other released sizes' configs (Sana 600M beside the 1600M, ...)
    alt_prefixes: tuple[str, ...] = ()  # other prefixes seen in the wild (ComfyUI repacks)
    optional: bool = False  # bundles often lack it (FLUX/Sana ship transformer-only files)
    high_precision: tuple[str, ...] = ()  # name prefixes kept out of quantization (final names)
    # the diffusers class carries a text_projection the original file has not: an identity, as diffusers'
    # single-file loader adds it (SD3's CLIP-L: StableDiffusion3Pipeline wants CLIPTextModelWithProjection)
    identity_projection: bool = False
    # numbered blocks whose first and last are raised for the _M/_L/K_S mixes (Request.edge), as
    # ComfyUI-GGUF's lcpp.patch raises Qwen-Image's transformer_blocks.0. and .59.
    edge_blocks: str = ""


@dataclass(frozen=True)
class Release:
    """A released model of a family whose real tensor names and shapes ckptkit writes down as a
    manifest (manifests/<manifest>.json, made by families/manifests.py from the diffusers class and
    `config`), with where every config value comes from."""

    manifest: str  # file stem: "qwen_image"
    models: tuple[str, ...]  # the released checkpoints with exactly this layout ("Qwen/Qwen-Image", ...)
    variant: str | None  # what detection must say for it (None: the family has no variants)
    config: dict  # the diffusion model's diffusers config
    sources: dict[str, str]  # config key (or "*" for all) -> where the value comes from
    dtype: str = "BF16"  # the released file's dtype
    description: str = ""
    published_gguf: dict = field(default_factory=dict)  # request -> "13.1 GB (where)" for published files


@dataclass(frozen=True)
class FamilySpec:
    name: str  # "sdxl"
    title: str  # "Stable Diffusion XL"
    gguf_arch: str  # general.architecture as ComfyUI-GGUF spells it
    components: tuple[ComponentSpec, ...]
    detect: tuple[Condition, ...]  # all hold on the diffusion model's original names
    detect_diffusers: tuple[Condition, ...]  # all hold on the diffusion model's diffusers names
    variants: tuple[Variant, ...] = ()  # first match wins; empty `when` matches always
    junk: tuple[str, ...] = ()  # full-name regexes of tensors to drop (DDPM buffers, ...)
    ema_prefix: str | None = None  # "model_ema." for LDM checkpoints
    pipeline: str = ""  # diffusers pipeline class for model_index.json
    scheduler: dict = field(default_factory=dict)  # diffusers scheduler config ("_class_name" included)
    pipeline_config: dict = field(default_factory=dict)  # extra model_index.json entries (pipeline __init__ args)
    notes: str = ""
    releases: tuple[Release, ...] = ()  # released models with a manifest (families/manifests.py)

    def component(self, name: str) -> ComponentSpec:
        for comp in self.components:
            if comp.name == name:
                return comp
        from ckptkit.errors import CkptError
        from ckptkit.formats.files import printable

        class UnknownComponent(CkptError, KeyError):
            def __str__(self):
                return self.args[0]

        raise UnknownComponent(f"{self.name} has no component {printable(repr(name))}")

    @property
    def diffusion_model(self) -> ComponentSpec:
        return next(c for c in self.components if c.role == "diffusion_model")
