"""Quantized safetensors written layer by layer, for the libraries that load them back
(`ckptkit quantize --to comfy|bnb|quanto`). One planner for all of them: per component, the GGUF
policy's high-precision decisions (quant/policy.py, decided once on final names) narrowed to what
these formats quantize, 2-D Linear weights; each quantized weight becomes the tensors its library
serializes (a backend's `layer` function), every other tensor is kept as stored. Streaming like
every plan: one weight is read and quantized at a time, by the executor.

A backend's outputs of one weight come from one quantization: each is an `expr.part` of one
transform of the weight, which the executor evaluates once for all of them (engine/produce.py).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from ckptkit.engine import expr
from ckptkit.engine.plan import OutputFile, TensorOp
from ckptkit.errors import CkptError
from ckptkit.formats.dtypes import FLOAT_CODES


@dataclass(frozen=True)
class Backend:
    name: str  # the --to value
    title: str
    types: dict[str, str]  # --type -> the format as formats/scaled.py names a layer read back
    # (layer name, weight Expr, shape, source dtype, --type) -> the layer's TensorOps (the weight's name first)
    layer: Callable
    metadata: Callable = lambda layers, shapes: {}  # ({layer: --type}, {layer: shape}) -> header metadata
    aliases: dict[str, str] = field(default_factory=dict)
    requires: str | None = None  # a package it quantizes with (an optional extra)
    # (--type, Linear modules left unquantized, "diffusers" | "transformers", the weights' dtype code) ->
    # the `quantization_config` of config.json, as that library's save_pretrained writes it (None:
    # the format has no diffusers/transformers loader)
    quantization_config: Callable | None = None
    loads_prequantized: dict = field(default_factory=dict)  # library -> False where it cannot load such files
    skips_by_child_name: tuple = ()  # libraries whose modules_to_not_convert names a module by its last name
    aligned: bool = False  # lay the file out so its quantized data is ALIGN-aligned in a mapping

    def type_of(self, name: str) -> str:
        key = self.aliases.get(name.lower(), name.lower())
        if key not in self.types:
            raise CkptError(f"--to {self.name}: unknown type {name!r}; choose one of {', '.join(self.types)}")
        return key


MODULES = {"comfy": "ckptkit.quant.comfy", "bnb": "ckptkit.quant.bnb", "quanto": "ckptkit.quant.quanto"}


def get_backend(name: str, writing: bool = True) -> Backend:
    """The backend `name`; for `writing`, its library must be installed (reading a file needs none:
    formats/scaled.py dequantizes every format itself)."""
    if name not in MODULES:
        raise CkptError(f"--to {name}: not a safetensors backend ({', '.join(MODULES)})")
    backend = importlib.import_module(MODULES[name]).BACKEND
    if backend.requires and writing:
        try:  # found, not imported: optimum.quanto alone takes seconds to import
            found = importlib.util.find_spec(backend.requires) is not None
        except ImportError:
            found = False
        if not found:
            raise CkptError(f"--to {name} quantizes with {backend.requires}, which is not installed: "
                            "pip install 'ckptkit[quant]'") from None
    return backend


def linear_sources(ckpt, comp, prefix: str, naming_in: str, exclude, config, from_class: bool = False
                   ) -> set[str] | None:
    """The source tensors that are nn.Linear weights in the component's diffusers/transformers class
    (built on the meta device): a 2-D weight is not always a Linear's (T5's relative_attention_bias
    and token embeddings are nn.Embedding), and these libraries quantize Linear layers only, never
    the class's `_keep_in_fp32_modules`. For the text encoders in convert/models.py NOT_LINEAR the
    same set comes from that table (unless `from_class`), without importing transformers. None
    when the class cannot be built (an unknown model: every 2-D weight counts)."""
    from ckptkit.convert.components import map_component
    from ckptkit.convert.models import NOT_LINEAR

    if comp.role == "unknown" or not comp.diffusers_class:
        return None
    try:
        dmap = map_component(ckpt, comp, prefix, naming_in, "diffusers", set(exclude), config)
        known = None if from_class else NOT_LINEAR.get(comp.diffusers_class)
        if known is not None:
            src_shapes = {n: t.shape for n, t in ckpt.tensors.items()}
            shapes = {name: expr.shape_of(e, src_shapes) for name, e in dmap.ops.items()}
            embeddings, keep = known
            linear = {name for name in dmap.ops if name.endswith(".weight") and len(shapes[name]) == 2
                      and not (embeddings | keep) & set(name.split(".")[:-1])}
        else:
            linear = _class_linears(comp.diffusers_class, dmap.config)
    except (CkptError, ValueError, TypeError):
        return None
    found = set()
    for name, e in dmap.ops.items():
        if name in linear or name.removeprefix("text_model.") in linear:  # transformers 5 CLIP holds no text_model
            found |= set(e.sources())
    return found


def _class_linears(class_name: str, config: dict) -> set[str]:
    """The Linear weights of the class built on the meta device, less its float32-kept modules."""
    import torch.nn as nn
    from accelerate import init_empty_weights

    from ckptkit.convert.models import instantiate

    with init_empty_weights():
        model = instantiate(class_name, config)
    # the class's own high-precision modules (T5's `wo`): its loader keeps them unquantized whatever the file holds
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear) and not keep & set(n.split("."))}


def component_output(backend: Backend, ckpt, comp, ops: dict[str, expr.Expr], type_name: str, path: str,
                     notes: list[str], by_child_name: bool = False, linear_weights: set[str] | None = None
                     ) -> OutputFile:
    """One component in `backend`'s serialization: the quantized Linear weights and everything else
    as stored. `by_child_name`: the loader skips modules by their last name only (diffusers' quanto
    `modules_to_not_convert`), so a weight is kept whenever another kept one has its last name."""
    from ckptkit.engine.ops import source_dtype
    from ckptkit.quant.policy import decide
    from ckptkit.quant.types import parse_request

    like = parse_request("q8_0")  # the GGUF policy's high-precision decisions, per final name
    src_shapes = {n: t.shape for n, t in ckpt.tensors.items()}
    typed = {name: (expr.shape_of(e, src_shapes), source_dtype(ckpt, e)) for name, e in ops.items()}
    linear, kept = set(), set()
    for name, e in ops.items():
        shape, sdt = typed[name]
        if name.endswith(".weight") and len(shape) == 2 and sdt in FLOAT_CODES and sdt not in ("F8_E4M3", "F8_E5M2") \
                and (linear_weights is None or set(e.sources()) <= linear_weights):
            linear.add(name)
            if not decide(name, shape, sdt, comp, like, [], False).quantized:
                kept.add(name)
    if by_child_name:
        children = {_child(n) for n in kept}
        widened = {n for n in linear if _child(n) in children} - kept
        if widened:
            notes.append(f"{comp.name}: {len(widened)} more Linear weights kept: the loader skips modules by their "
                         f"last name ({', '.join(sorted(children))})")
        kept |= widened
    tensors, layers, shapes = [], {}, {}
    for name, e in ops.items():
        shape, sdt = typed[name]
        if name not in linear or name in kept:
            tensors.append(TensorOp(name, e, shape, sdt, sdt, "kept" if name in kept else ""))
            continue
        layer = name[: -len(".weight")]
        tensors += backend.layer(layer, e, shape, sdt, type_name)
        layers[layer] = type_name
        shapes[layer] = list(shape)
    if not layers:
        raise CkptError(f"{comp.name}: asked for {type_name} but it has no Linear weight the policy quantizes")
    notes.append(f"{comp.name}: {len(layers)} Linear weights as {backend.title} {type_name}; every other tensor "
                 f"as stored ({backend.title} quantizes nn.Linear weights only)")
    # Every tensor whose size is a multiple of ALIGN first, in plan order (a layer's parts stay
    # together), the others after: with the data section aligned too, each of the first lies
    # aligned in a mapping of the file, as the libraries' CPU kernels need (quanto's int8 x bf16
    # matmul crashes on unaligned int8 data in torch 2.13).
    if backend.aligned:
        tensors.sort(key=lambda t: t.nbytes % ALIGN != 0)
    return OutputFile(path, comp.name, "comfy", tensors, metadata={"ckptkit.component": comp.name,
                                                                   **backend.metadata(layers, shapes)},
                      align=ALIGN if backend.aligned else 8)


ALIGN = 64


def _child(weight: str) -> str:
    return weight[: -len(".weight")].rsplit(".", 1)[-1]


def plan_layerwise(ckpt, src, policy, single_file: str | None = None):
    """The quantize plan for `--to comfy|bnb|quanto`: one safetensors file per component (or
    `single_file` for a single-component source), the requested ones quantized, the others as stored."""
    from ckptkit.convert.components import config_to_carry, map_component, output_path, target_naming
    from ckptkit.convert.configs import metadata_value
    from ckptkit.convert.models import library_of
    from ckptkit.engine.ops import POSITION_IDS, source_dtype
    from ckptkit.engine.plan import Plan

    backend = get_backend(policy.backend)
    layout = policy.layout or "comfy"
    if layout == "diffusers" and backend.quantization_config is None:
        raise CkptError(f"--to {backend.name}: {backend.title} files are not loaded by diffusers/transformers; "
                        "--layout diffusers is for --to bnb and --to quanto")
    if layout not in ("comfy", "diffusers"):
        raise CkptError(f"--layout {layout}: --to {backend.name} writes comfy or diffusers layouts")
    if policy.rules or policy.imatrix or policy.client or policy.arch:
        raise CkptError(f"--to {backend.name} takes --type and --component only (--rule, --imatrix, --client and "
                        "--arch are for GGUF)")
    if single_file and not single_file.endswith(".safetensors"):
        raise CkptError(f"{single_file}: --to {backend.name} writes safetensors; name the output .safetensors")
    comps = src.components
    names = [c.name for c, *_ in comps]
    if single_file and len(comps) != 1:
        raise CkptError(f"the source holds {len(comps)} components ({', '.join(names)}); give a directory as output")
    unknown = set(policy.components) - set(names)
    if unknown:
        raise CkptError(f"--component {', '.join(sorted(unknown))}: not in this source (it has {', '.join(names)})")
    asked = {}
    for comp, *_ in comps:
        name = policy.components.get(comp.name)
        if name is None and (comp.role == "diffusion_model" or src.single):
            name = policy.diffusion_model
        asked[comp.name] = backend.type_of(name) if name and name.lower() != "keep" else None
    if not any(asked.values()):
        raise CkptError("nothing to quantize: give --type (diffusion model) or --component NAME=TYPE")
    plan = Plan("quantize", str(ckpt.path), [], info={"family": src.family, "variant": src.variant,
                                                      "layout": layout, "components": {}})
    plan.dropped.update(src.dropped)
    for comp, prefix, naming_in, config in comps:
        naming = target_naming(comp, layout)
        type_name = asked[comp.name]
        if type_name and comp.role == "vae":
            raise CkptError(f"{comp.name}: a VAE is not quantized ({backend.title} quantizes the Linear weights of "
                            "diffusion models and text encoders)")
        cmap = map_component(ckpt, comp, prefix, naming_in, naming, src.exclude, config)
        plan.dropped.update(cmap.dropped)
        ops = {}
        for name, e in cmap.ops.items():
            if name.endswith(POSITION_IDS):
                for source in e.sources():
                    plan.dropped[source] = "position_ids: not written (loaders rebuild them)"
            else:
                ops[name] = e
        path = single_file or output_path(comp, layout)
        library = library_of(comp.diffusers_class)
        if type_name and layout == "diffusers" and not backend.loads_prequantized.get(library, True):
            raise CkptError(f"{comp.name}: {library} does not load pre-quantized {backend.title} weights "
                            f"({comp.diffusers_class}); write it with --layout comfy and load it with "
                            f"{backend.title}'s own loader, or leave {comp.name} unquantized")
        if type_name:
            out = component_output(backend, ckpt, comp, ops, type_name, path, plan.notes,
                                   by_child_name=layout == "diffusers" and library in backend.skips_by_child_name,
                                   linear_weights=linear_sources(ckpt, comp, prefix, naming_in, src.exclude, config))
        else:
            shapes = {n: t.shape for n, t in ckpt.tensors.items()}
            out = OutputFile(path, comp.name, "comfy", [], metadata={"ckptkit.component": comp.name})
            for n, e in ops.items():
                sdt = source_dtype(ckpt, e)
                out.tensors.append(TensorOp(n, e, expr.shape_of(e, shapes), sdt, sdt, "kept"))
        if layout == "diffusers":  # config.json beside it, with the library's quantization_config
            plan.sidecars[f"{comp.diffusers_folder}/config.json"] = _config_json(backend, ckpt, comp, cmap.config, out,
                                                                               type_name, library)
        else:
            carried = config_to_carry(ckpt, comp, prefix, naming_in, cmap, src.exclude, config)
            if carried:
                out.metadata.update(metadata_value({comp.name: carried}))
        out.layout = layout
        plan.outputs.append(out)
        plan.info["components"][comp.name] = {"role": comp.role, "file": path, "naming": naming,
                                              "diffusers_class": comp.diffusers_class,
                                              "policy": _report(backend, out, type_name)}
    return plan


def _config_json(backend: Backend, ckpt, comp, config: dict, out: OutputFile, type_name: str | None,
                 library: str) -> str:
    import json

    from ckptkit.convert.components import config_json
    from ckptkit.engine.ops import source_dtype

    text = config_json(comp, config)
    if not type_name:
        return text
    data = json.loads(text)
    kept = sorted(t.name[: -len(".weight")] for t in out.tensors if t.note == "kept")
    # the dtype of the weights quantized: a layer's data is a part of its weight's transform
    dtype = next((source_dtype(ckpt, t.expr.args[0].args[1]) for t in out.tensors
                  if t.note == f"{backend.name}:{type_name}"), "F32")
    data["quantization_config"] = backend.quantization_config(type_name, kept, library, dtype)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _report(backend: Backend, out: OutputFile, type_name: str | None) -> dict:
    from ckptkit.units import tally

    types = tally((t.dtype, t.nbytes) for t in out.tensors)
    kept = Counter(t.note for t in out.tensors if t.note == "kept") if type_name else Counter()
    return {"requested": type_name or "keep", "format": "safetensors", "backend": backend.name,
            "quantized_tensors": sum(1 for t in out.tensors if t.note == f"{backend.name}:{type_name}")
            if type_name else 0,
            "types": types, "kept_high_precision": dict(kept), "fallbacks": {}}
