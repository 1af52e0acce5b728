"""A build recipe (`ckptkit build RECIPE.toml`): the sources, the variants made of each, how each
variant is verified, and where the sets go. Paths in a recipe are relative to the recipe's folder.

    out = "dist"                        # output folder (default: "build")
    license = "openrail++"              # for the model cards (default: from the source's metadata)
    sources = ["sd_xl_turbo.safetensors"]   # files or folders; or, with options:
    [[source]]
    path = "model.safetensors"
    name = "sdxl-turbo"                 # the folder the source's sets go in (default: the file's stem)
    family = "sdxl"                     # --family (default: detected)
    config = "config.json"              # --config (values the weights cannot decide)

    [[variant]]
    name = "Q4_K_M"                     # the variant's folder
    to = "gguf"                         # gguf (default) | comfy | bnb | quanto
    type = "q4_k_m"                     # the diffusion model's type (--type)
    client = "comfy"                    # GGUF client profile (--client)
    components = { clip_l = "q8_0" }    # --component NAME=TYPE
    layout = "diffusers"                # --layout of the safetensors backends
    imatrix = "ones"                    # --imatrix
    force_vae = false
    [[variant.rule]]                    # --rule PATTERN=TYPE
    pattern = "time_embed"
    type = "f16"
    [variant.thresholds.Q4_K]           # per-variant thresholds, over [verify.thresholds]
    min_psnr = 28

    [verify]
    onestep = true                      # the 1-step check (default true)
    device = "auto"
    dtype = "fp32"
    resolution = 64
    seed = 0
    [verify.thresholds.default]         # as `verify --thresholds FILE`: [default] or a type
    min_cosine = 0.99

A variant's recipe entry (with the verify settings) is part of what decides whether an existing
set is still current (build/plan.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ckptkit.errors import CkptError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")  # a folder name, never a path
BACKENDS = ("gguf", "comfy", "bnb", "quanto")


@dataclass(frozen=True)
class Source:
    path: Path  # resolved against the recipe's folder
    name: str  # the folder of its sets under `out`
    label: str  # the path as the recipe wrote it (recorded in manifests: the same wherever `out` is)
    family: str | None = None
    config: str | None = None


@dataclass(frozen=True)
class Variant:
    name: str
    to: str = "gguf"
    type: str | None = None
    client: str | None = None
    components: dict = field(default_factory=dict)
    rules: tuple = ()  # (pattern, type) pairs
    layout: str | None = None
    imatrix: str | None = None
    force_vae: bool = False
    thresholds: dict = field(default_factory=dict)

    def policy(self):
        from ckptkit.quant.policy import Policy

        return Policy(diffusion_model=self.type, components=dict(self.components), rules=list(self.rules),
                      force_vae=self.force_vae, client=self.client, imatrix=self.imatrix, backend=self.to,
                      layout=self.layout)

    def entry(self) -> dict:
        """The recipe entry as data (JSON-ready, canonical key order)."""
        return {"name": self.name, "to": self.to, "type": self.type, "client": self.client,
                "components": dict(sorted(self.components.items())), "rules": [list(r) for r in self.rules],
                "layout": self.layout, "imatrix": self.imatrix, "force_vae": self.force_vae,
                "thresholds": self.thresholds}


@dataclass(frozen=True)
class VerifySettings:
    onestep: bool = True
    device: str = "auto"
    dtype: str = "fp32"
    resolution: int | None = None
    seed: int = 0
    thresholds: dict = field(default_factory=dict)

    def for_variant(self, variant: Variant) -> dict:
        """The verify options of one variant, as data: recipe-wide thresholds, the variant's over them."""
        merged = {k: dict(v) for k, v in self.thresholds.items()}
        for section, values in variant.thresholds.items():
            merged[section] = {**merged.get(section, {}), **values}
        return {"onestep": self.onestep, "device": self.device, "dtype": self.dtype, "resolution": self.resolution,
                "seed": self.seed, "thresholds": merged}


@dataclass(frozen=True)
class Recipe:
    path: Path
    out: Path
    sources: tuple[Source, ...]
    variants: tuple[Variant, ...]
    verify: VerifySettings
    license: str | None = None

    def fingerprint_of(self, variant: Variant) -> str:
        """The recipe's part in a variant's fingerprint: its entry and its verify settings."""
        return json.dumps({"variant": variant.entry(), "verify": self.verify.for_variant(variant)}, sort_keys=True)


