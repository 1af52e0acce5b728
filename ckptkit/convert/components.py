"""Map one component between namings: its tensors under a prefix of a source checkpoint, in
original or diffusers names, to the names of a target layout, as streamable expressions.

Original -> diffusers runs our hand-written diffusers -> original map backwards (`expr.invert`)
on a meta model built from the config the source shapes imply, so the same map serves both
directions and every conversion is checked against the model class's own state dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ckptkit.engine import expr
from ckptkit.engine.expr import Expr
from ckptkit.convert import ldm_yaml
from ckptkit.convert.layouts import get_layout
from ckptkit.convert.models import diffusers_shapes, instantiate, model_class
from ckptkit.errors import CkptError
from ckptkit.families.components import GENERIC_COMPONENTS
from ckptkit.families.spec import ComponentSpec
from ckptkit.formats.base import Checkpoint

if TYPE_CHECKING:
    from ckptkit.families.detect import Detection


# Text encoders whose original names already are transformers' names.
HF_NATIVE = frozenset({"hf_clip", "hf_t5", "hf_llm"})
# ... and those whose names are kept whatever the target naming (LLM text encoders: the prefix their
# text tower sits under depends on who saved them, never converted)
ONE_NAMING = frozenset({"hf_llm"})


@dataclass
class ComponentMap:
    ops: dict[str, Expr]  # target name (no prefix) -> Expr over full source names
    config: dict | None  # the component's diffusers/transformers config
    dropped: dict[str, str] = field(default_factory=dict)  # full source name -> reason


def shipped_config(ckpt: Checkpoint, names: str, prefix: str) -> dict | None:
    """The config.json a diffusers source ships for the component under `prefix` (`<folder>/` in a
    pipeline folder, "" for a single component folder); None for original names, whose config is
    derived from the shapes instead."""
    if names != "diffusers":
        return None
    if not prefix:
        return ckpt.config
    member = getattr(ckpt, "members", {}).get(prefix.rstrip("/"))
    return member.config if member is not None else None  # diffusers names in one file: no config shipped


def local_shapes(ckpt: Checkpoint, prefix: str, exclude: set[str]) -> dict[str, tuple[int, ...]]:
    return {n[len(prefix):]: info.shape for n, info in ckpt.tensors.items()
            if n.startswith(prefix) and n not in exclude}


def _identity(shapes, prefix: str) -> dict[str, Expr]:
    return {n: expr.src(prefix + n) for n in shapes}


def resolve_component_config(comp: ComponentSpec, shapes: dict, names: str, shipped: dict | None,
                             ckpt: Checkpoint | None = None, strict: bool = True):
    """The component's config with the source of every value (convert/configs.py): `shipped` (a
    diffusers folder's config.json), else the `ckptkit.config` metadata of `ckpt`; `--config` (the
    UserConfig attached to `ckpt`); the shapes; a released config where every size matches."""
    from ckptkit.convert.configs import METADATA_KEY, metadata_configs, resolve

    shipped_from = None
    if shipped is None and ckpt is not None:
        shipped = metadata_configs(ckpt).get(comp.name)
        shipped_from = f"{ckpt.path}: metadata {METADATA_KEY} of {comp.name}"
    user = getattr(ckpt, "user_config", None) if ckpt is not None else None
    given = given_from = None
    if user is not None:
        given = user.for_component(comp, only_component=_single_component(ckpt))
        given_from = user.describe(comp)
    declared, declared_from = ldm_yaml.declared_values(ckpt, comp) if ckpt is not None else ({}, None)
    return resolve(comp, shapes, names, shipped, given, given_from or "--config", strict, shipped_from,
                   declared, declared_from)


def _single_component(ckpt) -> bool:
    """Does the input hold one component alone (a component file, not a bundle or pipeline)?
    Asked once per component config; the answer is kept on the checkpoint (per --family)."""
    from ckptkit.families.detect import detect

    kept = getattr(ckpt, "_single_component", None)
    if kept is None or kept[0] != ckpt.family_override:
        kept = (ckpt.family_override, len(detect(ckpt).components) <= 1)
        ckpt._single_component = kept
    return kept[1]


def source_config(comp: ComponentSpec, shapes: dict, names: str, given: dict | None,
                  ckpt: Checkpoint | None = None, strict: bool = True) -> dict:
    """The component's config values (see resolve_component_config); `given`: the config shipped
    with a diffusers source."""
    return resolve_component_config(comp, shapes, names, given, ckpt, strict).values


def config_to_carry(ckpt: Checkpoint, comp: ComponentSpec, prefix: str, names: str, cmap: "ComponentMap",
                    exclude: set[str] = frozenset(), shipped: dict | None = None) -> dict | None:
    """The config an output file of this component ships (`ckptkit.config` metadata), so that later
    commands on it know what the weights cannot tell: the one the conversion resolved, else one that
    came with the input (shipped, metadata, --config). None when nothing was given: the values then
    come from the shapes and a released config again, as they did here."""
    from ckptkit.convert.configs import metadata_configs
    from ckptkit.convert.models import canonical_config

    if cmap.config is not None:
        return canonical_config(comp.diffusers_class, cmap.config)
    user = getattr(ckpt, "user_config", None)
    explicit = (shipped is not None or comp.name in metadata_configs(ckpt)
                or (user is not None and user.for_component(comp, _single_component(ckpt)) is not None))
    if not explicit:
        return None
    config = source_config(comp, local_shapes(ckpt, prefix, set(exclude)), names, shipped, ckpt, strict=False)
    return canonical_config(comp.diffusers_class, config)


def map_component(ckpt: Checkpoint, comp: ComponentSpec, prefix: str, names: str, target: str,
                  exclude: set[str] = frozenset(), config: dict | None = None, strict: bool = True) -> ComponentMap:
    """`names`: how the source names this component ("original" | "diffusers"); `target` likewise.
    `strict`: every config value must be known (a model is built or a config written); False when
    only names and shapes matter (convert/configs.py)."""
    shapes = local_shapes(ckpt, prefix, exclude)
    if not shapes:
        raise CkptError(f"{comp.name}: no tensors under {prefix!r}")
    if comp.layout in ONE_NAMING:  # the file's names are the class's: one naming, mapped as it is
        cfg = source_config(comp, shapes, "original", config, ckpt) if strict and target == "diffusers" else None
        return ComponentMap(_identity(shapes, prefix), cfg)
    if names == target:
        if names == "diffusers" and config is not None:
            source_config(comp, shapes, names, config, ckpt)  # a shipped config is checked even when copied as is
        elif names == "diffusers" and strict:  # a file in the class's names: its config came in its metadata or --config
            config = source_config(comp, shapes, names, None, ckpt)
        ops, dropped = _identity(shapes, prefix), {}
        if target == "original" and comp.identity_projection and PROJECTION in shapes \
                and _is_identity(ckpt, prefix + PROJECTION):  # written by diffusers / a transformers save
            del ops[PROJECTION]
            dropped[prefix + PROJECTION] = "identity text_projection (diffusers adds it; the original has none)"
        return ComponentMap(ops, config if names == "diffusers" else None, dropped)
    layout = get_layout(comp.layout)
    cfg = source_config(comp, shapes, names, config, ckpt, strict)
    if names == "diffusers":  # diffusers -> original: our map, as it is
        fwd = layout.to_original(shapes, cfg)
        dropped = {}
        if comp.identity_projection and PROJECTION in fwd and _is_identity(ckpt, prefix + PROJECTION):
            del fwd[PROJECTION]  # the identity diffusers adds; the original file has none
            dropped[prefix + PROJECTION] = "identity text_projection (diffusers adds it; the original has none)"
        return ComponentMap({o: expr.rename(e, lambda n: prefix + n) for o, e in fwd.items()}, cfg, dropped)
    # original -> diffusers: build the model's names from the config, map them, check, invert
    dshapes = diffusers_shapes(comp.diffusers_class, cfg)
    fwd = layout.to_original(dshapes, cfg)
    fshapes = expr.shapes(fwd, dshapes)
    added = {}
    if comp.identity_projection and PROJECTION in dshapes and PROJECTION not in shapes:
        added[PROJECTION] = _identity_projection(ckpt, comp, prefix, cfg, shapes)
    missing = sorted(n for n, e in fwd.items() if n not in shapes and e.op != "zeros" and n not in added)
    if missing:
        raise CkptError(f"{comp.name}: the source lacks {len(missing)} tensors a {comp.diffusers_class} needs "
                        f"(e.g. {missing[0]!r})")
    wrong = sorted(n for n in fwd if n in shapes and fshapes[n] != tuple(shapes[n]))
    if wrong:
        n = wrong[0]
        raise CkptError(f"{comp.name}: {len(wrong)} tensors have unexpected shapes (e.g. {n!r}: "
                        f"{list(shapes[n])}, expected {list(fshapes[n])})")
    why = getattr(layout, "not_converted", None)  # a layout that knows where such tensors belong (LTX-2's connectors)
    dropped = {prefix + n: (why and why(n)) or f"not part of {comp.diffusers_class}" for n in shapes
               if n not in fwd or fwd[n].op == "zeros"}
    inv = expr.invert(fwd, dshapes, getattr(layout, "tied", frozenset()) | set(added))
    inv.update(added)
    return ComponentMap({d: expr.rename(e, lambda n: prefix + n) for d, e in inv.items()}, cfg, dropped)


PROJECTION = "text_projection.weight"


def _identity_projection(ckpt: Checkpoint, comp: ComponentSpec, prefix: str, cfg: dict, shapes: dict) -> Expr:
    """The identity text_projection diffusers' single-file loader gives SD3's CLIP-L, in the dtype of
    the token embedding."""
    from ckptkit.formats.dtypes import FLOAT_CODES

    hidden, proj = cfg.get("hidden_size"), cfg.get("projection_dim", cfg.get("hidden_size"))
    if hidden != proj:
        raise CkptError(f"{comp.name}: has no text_projection and projection_dim {proj} is not its width {hidden}: "
                        "no identity projection fits")
    token = next((n for n in shapes if n.endswith("token_embedding.weight")), None)
    dtype = ckpt.tensors[prefix + token].dtype if token else "F32"
    return expr.eye(hidden, dtype if dtype in FLOAT_CODES else "F32")


def _is_identity(ckpt: Checkpoint, name: str) -> bool:
    import torch

    info = ckpt.tensors.get(name)
    if info is None or len(info.shape) != 2 or info.shape[0] != info.shape[1]:
        return False
    t = ckpt.load(name)
    return bool(torch.equal(t.float(), torch.eye(info.shape[0])))


def config_json(comp: ComponentSpec, config: dict) -> str:
    """config.json text for a diffusers/transformers component folder."""
    import json

    import diffusers

    from ckptkit.convert.models import SET_BY_CLASS, canonical_config, model_class

    cls, config_cls = model_class(comp.diffusers_class)
    if config_cls is None:  # every field, as diffusers' own save_pretrained writes them
        data = {"_class_name": comp.diffusers_class, "_diffusers_version": diffusers.__version__,
                **canonical_config(comp.diffusers_class, config)}
        return json.dumps(data, indent=2, sort_keys=True, default=list) + "\n"
    cfg = config_cls(**{**config, **SET_BY_CLASS.get(comp.diffusers_class, {})})  # as the class saves itself
    cfg.architectures = [comp.diffusers_class]
    return cfg.to_json_string()


def find_component_spec(name: str, layout: str, used_by: tuple[str, ...] = ()) -> ComponentSpec:
    """A family's spec for a standalone component file (the first family with that component and
    source layout, the families its signature names first, in their order: CLIP-L is the same in
    every family that has it; a 16-channel VAE takes SD3's latent scaling, not a 4-channel one's)."""
    from ckptkit.families import FAMILIES

    # a CLIP / T5 of a width no released one has: the family component of its kind (configs of
    # such a model are never taken from that component's release: convert/configs.py)
    name = GENERIC_COMPONENTS.get(name, name)
    families = sorted(FAMILIES, key=lambda f: used_by.index(f.name) if f.name in used_by else len(used_by))
    for family in families:
        for comp in family.components:
            if comp.name == name and comp.layout == layout:
                return comp
    for family in families:
        for comp in family.components:
            if comp.name == name:
                if layout in HF_NATIVE and comp.layout not in HF_NATIVE:
                    # an OpenCLIP tower saved in transformers names (ComfyUI's clip_h file): those names
                    # are its original names here, as SD3's clip_g spec has them
                    from dataclasses import replace

                    return replace(comp, layout=layout, high_precision=(
                        "text_model.embeddings.", "text_model.final_layer_norm.", "text_projection."))
                return comp
    raise CkptError(f"no family has a component {name!r}")


def target_naming(comp: ComponentSpec, layout: str) -> str:
    if layout == "diffusers":
        return "diffusers"
    if layout == "comfy" and comp.role == "text_encoder" and comp.layout not in HF_NATIVE:
        return "diffusers"  # OpenCLIP -> transformers layout, as ComfyUI's clip_g files
    return "original"


def output_path(comp: ComponentSpec, layout: str) -> str:
    if layout != "diffusers":
        return f"{comp.name}.safetensors"
    _, config_cls = model_class(comp.diffusers_class)
    return f"{comp.diffusers_folder}/{'model' if config_cls else 'diffusion_pytorch_model'}.safetensors"


def component_spec(det: "Detection") -> ComponentSpec:
    if det.family and list(det.components) == ["diffusion_model"]:
        return det.spec.diffusion_model
    if det.standalone and det.standalone_layout == "hf_llm":  # no family spec has one: the signature's
        from ckptkit.families.components import llm_component

        return llm_component(next(iter(det.components)), det.standalone_class or "")
    if det.standalone:
        return find_component_spec(next(iter(det.components)), det.standalone_layout, det.used_by)
    raise CkptError("not a single component (family unknown and no component signature matches)")


def _check_state(comp, model, state: dict) -> None:
    """Every tensor fits the parameter it replaces: same shape, and floating-point where the model
    computes in floating point (an integer `weight` would load and compute garbage, or crash)."""
    from ckptkit.errors import CkptError
    from ckptkit.formats.files import printable

    expected = model.state_dict()
    for name, t in state.items():
        want = expected.get(name)
        if want is None:
            continue
        if tuple(t.shape) != tuple(want.shape):
            raise CkptError(f"{comp.name}: tensor {printable(name)} has shape {list(t.shape)}, "
                            f"{comp.diffusers_class} at this config needs {list(want.shape)}")
        if want.is_floating_point() and not t.is_floating_point():
            raise CkptError(f"{comp.name}: tensor {printable(name)} is stored as {str(t.dtype).removeprefix('torch.')}; "
                            f"{comp.diffusers_class} needs floating-point weights")


def load_component(ckpt, comp, prefix: str = "", names: str = "original", config: dict | None = None,
                   exclude: frozenset[str] = frozenset(), dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A diffusers/transformers model built from a component's tensors in any checkpoint and any
    naming (quantized GGUF data comes dequantized), with a strict load: nothing missing."""
    from ckptkit.errors import CkptError

    cmap = map_component(ckpt, comp, prefix, names, "diffusers", set(exclude), config)
    state = {}
    for name, e in cmap.ops.items():
        t = e.evaluate(ckpt.load)
        state[name] = t.to(dtype).contiguous() if t.is_floating_point() else t.contiguous()
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):  # parameters on meta, buffers computed for real
        model = instantiate(comp.diffusers_class, cmap.config)
    if comp.diffusers_class.startswith("CLIPTextModel"):
        expected = set(model.state_dict())
        state = {n if n in expected else n.removeprefix("text_model."): t for n, t in state.items()}
    _check_state(comp, model, state)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {"encoder.embed_tokens.weight"}
    missing = [m for m in missing if m not in tied]
    if missing or unexpected:
        raise CkptError(f"{comp.name}: {len(missing)} missing, {len(unexpected)} unexpected tensors for "
                        f"{comp.diffusers_class} (e.g. {(missing or unexpected)[0]!r})")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    for buf_name, buf in list(model.named_buffers()):
        if buf.device.type == "meta":  # non-persistent buffers (rotary tables, position ids) are rebuilt
            raise CkptError(f"{comp.name}: buffer {buf_name} was not restored")
    return model.eval()
