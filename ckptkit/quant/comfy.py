"""ComfyUI's mixed-precision safetensors, written (`ckptkit quantize --to comfy --type fp8_e4m3`):
per Linear weight `L.weight` in fp8 (or int8) and `L.weight_scale` (float32 scalar), the layers
listed in the header's `_quantization_metadata` (ComfyUI's QUANTIZATION.md; comfy/utils.py
convert_old_quants reads it for diffusion models and text encoders alike). Every other tensor is
kept as stored. The quantizer is comfy_kitchen's eager one, so ComfyUI's own quantization of the
same weights gives the same bytes:

    fp8:  scale = amax / finfo(fp8).max;  q = clamp(w * (1 / scale).to(w.dtype), -max, max).to(fp8)
    int8: scale = max(amax / 127, 1e-30);  q = round(w.float() / scale).clamp(-128, 127).to(int8)

Which tensors are quantized is the GGUF policy's decision (quant/policy.py: the same high-precision
rules, decided once on final names), narrowed to what this format defines: 2-D Linear weights.
Reading these files back (dequantization) is formats/scaled.py.
"""

from __future__ import annotations

import json

import torch

from ckptkit.engine import expr
from ckptkit.engine.plan import OutputFile, TensorOp
from ckptkit.errors import CkptError
from ckptkit.formats.dtypes import FLOAT_CODES

# --type -> (ComfyUI format name, stored dtype code, torch dtype)
TYPES = {"fp8_e4m3": ("float8_e4m3fn", "F8_E4M3", torch.float8_e4m3fn),
         "fp8_e5m2": ("float8_e5m2", "F8_E5M2", torch.float8_e5m2),
         "int8": ("int8_tensorwise", "I8", torch.int8)}
ALIASES = {"fp8": "fp8_e4m3", "float8_e4m3fn": "fp8_e4m3", "float8_e5m2": "fp8_e5m2", "int8_tensorwise": "int8"}


def comfy_type(name: str) -> str:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in TYPES:
        raise CkptError(f"--to comfy: unknown type {name!r}; choose one of {', '.join(TYPES)}")
    return key


def scale_of(w: torch.Tensor, type_name: str) -> torch.Tensor:
    """The float32 scalar scale comfy_kitchen's quantizer picks for `w`."""
    amax = w.float().abs().max()
    if type_name == "int8":
        return (amax / 127).clamp(min=1e-30).reshape(())
    return (amax / torch.finfo(TYPES[type_name][2]).max).clamp(min=1e-12).reshape(())


def quantized(w: torch.Tensor, type_name: str) -> torch.Tensor:
    scale = scale_of(w, type_name)
    if type_name == "int8":
        return torch.round(w.float() / scale).clamp(-128, 127).to(torch.int8)
    top = torch.finfo(TYPES[type_name][2]).max
    return torch.clamp(w * (1.0 / scale).to(w.dtype), -top, top).to(TYPES[type_name][2])


