"""A component's config and where each value came from; never guessed.

In this order:
  1. a config shipped with the input: a diffusers/transformers folder's `config.json`, or the
     `ckptkit.config` metadata ckptkit writes into every file it produces (safetensors
     `__metadata__`, a GGUF string KV): JSON {component name: config};
  2. `--config FILE|DIR` given by the user (UserConfig below);
  3. the values the shapes determine (each layout's `config_from_original` and `shape_keys`);
  4. a released config (the family spec's `config`, or one of its `released` sizes) for the values
     the shapes cannot determine (each layout's `undetermined`), and only when every value the
     shapes determine equals that released model's.
A value none of these gives is refused with one line naming it and `--config` (ConfigUndetermined),
wherever a model is built or a config written ("strict"). Reading names and shapes only (the
layout check, the numeric comparison) does not depend on those values, so it goes on with the
released ones in their place ("not strict") and says so in `sources`.

A given config agrees with the shapes or the conversion fails loudly: the model built from it is
checked tensor by tensor against the source (components.map_component).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ckptkit.errors import CkptError

METADATA_KEY = "ckptkit.config"  # JSON {component name: config} in files ckptkit writes

SHIPPED = "shipped with the input"
WEIGHTS = "the weights' shapes"
RELEASED = "released config (every size matches)"
DEFAULT = "released config (not sized by the weights)"
UNDETERMINED = "UNDETERMINED (give it with --config)"
AMBIGUOUS = "UNDETERMINED: released models of these sizes differ (give it with --config)"


class ConfigUndetermined(CkptError):
    """A value the weights cannot decide and nothing gave."""


@dataclass
class ResolvedConfig:
    values: dict
    sources: dict[str, str] = field(default_factory=dict)  # key -> one of the labels above, or "--config <path>"
    released_as: str | None = None  # which released config matched ("config", "released[0]", ...)

    @property
    def undetermined(self) -> list[str]:
        return [k for k, s in self.sources.items() if s in (UNDETERMINED, AMBIGUOUS)]


def _norm(value):
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return value


def _layout_for(comp, names: str):
    from ckptkit.convert.layouts import get_layout

    if names == "diffusers" and comp.diffusers_class.startswith("CLIPTextModel"):
        return get_layout("hf_clip")  # transformers' CLIP names are hf_clip's original names
    layout = get_layout(comp.layout)
    if names != "original" or not hasattr(layout, "config_from_original"):
        return None
    return layout


def _matches(derived: dict, released: dict, keys) -> bool:
    return all(_norm(derived[k]) == _norm(released[k]) for k in keys if k in derived and k in released)


def resolve(comp, shapes: dict[str, tuple[int, ...]], names: str, shipped: dict | None = None,
            given: dict | None = None, given_from: str = "--config", strict: bool = True,
            shipped_from: str | None = None, declared: dict | None = None,
            declared_from: str | None = None) -> ResolvedConfig:
    """The config of component `comp` (a ComponentSpec) whose tensors have `shapes` (prefix-stripped)
    in `names` ("original" | "diffusers"). `shipped`: the config that came with the input; `given`:
    the user's (--config), named `given_from` in messages."""
    from ckptkit.convert.models import check_config

    where = f"{comp.diffusers_folder or comp.name}/config.json"
    if shipped is not None:
        shipped = check_config(comp.diffusers_class, _clean(shipped), shipped_from or where)
    if given is not None:
        given = check_config(comp.diffusers_class, _clean(given), f"{given_from} ({comp.name})")
    if shipped is not None and given is not None:
        for key in sorted(set(shipped) & set(given)):
            if _norm(shipped[key]) != _norm(given[key]):
                raise CkptError(f"{comp.name}: {given_from} says {key} = {given[key]!r}, the config shipped with "
                                f"the input says {shipped[key]!r}; remove one")
    if declared:  # some values, declared by a file beside the input (an LDM yaml: ldm_yaml.py)
        for source, values in (("the config shipped with the input", shipped), (given_from, given)):
            for key in sorted(set(declared) & set(values or {})):
                if _norm(declared[key]) != _norm(values[key]):
                    raise CkptError(f"{comp.name}: {source} says {key} = {values[key]!r}, {declared_from} says "
                                    f"{declared[key]!r}; remove one")
    explicit = {**(declared or {}), **(shipped or {}), **(given or {})}
    label = {**{k: f"{SHIPPED} ({declared_from})" for k in declared or {}}, **{k: SHIPPED for k in shipped or {}},
             **{k: given_from for k in given or {}}}
    layout = _layout_for(comp, names)
    if (shipped or given) and layout is not None:
        # a config file is complete: a field it leaves out is the class default, as from_pretrained reads it
        defaults = _class_defaults(comp.diffusers_class)
        source = given_from if given is not None else SHIPPED
        for key in getattr(layout, "undetermined", {}):
            if key not in explicit and key in defaults:
                explicit[key] = defaults[key]
                label[key] = f"{source} (class default)"
    if layout is None:  # diffusers names: the config comes whole with the input or not at all
        if not explicit:
            raise ConfigUndetermined(f"{comp.name}: tensors in diffusers names come with no config ({where}); "
                                     f"give it with --config FILE")
        return ResolvedConfig(check_config(comp.diffusers_class, explicit, where), dict(label))

    undetermined = getattr(layout, "undetermined", {})
    if hasattr(layout, "determined"):  # values the shapes decide for some models only (Qwen3's heads, by its q_norm)
        decided = layout.determined(shapes)
        undetermined = {k: v for k, v in undetermined.items() if k not in decided}
    shape_keys = getattr(layout, "shape_keys", ())
    if hasattr(layout, "shape_keys_for"):  # one layout, two structures (wan_vae: Wan 2.1 flat, 2.2 nested)
        shape_keys = layout.shape_keys_for(shapes)
    candidates = [("config", dict(comp.config))] + [(f"released[{i}]", dict(c)) for i, c in enumerate(comp.released)]
    matched, derived = None, None
    first_error = None
    for tag, released in candidates:
        try:
            trial = _derive(layout, comp, shapes, {**released, **explicit})
        except CkptError as exc:
            first_error = first_error or exc
            continue
        if derived is None:
            derived = trial
        if released and _matches(trial, released, shape_keys):  # an empty config (no released model) matches nothing
            matched, derived = (tag, released), trial
            break
    # released models of these very sizes that differ in a value the weights cannot tell (Qwen-Image
    # and Qwen-Image-Edit-2511): the value is not decided by matching one of them
    ambiguous = _ambiguous(layout, comp, shapes, explicit, candidates, matched, undetermined, shape_keys)
    needed = [k for k in undetermined if k not in explicit]
    if matched is None and needed and not strict and hasattr(layout, "placeholders"):
        # names and shapes only: one-head stand-ins for what nothing gave (they do not change a shape)
        stand_in = {k: v for k, v in _derive(lambda sh, _b: layout.placeholders(sh), comp, shapes, {}).items()
                    if k not in explicit}
        derived = _derive(layout, comp, shapes, {**comp.config, **stand_in, **explicit})
    elif derived is None:  # no released config gave a consistent config
        if needed and not explicit:
            raise _undetermined(comp, needed[0], undetermined[needed[0]]) from None
        raise first_error
    base = matched[1] if matched else dict(comp.config)
    values = {**base, **derived, **explicit}
    sources: dict[str, str] = {}
    for key in values:
        if key in label:
            sources[key] = label[key]
        elif key in undetermined:
            sources[key] = AMBIGUOUS if key in ambiguous else RELEASED if matched else UNDETERMINED
        elif key in derived and (key in shape_keys or key not in base or _norm(derived[key]) != _norm(base.get(key))):
            sources[key] = WEIGHTS
        else:
            sources[key] = DEFAULT
    # an undetermined key counts only where the derived config uses it (addition_time_embed_dim: text_time UNets)
    missing = [k for k in undetermined if k in derived and sources.get(k) in (UNDETERMINED, AMBIGUOUS)]
    if strict and missing:
        raise _undetermined(comp, missing[0], ambiguous.get(missing[0], undetermined[missing[0]]))
    return ResolvedConfig(values, sources, matched[0] if matched else None)