def _schema():
    from ckptkit.formats.schema import Bool, Int, List, Map, Num, Obj, Str

    thresholds = Map(Map(Num()))
    source = Obj({"path": Str(), "name": Str(), "family": Str(), "config": Str()}, required=("path",), closed=True)
    variant = Obj({"name": Str(), "to": Str(), "type": Str(), "client": Str(), "components": Map(Str()),
                   "rule": List(Obj({"pattern": Str(), "type": Str()}, required=("pattern", "type"), closed=True)),
                   "layout": Str(), "imatrix": Str(), "force_vae": Bool(), "thresholds": thresholds},
                  required=("name",), closed=True)
    verify = Obj({"onestep": Bool(), "device": Str(), "dtype": Str(), "resolution": Int(8, 4096), "seed": Int(0),
                  "thresholds": thresholds}, closed=True)
    return Obj({"out": Str(), "license": Str(), "sources": List(Str()), "source": List(source),
                "variant": List(variant, min_len=1), "verify": verify},
               required=("variant",), closed=True)


def _name(value: str, what: str, where: Path) -> str:
    if not NAME.match(value):
        raise CkptError(f"{where}: {what} {value!r} is not a folder name (letters, digits, . _ + -; at most 64)")
    return value


def load_recipe(path: str | Path) -> Recipe:
    """The recipe at `path`, checked field by field; a mistake is one line naming the field."""
    from ckptkit.cli_options import DTYPE_SPELLINGS
    from ckptkit.formats.files import read_toml_file
    from ckptkit.verify.thresholds import check_overrides

    path = Path(path)
    data = read_toml_file(path, _schema(), "build recipe")
    root = path.resolve().parent
    sources = [{"path": p} for p in data.get("sources", [])] + list(data.get("source", []))
    if not sources:
        raise CkptError(f"{path}: no sources: give sources = [...] or [[source]] path = ...")
    built: list[Source] = []
    for s in sources:
        resolved = (root / s["path"]).resolve()
        if not resolved.exists():
            raise CkptError(f"{path}: source {s['path']!r} does not exist ({resolved})")
        name = _name(s.get("name") or resolved.name.split(".")[0], "source name", path)
        built.append(Source(resolved, name, s["path"], s.get("family"), s.get("config")))
    for kind, names in (("source", [s.name for s in built]),
                        ("variant", [v["name"] for v in data["variant"]])):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise CkptError(f"{path}: {kind} names repeat: {', '.join(dup)} (each needs its own folder)")
    variants = []
    for v in data["variant"]:
        to = v.get("to", "gguf")
        if to not in BACKENDS:
            raise CkptError(f"{path}: variant {v['name']!r}: to = {to!r}; use one of {', '.join(BACKENDS)}")
        if not v.get("type") and not v.get("components"):
            raise CkptError(f"{path}: variant {v['name']!r} quantizes nothing: give type = ... or components")
        variants.append(Variant(_name(v["name"], "variant name", path), to, v.get("type"), v.get("client"),
                                dict(v.get("components", {})), tuple((r["pattern"], r["type"]) for r in v.get("rule", [])),
                                v.get("layout"), v.get("imatrix"), bool(v.get("force_vae", False)),
                                check_overrides(v.get("thresholds", {}), f"{path}: variant {v['name']!r} thresholds")))
    ver = data.get("verify", {})
    dtype = next((short for short, names in DTYPE_SPELLINGS.items()
                  if short != "keep" and str(ver.get("dtype", "fp32")).lower() in names), None)
    if dtype is None:
        raise CkptError(f"{path}: [verify] dtype = {ver['dtype']!r}; use fp32, fp16 or bf16")
    if ver.get("device", "auto") not in ("auto", "cpu", "cuda"):
        raise CkptError(f"{path}: [verify] device = {ver['device']!r}; use auto, cpu or cuda")
    verify = VerifySettings(ver.get("onestep", True), ver.get("device", "auto"), dtype, ver.get("resolution"),
                            ver.get("seed", 0),
                            check_overrides(ver.get("thresholds", {}), f"{path}: [verify.thresholds]"))
    out = (root / data.get("out", "build")).resolve()
    for s in built:
        if out == s.path or out in s.path.parents or (s.path.is_dir() and s.path in out.parents):
            raise CkptError(f"{path}: out {out} and source {s.path} overlap")
    return Recipe(path.resolve(), out, tuple(built), tuple(variants), verify, data.get("license"))