def comfy_output(ckpt, comp, ops: dict[str, expr.Expr], type_name: str, path: str, notes: list[str]) -> OutputFile:
    """One component as a ComfyUI mixed-precision safetensors file."""
    from ckptkit.engine.ops import source_dtype
    from ckptkit.quant.policy import decide
    from ckptkit.quant.types import parse_request

    fmt, code, _ = TYPES[type_name]
    like = parse_request("q8_0")  # the GGUF policy's high-precision decisions, per final name
    src_shapes = {n: t.shape for n, t in ckpt.tensors.items()}
    tensors, layers = [], {}
    for name, e in ops.items():
        shape = expr.shape_of(e, src_shapes)
        sdt = source_dtype(ckpt, e)
        linear = name.endswith(".weight") and len(shape) == 2 and sdt in FLOAT_CODES and sdt not in ("F8_E4M3", "F8_E5M2")
        if not linear or not decide(name, shape, sdt, comp, like, [], False).quantized:
            tensors.append(TensorOp(name, e, shape, sdt, sdt, "kept" if linear else ""))
            continue
        layer = name[: -len(".weight")]
        tensors.append(TensorOp(name, expr.fn("comfy_quantized", e, type_name), shape, code, code, fmt))
        tensors.append(TensorOp(f"{layer}.weight_scale", expr.fn("comfy_scale", e, type_name), (), "F32", "F32",
                                f"{fmt} scale"))
        layers[layer] = {"format": fmt}
    if not layers:
        raise CkptError(f"{comp.name}: asked for {type_name} but it has no Linear weight the policy quantizes")
    notes.append(f"{comp.name}: {len(layers)} Linear weights as ComfyUI {fmt} (weight + weight_scale, "
                 "_quantization_metadata); every other tensor as stored")
    meta = {"ckptkit.component": comp.name,
            "_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}
    return OutputFile(path, comp.name, "comfy", tensors, metadata=meta)


def plan_comfy(ckpt, src, policy, single_file: str | None = None):
    """The quantize plan for `--to comfy`: one safetensors file per component (or `single_file` for
    a single-component source), the requested ones in ComfyUI's mixed precision, the others as stored."""
    from collections import Counter

    from ckptkit.convert.components import config_to_carry, map_component, target_naming
    from ckptkit.convert.configs import metadata_value
    from ckptkit.engine.ops import POSITION_IDS, source_dtype
    from ckptkit.engine.plan import Plan

    if policy.rules or policy.imatrix or policy.client or policy.arch:
        raise CkptError("--to comfy takes --type and --component only (--rule, --imatrix, --client and --arch "
                        "are for GGUF)")
    if single_file and not single_file.endswith(".safetensors"):
        raise CkptError(f"{single_file}: --to comfy writes safetensors; name the output .safetensors")
    comps = src.components
    names = [c.name for c, *_ in comps]
    if single_file and len(comps) != 1:
        raise CkptError(f"the source holds {len(comps)} components ({', '.join(names)}); give a directory as output")
    unknown = set(policy.components) - set(names)
    if unknown:
        raise CkptError(f"--component {', '.join(sorted(unknown))}: not in this source (it has {', '.join(names)})")
    plan = Plan("quantize", str(ckpt.path), [], info={"family": src.family, "variant": src.variant,
                                                      "layout": "comfy", "components": {}})
    plan.dropped.update(src.dropped)
    asked = {}
    for comp, *_ in comps:
        name = policy.components.get(comp.name)
        if name is None and (comp.role == "diffusion_model" or src.single):
            name = policy.diffusion_model
        asked[comp.name] = comfy_type(name) if name and name.lower() != "keep" else None
    if not any(asked.values()):
        raise CkptError("nothing to quantize: give --type (diffusion model) or --component NAME=TYPE")
    for comp, prefix, naming_in, config in comps:
        type_name = asked[comp.name]
        if type_name and comp.role == "vae":
            raise CkptError(f"{comp.name}: a VAE is not quantized (ComfyUI scales Linear weights of diffusion "
                            "models and text encoders)")
        cmap = map_component(ckpt, comp, prefix, naming_in, target_naming(comp, "comfy"), src.exclude, config)
        plan.dropped.update(cmap.dropped)
        ops = {}
        for name, e in cmap.ops.items():
            if name.endswith(POSITION_IDS):
                for source in e.sources():
                    plan.dropped[source] = "position_ids: not written (loaders rebuild them)"
            else:
                ops[name] = e
        path = single_file or f"{comp.name}.safetensors"
        if type_name:
            out = comfy_output(ckpt, comp, ops, type_name, path, plan.notes)
        else:
            shapes = {n: t.shape for n, t in ckpt.tensors.items()}
            out = OutputFile(path, comp.name, "comfy",
                             [TensorOp(n, e, expr.shape_of(e, shapes), source_dtype(ckpt, e), source_dtype(ckpt, e),
                                       "kept") for n, e in ops.items()], metadata={"ckptkit.component": comp.name})
        carried = config_to_carry(ckpt, comp, prefix, naming_in, cmap, src.exclude, config)
        if carried:
            out.metadata.update(metadata_value({comp.name: carried}))
        plan.outputs.append(out)
        types: dict = {}
        for t in out.tensors:
            entry = types.setdefault(t.dtype, {"tensors": 0, "bytes": 0})
            entry["tensors"] += 1
            entry["bytes"] += t.nbytes
        kept = Counter(t.note for t in out.tensors if t.note == "kept") if type_name else Counter()
        plan.info["components"][comp.name] = {
            "role": comp.role, "file": path, "naming": target_naming(comp, "comfy"),
            "diffusers_class": comp.diffusers_class,
            "policy": {"requested": type_name or "keep", "format": "safetensors", "backend": "comfy",
                       "quantized_tensors": sum(1 for t in out.tensors if t.note == TYPES[type_name][0])
                       if type_name else 0,
                       "types": types, "kept_high_precision": dict(kept), "fallbacks": {}}}
    return plan


expr.register("comfy_quantized", quantized, lambda shape: shape)
expr.register("comfy_scale", scale_of, lambda shape: ())