def _ambiguous(layout, comp, shapes: dict, explicit: dict, candidates, matched, undetermined: dict,
               shape_keys) -> dict[str, str]:
    """{key: why} for the undetermined keys on which the released configs that fit these shapes disagree."""
    if matched is None:
        return {}
    out: dict[str, str] = {}
    for tag, released in candidates:
        if tag == matched[0]:
            continue
        try:
            trial = _derive(layout, comp, shapes, {**released, **explicit})
        except CkptError:
            continue
        if not _matches(trial, released, shape_keys):
            continue
        for key in undetermined:
            mine, theirs = matched[1].get(key), released.get(key)
            if key not in explicit and _norm(mine) != _norm(theirs):
                out[key] = (f"{undetermined[key]}; released models of these sizes say {mine!r} and {theirs!r}")
    return out


def _derive(layout, comp, shapes: dict, base: dict) -> dict:
    """layout.config_from_original (or any function of (shapes, base)), with a shape no real model has
    (a wrong rank, a missing dim) as one line instead of the IndexError / KeyError a layout raises."""
    fn = layout if callable(layout) and not hasattr(layout, "config_from_original") else layout.config_from_original
    try:
        return fn(shapes, base)
    except (IndexError, KeyError, ValueError, TypeError, ZeroDivisionError) as exc:
        raise CkptError(f"{comp.name}: cannot read a {comp.diffusers_class} config from these tensor shapes "
                        f"({type(exc).__name__}: {str(exc)[:120]})") from None


