"""Quantize planner: a bundle, a component set or one component file -> a component set (or a
single file) where each component follows its own request. Quantized components become GGUF
files in the names ComfyUI-GGUF / stable-diffusion.cpp load (diffusion model and VAE in original
names, CLIP in transformers names, T5 in llama.cpp names); components asked to stay plain are
written as safetensors in the comfy layout.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import torch

from ckptkit.convert import expr
from ckptkit.convert.components import map_component
from ckptkit.convert.plan import OutputFile, Plan, TensorOp
from ckptkit.convert.split import source_dtype, target_naming
from ckptkit.errors import CkptError
from ckptkit.families.detect import Detection
from ckptkit.families.spec import ComponentSpec
from ckptkit.formats.base import Checkpoint
from ckptkit.formats.dtypes import FLOAT_CODES
from ckptkit.quant import t5_names
from ckptkit.quant.policy import Decision, Policy, check_component_request, decide, keep_type
from ckptkit.quant.types import PLAIN, Request

CONV_RESHAPE_FAMILIES = ("sd1", "sd2", "sdxl", "sdxl_refiner")  # ComfyUI-GGUF's `shape_fix` archs
TEXT_ENCODER_ARCH = {"hf_t5": "t5encoder", "hf_clip": "clip", "open_clip": "clip"}
FP16_SCALE_LIMIT = 65504.0 * 127  # |x| above this overflows a Q8_0 block's fp16 scale (the tightest)


def final_name(comp: ComponentSpec, name: str) -> str:
    return t5_names.to_llama(name) if comp.layout == "hf_t5" else name


def _components(det: Detection) -> list[tuple[ComponentSpec, str]]:
    if det.spec is not None:
        return [(c, det.components[c.name]) for c in det.spec.components if c.name in det.components]
    if det.standalone:
        from ckptkit.convert.convert import component_spec

        return [(component_spec(det), "")]
    raise CkptError("family unknown: nothing to quantize by policy (see `ckptkit inspect`)")


def plan_quantize(ckpt: Checkpoint, det: Detection, policy: Policy, single_file: str | None = None,
                  scan: bool = True, progress: Callable[[int], None] | None = None) -> Plan:
    rules = policy.compiled_rules()
    plan = Plan("quantize", str(ckpt.path), [], info={"family": det.family, "variant": det.variant,
                                                      "layout": "comfy", "components": {}})
    exclude = set(det.junk) | set(det.ema) | set(det.unclaimed)
    for name in exclude:
        plan.dropped[name] = "junk, EMA copy or unknown prefix"
    members = getattr(ckpt, "members", {})
    comps = _components(det)
    if single_file and len(comps) != 1:
        raise CkptError(f"the source holds {len(comps)} components; give a directory as output")
    asked = {c.name for c, _ in comps} | ({"diffusion_model"} if policy.diffusion_model else set())
    unknown = set(policy.components) - {c.name for c, _ in comps}
    if unknown:
        raise CkptError(f"--component {', '.join(sorted(unknown))}: not in this file (it has "
                        f"{', '.join(c.name for c, _ in comps)})")
    if not any(policy.request_for(c) for c, _ in comps) and not asked & {c.name for c, _ in comps}:
        raise CkptError("nothing to quantize: give --type (diffusion model) or --component NAME=TYPE")
    for comp, prefix in comps:
        config = None
        if det.names == "diffusers":
            config = members[prefix.rstrip("/")].config if prefix else ckpt.config
        naming = target_naming(comp, "comfy")
        cmap = map_component(ckpt, comp, prefix, det.names, naming, exclude, config)
        plan.dropped.update(cmap.dropped)
        request = policy.request_for(comp)
        path = single_file or f"{comp.name}.{'gguf' if request and request.quantized else 'safetensors'}"
        if request is None or not request.quantized:
            out = _plain_output(ckpt, comp, cmap.ops, request, policy, path)
        else:
            out = _gguf_output(ckpt, det, comp, cmap.ops, request, rules, path, scan, progress, plan.notes)
        plan.outputs.append(out)
        plan.info["components"][comp.name] = {"role": comp.role, "file": path, "naming": naming,
                                              "diffusers_class": comp.diffusers_class,
                                              "policy": policy_report(out, request)}
    return plan


def _plain_output(ckpt, comp, ops, request: Request | None, policy: Policy, path: str) -> OutputFile:
    src_shapes = {n: t.shape for n, t in ckpt.tensors.items()}
    src_dtypes = {source_dtype(ckpt, e) for e in ops.values()}
    if request is not None:
        check_component_request(comp, request, src_dtypes & FLOAT_CODES, policy.force_vae)
    tensors = []
    for name, e in ops.items():
        sdt = source_dtype(ckpt, e)
        dtype = request.base if request and sdt in FLOAT_CODES and not name.endswith("position_ids") else sdt
        tensors.append(TensorOp(name, e, expr.shape_of(e, src_shapes), sdt, dtype, "requested" if request else "kept"))
    return OutputFile(path, comp.name, "comfy", tensors, metadata={"ckptkit.component": comp.name})


def _gguf_output(ckpt, det, comp, ops, request: Request, rules, path: str, scan: bool, progress,
                 notes: list[str]) -> OutputFile:
    src_dtypes = {source_dtype(ckpt, e) for e in ops.values()}
    check_component_request(comp, request, src_dtypes & FLOAT_CODES, False)
    src_shapes = {n: t.shape for n, t in ckpt.tensors.items()}
    conv_reshape = comp.role == "diffusion_model" and det.family in CONV_RESHAPE_FAMILIES
    kv: dict = {"general.quantization_version": 2, "general.file_type": int(request.file_type)}
    tensors = []
    for name, e in ops.items():
        final = final_name(comp, name)
        shape = expr.shape_of(e, src_shapes)
        sdt = source_dtype(ckpt, e)
        if sdt not in FLOAT_CODES:
            d = Decision("F32", f"{sdt} tensor stored as F32", shape)
            notes.append(f"{comp.name}: {final} ({sdt}) stored as F32: GGUF has no {sdt} type ComfyUI reads")
        else:
            d = decide(final, shape, sdt, comp, request, rules, conv_reshape)
        if d.quantized and scan:
            d = _checked(ckpt, e, d, sdt, shape, progress, notes, f"{comp.name}: {final}")
        if d.reshaped:
            e = expr.reshape(e, d.stored_shape)
            kv[f"comfy.gguf.orig_shape.{final}"] = list(shape)
        tensors.append(TensorOp(final, e, d.stored_shape, sdt, d.type, d.reason))
    if not any(t.dtype not in PLAIN for t in tensors):
        raise CkptError(f"{comp.name}: asked for {request.name} but no tensor can be quantized "
                        "(all are 1-D, small, high-precision or of unfit row length)")
    arch = det.spec.gguf_arch if comp.role == "diffusion_model" and det.spec else TEXT_ENCODER_ARCH.get(comp.layout, comp.name)
    return OutputFile(path, comp.name, "comfy", tensors, format="gguf", gguf_arch=arch, kv=kv,
                      metadata={"ckptkit.component": comp.name})


def _checked(ckpt, e, d: Decision, sdt: str, shape, progress, notes: list[str], label: str) -> Decision:
    """Never write inf/NaN scales: a tensor with non-finite values, or values whose block scale
    would overflow fp16, stays in high precision (reported)."""
    t = e.evaluate(ckpt.load)
    finite = bool(torch.isfinite(t).all())
    amax = float(t.abs().max()) if finite and t.numel() else 0.0
    if progress:
        progress(t.numel() * t.element_size())
    if not finite:
        notes.append(f"{label}: non-finite values; kept unquantized")
        return Decision("F32" if sdt == "F32" else keep_type(sdt), "non-finite values: not quantized", shape)
    if amax > FP16_SCALE_LIMIT:
        notes.append(f"{label}: |x| up to {amax:.3g} would overflow fp16 block scales; kept F32")
        return Decision("F32", "values overflow fp16 scales: not quantized", shape)
    return d


def policy_report(out: OutputFile, request: Request | None) -> dict:
    types: dict[str, dict] = {}
    kept: Counter = Counter()
    for t in out.tensors:
        entry = types.setdefault(t.dtype, {"tensors": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["bytes"] += t.nbytes
        if request and request.quantized and t.dtype in PLAIN:
            kept[t.note.split(":")[0]] += 1
    return {"requested": request.name if request else "keep", "format": out.format,
            "types": types, "kept_high_precision": dict(kept)}