def _class_defaults(class_name: str) -> dict:
    from ckptkit.convert.models import _init_parameters

    return {k: p.default for k, p in _init_parameters(class_name).items()
            if p.default is not p.empty and p.default is not None}


def _undetermined(comp, key: str, why: str) -> ConfigUndetermined:
    return ConfigUndetermined(
        f"{comp.name}: {key} is not determined by the weights ({why}) and the sizes are not a released "
        f"model's; give the component's config with --config FILE (its diffusers/transformers config.json)")


def _clean(config: dict) -> dict:
    if not isinstance(config, dict):
        raise CkptError("a component config must be a JSON object")
    return {k: v for k, v in config.items() if k not in ("architectures", "transformers_version", "_name_or_path")}


# --- configs that come with files ------------------------------------------------------------------

def metadata_configs(ckpt) -> dict[str, dict]:
    """{component: config} from a file's `ckptkit.config` metadata ({} when absent). A malformed
    value is refused with one line: it claims to be ours, so it is read strictly."""
    from ckptkit.formats.files import parse_json

    text = (getattr(ckpt, "metadata", None) or {}).get(METADATA_KEY)
    if text is None:
        return {}
    data = parse_json(text, f"{getattr(ckpt, 'path', 'input')}: metadata {METADATA_KEY}")
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, dict) for k, v in data.items()):
        raise CkptError(f"{getattr(ckpt, 'path', 'input')}: metadata {METADATA_KEY} must map component names to "
                        f"config objects")
    return data


def metadata_value(configs: dict[str, dict]) -> dict[str, str]:
    """The metadata entry that ships `configs` ({component: config}) with a written file."""
    if not configs:
        return {}
    return {METADATA_KEY: json.dumps(configs, sort_keys=True, default=list, separators=(",", ":"))}


# --- --config ------------------------------------------------------------------------------------

@dataclass
class UserConfig:
    """`--config FILE|DIR`. FILE: one config.json; it applies to the component whose class its
    `_class_name` / `architectures` names, else to the diffusion model. DIR: a diffusers pipeline
    folder or any folder of `<diffusers folder>/config.json` (unet/, transformer/, text_encoder/,
    vae/...), or a single component folder with config.json."""

    path: Path
    single: dict | None = None
    folders: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> "UserConfig":
        from ckptkit.formats.files import read_json_file

        path = Path(path)
        if not path.exists():
            raise CkptError(f"--config {path}: no such file or folder")
        if path.is_dir():
            folders = {}
            for sub in sorted(path.iterdir()):
                cfg = sub / "config.json"
                if sub.is_dir() and cfg.is_file():
                    folders[sub.name] = _object(read_json_file(cfg, None, "config"), cfg)
            single = None
            if (path / "config.json").is_file():
                single = _object(read_json_file(path / "config.json", None, "config"), path / "config.json")
            if not folders and single is None:
                raise CkptError(f"--config {path}: no config.json in the folder or its sub-folders")
            return cls(path, single, folders)
        return cls(path, _object(read_json_file(path, None, "config"), path))

    def for_component(self, comp, only_component: bool = False) -> dict | None:
        """The config given for `comp`; `only_component`: the input holds this component alone."""
        if comp.diffusers_folder in self.folders:
            return self.folders[comp.diffusers_folder]
        if self.single is None:
            return None
        named = {self.single.get("_class_name"), *(self.single.get("architectures") or [])} - {None}
        if named:
            return self.single if comp.diffusers_class in named or (
                only_component and comp.diffusers_class.startswith("CLIPTextModel") and
                any(str(n).startswith("CLIPTextModel") for n in named)) else None
        return self.single if (only_component or comp.role == "diffusion_model") else None

    def describe(self, comp) -> str:
        sub = self.path / comp.diffusers_folder / "config.json"
        return f"--config {sub if comp.diffusers_folder in self.folders else self.path}"


def _object(data, path) -> dict:
    if not isinstance(data, dict):
        raise CkptError(f"--config {path}: not a JSON object")
    return data
