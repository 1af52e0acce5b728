"""Quantize planner: a bundle, a component set or one component file -> a component set (or a
single file) where each component follows its own request. Quantized components become GGUF
files in the names ComfyUI-GGUF / stable-diffusion.cpp load (diffusion model and VAE in original
names, CLIP in transformers names, T5 in llama.cpp names); components asked to stay plain are
written as safetensors in the comfy layout.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from ckptkit.engine import expr
from ckptkit.convert.components import config_to_carry, map_component, shipped_config, target_naming
from ckptkit.convert.configs import metadata_value
from ckptkit.engine.ops import POSITION_IDS, source_dtype
from ckptkit.engine.plan import OutputFile, Plan, TensorOp
from ckptkit.errors import CkptError
from ckptkit.families.components import GENERIC_COMPONENTS, generic_component
from ckptkit.families.detect import Detection
from ckptkit.families.spec import ComponentSpec
from ckptkit.formats.base import Checkpoint
from ckptkit.formats.dtypes import FLOAT_CODES
from ckptkit.quant import llm_names, mmproj_names, t5_names
from ckptkit.quant.imatrix import imatrix_key
from ckptkit.quant.clients import DEFAULT as DEFAULT_CLIENT, Client, for_diffusion_model, get_client
from ckptkit.quant.policy import (Decision, Policy, check_component_request, decide, decide_sdcpp, edge_prefixes,
                                  keep_type)
from ckptkit.quant.types import PLAIN, REQUESTS, Request, fallback_for, fits

CONV_RESHAPE_FAMILIES = ("sd1", "sd2", "sdxl", "sdxl_refiner")  # ComfyUI-GGUF's `shape_fix` archs
TEXT_ENCODER_ARCH = {"hf_t5": "t5encoder", "hf_clip": "clip", "open_clip": "clip"}
MAX_NAME_BYTES = 127  # longer GGUF tensor names are not loadable by ggml (GGML_MAX_NAME)
FP16_MAX = 65504.0  # |x| up to this cannot overflow any block's fp16 scale (nor an fp16 cast)


def final_name(comp: ComponentSpec, name: str) -> str:
    return t5_names.to_llama(name) if comp.layout == "hf_t5" else name


def text_encoder_arch(comp: ComponentSpec) -> str | None:
    """general.architecture of a text encoder's GGUF; None: none a text-encoder loader takes (Gemma-2)."""
    if comp.layout == "hf_llm":
        arch = llm_names.ARCHS.get(comp.name)
        return arch[0] if arch else None
    return TEXT_ENCODER_ARCH.get(comp.layout, comp.name)


@dataclass
class QuantSource:
    """What quantize reads, whatever the input form: each component with the prefix its tensors
    sit under in `ckpt`, the naming they use ("original" | "diffusers") and a shipped config."""

    family: str | None
    variant: str | None
    components: list[tuple[ComponentSpec, str, str, dict | None]]
    exclude: set[str] = field(default_factory=set)
    dropped: dict[str, str] = field(default_factory=dict)
    single: bool = False  # one component only: `--type` applies to it whatever its role

    @property
    def spec(self):
        from ckptkit.families import BY_NAME

        return BY_NAME.get(self.family) if self.family else None


def _standalone_spec(ckpt: Checkpoint, det: Detection) -> ComponentSpec:
    from ckptkit.convert.components import find_component_spec
    from ckptkit.convert.components import component_spec

    name = next(iter(det.components))
    if name == "clip" and any(n.startswith("text_projection") for n in ckpt.tensors):
        name = "clip_g"  # a CLIP with a projection is a CLIPTextModelWithProjection, as clip_g's spec
    if name in GENERIC_COMPONENTS or name == "clip_g":  # find_component_spec maps the generic names itself
        return find_component_spec(name, det.standalone_layout, det.used_by)
    return component_spec(det)


def source_from_detection(ckpt: Checkpoint, det: Detection) -> QuantSource:
    """A bundle, one component file (any format, GGUF included) or a diffusers folder."""
    exclude = set(det.junk) | set(det.ema) | set(det.unclaimed)
    dropped = {n: "junk, EMA copy or unknown prefix" for n in exclude}
    if det.spec is not None:
        comps = []
        for comp in det.spec.components:
            if comp.name not in det.components:
                continue
            prefix = det.components[comp.name]
            config = shipped_config(ckpt, det.names, prefix)
            comps.append((comp, prefix, det.names, config))
        return QuantSource(det.family, det.variant, comps, exclude, dropped,
                           single=len(comps) == 1 and det.form != "bundle")
    if det.standalone:
        comp = _standalone_spec(ckpt, det)
        return QuantSource(None, None, [(comp, "", det.names, ckpt.config if det.names == "diffusers" else None)],
                           exclude, dropped, single=True)
    # a model no spec knows: one component, names as they are, the rules every family shares
    return QuantSource(None, None, [(generic_component(), "", "original", None)], single=True)


def open_component_set_source(folder, family: str | None = None) -> tuple[Checkpoint, QuantSource]:
    """A component set in any layout (`ckptkit split --layout comfy|original|diffusers`, or a folder
    of component files): the same components, mapped to the same final names as from the bundle."""
    from ckptkit.convert.component_set import open_component_set, stored_naming
    from ckptkit.families import get_family
    from ckptkit.families.detect import detect

    ckpt, family, found = open_component_set(folder, family)
    try:
        spec = get_family(family)
        known = {c.name: c for c in spec.components}
        comps = []
        for name, (prefix, naming, config) in found.items():
            comp = known.get(name)
            if comp is None:  # a file named by its maker (t5xxl_fp16.safetensors): its signature names it
                det = detect(ckpt.members[name])
                sig = next(iter(det.components), None) if det.standalone else None
                comp = known.get(GENERIC_COMPONENTS.get(sig, sig))
                if comp is None:
                    raise CkptError(f"{folder}: {name} is not a component of {family}")
            names = {n[len(prefix):] for n in ckpt.tensors if n.startswith(prefix)}
            comps.append((comp, prefix, stored_naming(comp, names, naming), config))
        order = [c.name for c in spec.components]
        comps.sort(key=lambda c: order.index(c[0].name))
        if len({c[0].name for c in comps}) != len(comps):
            raise CkptError(f"{folder}: two files hold the same component")
    except BaseException:
        ckpt.close()
        raise
    return ckpt, QuantSource(family, None, comps, single=False)


def plan_quantize(ckpt: Checkpoint, source: QuantSource | Detection, policy: Policy, single_file: str | None = None,
                  scan: bool = True, progress: Callable[[int], None] | None = None) -> Plan:
    src = source_from_detection(ckpt, source) if isinstance(source, Detection) else source
    if policy.backend != "gguf":  # quantized safetensors for ComfyUI, bitsandbytes, quanto (quant/layerwise.py)
        from ckptkit.quant.layerwise import plan_layerwise

        return plan_layerwise(ckpt, src, policy, single_file)
    rules = policy.compiled_rules()
    plan = Plan("quantize", str(ckpt.path), [], info={"family": src.family, "variant": src.variant,
                                                      "layout": "comfy", "components": {}})
    plan.dropped.update(src.dropped)
    comps = src.components
    names = [c.name for c, *_ in comps]
    asked = get_client(policy.client)
    bundle = bool(single_file) and single_file.endswith(".gguf") and len(comps) > 1
    if bundle and not asked.bundle:
        raise CkptError(f"{single_file}: the source holds {len(comps)} components ({', '.join(names)}); "
                        f"{asked.title} loads one component per GGUF: give a directory as "
                        "output, or --client sdcpp for stable-diffusion.cpp's one-file bundle")
    if bundle and src.spec is None:
        raise CkptError(f"{single_file}: a one-file bundle needs the family's bundle prefixes, and this model "
                        "is of no known family (--family NAME)")
    if bundle and src.family in asked.component_files_families:
        raise CkptError(f"{single_file}: {asked.title} runs {src.spec.title} from component files (the diffusion "
                        "model, text encoder and VAE each its own file), not a one-file bundle: give a directory "
                        "as output")
    if single_file and len(comps) != 1 and not bundle:
        raise CkptError(f"the source holds {len(comps)} components ({', '.join(names)}); give a directory as output")
    unknown = set(policy.components) - set(names)
    if unknown:
        raise CkptError(f"--component {', '.join(sorted(unknown))}: not in this source (it has {', '.join(names)})")
    requests = {c.name: policy.request_for(c, src.single) for c, *_ in comps}
    from ckptkit.quant import imatrix

    imat = imatrix.load(policy.imatrix) if policy.imatrix else None
    client_imat: dict[str, imatrix.Imatrix] = {}  # a client's own default weights, loaded once
    if not any(requests.values()):
        raise CkptError("nothing to quantize: give --type (diffusion model) or --component NAME=TYPE")
    if policy.diffusion_model and not src.single and not any(c.role == "diffusion_model" for c, *_ in comps):
        raise CkptError(f"--type sets the diffusion model's type, and this source has none (it has "
                        f"{', '.join(names)}): use --component NAME=TYPE")
    single_fmt = None
    bundled: list[OutputFile] = []
    carried_all: dict[str, dict] = {}
    if single_file:
        single_fmt = "gguf" if single_file.endswith(".gguf") else "safetensors"
    if single_file and not bundle:
        request = requests[names[0]]
        if single_fmt == "safetensors" and request is not None and request.quantized:
            raise CkptError(f"{single_file}: {request.name} is a GGUF type; name the output .gguf")
    for comp, prefix, naming_in, config in comps:
        naming = target_naming(comp, "original" if bundle else "comfy")  # a bundle: OpenCLIP as OpenCLIP
        cmap = map_component(ckpt, comp, prefix, naming_in, naming, src.exclude, config)
        plan.dropped.update(cmap.dropped)
        carried = config_to_carry(ckpt, comp, prefix, naming_in, cmap, src.exclude, config)
        request = requests[comp.name]
        not_written = {}  # a request the client cannot take: what was asked and why it was not done
        gguf = (request is not None and (request.quantized or single_fmt == "gguf")) or bundle
        client = asked
        tokenizer = None
        if gguf and request is not None and not bundle:
            tokenizer = (t5_tokenizer_for(ckpt, comp, client, cmap.ops, policy.tokenizer, plan.notes)
                         if comp.layout == "hf_t5" else
                         llm_tokenizer_for(ckpt, comp, client, cmap.ops, policy.tokenizer))
        if gguf and comp.role == "diffusion_model":
            client = for_diffusion_model(policy.client, policy.arch or (src.spec.gguf_arch if src.spec else None),
                                         src.family, plan.notes)
        elif gguf and comp.role == "text_encoder" and (limit := gguf_text_limit(ckpt, comp, client, cmap.ops,
                                                                                tokenizer)):
            if client.text_encoder_fallback == "refuse" or single_fmt == "gguf":
                raise CkptError(f"--client {client.name}: {limit}; leave {comp.name} unquantized"
                                + (" (or name another --client)" if client.text_encoder_fallback == "refuse" else
                                   ", or write it as .safetensors"))
            why = (limit if comp.layout in ("hf_llm", "hf_t5") else
                   f"{limit} (its text-encoder loader takes T5 and LLM archs only)")
            plan.notes.append(f"{comp.name}: {why}: written as safetensors, not {request.name}")
            not_written = {"asked": request.name, "not_done": why}
            gguf, request = False, None
        path = single_file or f"{comp.name}.{'gguf' if gguf else 'safetensors'}"
        ops = {}
        for name, e in cmap.ops.items():
            if name.endswith(POSITION_IDS):  # a buffer loaders rebuild; bundles often carry a broken float copy
                for source in e.sources():  # (and a diffusers source has none: same bytes from every form)
                    plan.dropped[source] = "position_ids: not written (loaders rebuild them)"
            else:
                ops[name] = e
        bundle_prefix = comp.prefix if bundle else ""  # a bundle's names: the family's prefixes, as sd.cpp reads them
        vision = {}  # Qwen2.5-VL's vision tower: an mmproj GGUF beside the text encoder's (_mmproj_output)
        if gguf and request is not None and comp.layout == "hf_llm":
            ops, vision = _llm_text_tower(comp, ops, plan, mmproj=not bundle)
        if not gguf:
            out = _plain_output(ckpt, comp, ops, request, policy, path)
        elif request is None:  # a component of a bundle left as it is stored
            out = _kept_gguf(ckpt, comp, ops, path, bundle_prefix)
        else:
            comp_imat = imat
            if comp_imat is None and client.importance:
                if client.importance not in client_imat:
                    client_imat[client.importance] = imatrix.load(client.importance)
                    plan.notes.append(f"{client.title}'s convert quantizes with importance weights "
                                      f"'{client.importance}': so do we (ggml's weighted search)")
                comp_imat = client_imat[client.importance]
            out = _gguf_output(ckpt, src, comp, ops, request, rules, path, scan, progress, plan.notes,
                               policy.force_vae, client, comp_imat, bundle_prefix)
            if tokenizer is not None:  # what llama.cpp writes with the model, and ComfyUI-GGUF reads back
                out.kv.update(tokenizer.kv)
                plan.notes.append(f"{comp.name}: {tokenizer.describe()}")
            if client.names == "diffusers" and comp.role == "diffusion_model":
                out = _in_diffusers_names(ckpt, out, map_component(ckpt, comp, prefix, naming_in, "diffusers",
                                                                   src.exclude, config))
            if client.config_beside and comp.role == "diffusion_model" and not single_file:
                _config_beside(plan, ckpt, comp, prefix, naming_in, config, src.exclude, client)
        if carried and bundle:
            carried_all[comp.name] = carried
        elif carried:  # what the weights cannot tell travels with the file (convert/configs.py)
            (out.kv if out.format == "gguf" else out.metadata).update(metadata_value({comp.name: carried}))
        if out.format == "gguf" and policy.arch:
            out.gguf_arch = policy.arch
        elif out.format == "gguf" and comp.role == "unknown":
            out.gguf_arch = "unknown"
            plan.notes.append(f"warning: {comp.name}: unknown architecture; general.architecture is 'unknown', "
                              "which ComfyUI-GGUF refuses to load (name it with --arch NAME)")
        (bundled if bundle else plan.outputs).append(out)
        plan.info["components"][comp.name] = {"role": comp.role, "file": path, "naming": out.layout if out.layout != "comfy" else naming,
                                              "diffusers_class": comp.diffusers_class,
                                              "policy": {**policy_report(out, request, rules), **not_written},
                                              **({"tokenizer": tokenizer.summary()} if tokenizer is not None
                                                 and out.format == "gguf" else {}),
                                              **({"client": client.name} if out.format == "gguf" else {})}
        if vision:
            plan.outputs.append(_mmproj_output(ckpt, comp, ops, vision, request, path, scan, progress, plan))
    if policy.tokenizer and not any("tokenizer" in c for c in plan.info["components"].values()):
        plan.notes.append(f"--tokenizer {policy.tokenizer}: not used (only an arch-llama LLM or a UMT5 text encoder "
                          f"written as GGUF for {asked.title} carries one)")
    if not bundle and src.family in asked.one_file_families and any(o.format == "gguf" for o in plan.outputs):
        plan.notes.append(f"warning: {asked.title} loads {src.spec.title} only from one file (it tells the version "
                          f"by the text encoders' bundle names): merge the component set with `ckptkit merge SET "
                          f"-o FILE.gguf --client {asked.name}`, or quantize the bundle with -o FILE.gguf")
    if bundle:
        plan.outputs.append(_bundle(single_file, bundled, src, requests, carried_all))
        plan.info["layout"] = "original"
        plan.notes.append(f"one GGUF bundle, every component under the family's bundle prefix as "
                          f"stable-diffusion.cpp's convert writes one: sd -m {single_file}")
    if imat is not None:
        weighted = sum(1 for o in plan.outputs for t in o.tensors if t.importance is not None)
        how = ("all ones, as stable-diffusion.cpp's convert passes them" if imat.source == "ones" else
               f"{imat.source}: {len(imat.used)} of {weighted} quantized tensors have an entry, the rest all ones")
        plan.notes.append(f"importance weights ({how}): ggml's weighted search for {weighted} tensors "
                          "(Q8_0 has none: its bytes do not change)")
        plan.info["imatrix"] = imat.source
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


def _kept_gguf(ckpt, comp, ops, path: str, prefix: str) -> OutputFile:
    """A bundle's component with no request: each tensor in its stored float type (what sd.cpp's
    convert does with a tensor no --type or rule names), other dtypes as F32."""
    src_shapes = {n: t.shape for n, t in ckpt.tensors.items()}
    tensors = []
    for name, e in ops.items():
        sdt = source_dtype(ckpt, e)
        dtype = sdt if sdt in PLAIN else "F32"
        tensors.append(TensorOp(prefix + name, e, expr.shape_of(e, src_shapes), sdt, dtype, "kept"))
    return OutputFile(path, comp.name, "original", tensors, format="gguf")


def _bundle(path: str, parts: list[OutputFile], src: QuantSource, requests: dict, carried: dict) -> OutputFile:
    """One GGUF of every component: sd.cpp's one-file form (`sd -m FILE`), whose loader reads the
    component of each tensor from its name's prefix and no metadata."""
    diffusion = next((requests[c.name] for c, *_ in src.components if c.role == "diffusion_model"), None)
    kv: dict = {"general.quantization_version": 2}
    if diffusion is not None:
        kv["general.file_type"] = int(diffusion.file_type)
    for part in parts:
        kv.update({k: v for k, v in part.kv.items() if k.startswith("comfy.gguf.orig_shape.")})
    tensors = [stored_as_ggml(t, kv) for part in parts for t in part.tensors]  # kept components too
    return OutputFile(path, None, "original", tensors, format="gguf",
                      gguf_arch=src.spec.gguf_arch, kv={**kv, **metadata_value(carried)},
                      metadata={"ckptkit.family": src.family})


def _in_diffusers_names(ckpt, out: OutputFile, cmap) -> OutputFile:
    """The GGUF in the model class's own names, each tensor of the type decided for the original
    tensor it comes from (the policy speaks original names; a fused qkv split into q, k, v keeps its
    type, falling back where a part's rows do not fit). No orig_shape: nothing is reshaped."""
    src_shapes = {n: t.shape for n, t in ckpt.tensors.items()}
    decided = {}
    for t in out.tensors:
        for source in t.expr.sources():
            decided.setdefault(source, t)
    tensors = []
    for name, e in cmap.ops.items():
        if name.endswith(POSITION_IDS):
            continue
        shape, sdt = expr.shape_of(e, src_shapes), source_dtype(ckpt, e)
        origin = next((decided[s] for s in e.sources() if s in decided), None)
        weights = None
        if origin is None or sdt not in FLOAT_CODES:  # a made tensor (no source), or not a float
            dtype, note = ("F32" if sdt not in FLOAT_CODES or len(shape) <= 1 else keep_type(sdt, shape, name)), "made"
        else:
            dtype, note = origin.dtype, f"{origin.note} (as {origin.name})"
            weights = origin.importance
            if dtype not in PLAIN and (len(shape) != 2 or not fits(dtype, shape)):
                dtype = fallback_for(dtype, shape) if len(shape) == 2 else keep_type(sdt, shape, name)
                note += f"; fallback {origin.dtype}->{dtype}"
            elif dtype in ("F16", "BF16") and origin.shape != shape and len(shape) <= 1:
                dtype = "F32"
        if weights is not None and (dtype in PLAIN or len(weights) != shape[-1]):
            weights = None if dtype in PLAIN else np.ones(shape[-1], np.float32)
        tensors.append(TensorOp(name, e, shape, sdt, dtype, note, weights))
    kv = {k: v for k, v in out.kv.items() if not k.startswith("comfy.gguf.orig_shape.")}
    return OutputFile(out.path, out.component, "diffusers", tensors, format="gguf", gguf_arch=out.gguf_arch, kv=kv,
                      metadata=out.metadata)


def _config_beside(plan: Plan, ckpt, comp, prefix: str, naming_in: str, config, exclude, client: Client) -> None:
    """<component>/config.json beside the GGUF, for `from_single_file(FILE, config=DIR)`: the model's
    config, resolved as every command resolves it (never guessed; when it cannot be, the notes say so)."""
    from ckptkit.convert.components import config_json, local_shapes, source_config
    from ckptkit.convert.configs import ConfigUndetermined

    try:
        values = source_config(comp, local_shapes(ckpt, prefix, set(exclude)), naming_in, config, ckpt)
    except ConfigUndetermined as exc:
        plan.notes.append(f"{comp.name}/config.json not written ({exc}); {client.title} then needs the model's config")
        return
    plan.sidecars[f"{comp.name}/config.json"] = config_json(comp, values)
    usage = client.usage.format(cls=comp.diffusers_class, file=f"{comp.name}.gguf", dir=comp.name)
    plan.notes.append(f"{comp.name}: for {client.title}: {usage}")


def _gguf_output(ckpt, src: QuantSource, comp, ops, request: Request, rules, path: str, scan: bool, progress,
                 notes: list[str], force_vae: bool, client: Client = DEFAULT_CLIENT, imat=None,
                 prefix: str = "") -> OutputFile:
    """One component as GGUF. With a `prefix` (a bundle's), names are the component's original
    names under it (T5 in transformers names, as sd.cpp's convert keeps a bundle's) and the client's
    rules see those full names, as sd.cpp's --tensor-type-rules do."""
    src_dtypes = {source_dtype(ckpt, e) for e in ops.values()}
    check_component_request(comp, request, src_dtypes & FLOAT_CODES, force_vae)
    src_shapes = {n: t.shape for n, t in ckpt.tensors.items()}
    conv_reshape = client.conv_reshape and comp.role == "diffusion_model" and src.family in CONV_RESHAPE_FAMILIES
    kv: dict = {"general.quantization_version": 2, "general.file_type": int(request.file_type)}
    llm = _llm_gguf(ckpt, comp, ops, kv) if comp.layout == "hf_llm" and not prefix else None
    tensors = []
    edges = edge_prefixes(comp, ops) if not prefix and not llm else ()
    for name, e in ops.items():
        try:
            final = prefix + name if prefix else llm.names[name] if llm else final_name(comp, name)
        except ValueError as exc:
            raise CkptError(f"{comp.name}: {exc}") from None
        if llm and llm.permute and (heads := llm_names.permuted_heads(final)):
            e = expr.fn("llama_permute", e, heads)  # llama.cpp's q/k order; ComfyUI-GGUF's llama_permute undoes it
        if len(final.encode("utf-8")) > MAX_NAME_BYTES:
            raise CkptError(f"{comp.name}: tensor name {final!r} is {len(final.encode('utf-8'))} bytes; ggml "
                            f"cannot load GGUF tensor names over {MAX_NAME_BYTES} bytes")
        shape = expr.shape_of(e, src_shapes)
        sdt = source_dtype(ckpt, e)
        if sdt not in FLOAT_CODES:
            d = Decision("F32", f"{sdt} tensor stored as F32", shape)
            notes.append(f"{comp.name}: {final} ({sdt}) stored as F32: GGUF has no {sdt} type ComfyUI reads")
        else:
            d = (decide_sdcpp(final, shape, sdt, comp, request, rules) if client.type_rules == "sdcpp" else
                 decide(final, shape, sdt, comp, request, rules, conv_reshape, edges))
        if scan and (d.quantized or (d.type == "F16" and sdt not in ("F16",))):
            d = _checked(ckpt, e, d, sdt, shape, progress, notes, comp.name, final)
        if client.unit_dims == "ggml" and unit_dims_trimmed(d.stored_shape) != d.stored_shape:
            d = replace(d, stored_shape=unit_dims_trimmed(d.stored_shape), reshaped=True)
        if d.reshaped:
            e = expr.reshape(e, d.stored_shape)
            kv[f"comfy.gguf.orig_shape.{final}"] = list(shape)
        key = final if prefix else imatrix_key(comp.name, final)
        weights = imat.for_tensor(key, d.stored_shape[-1]) if imat is not None and d.quantized else None
        tensors.append(TensorOp(final, e, d.stored_shape, sdt, d.type, d.reason, weights))
    if request.quantized and not any(t.dtype not in PLAIN for t in tensors):
        why = (f"stable-diffusion.cpp's convert would leave every tensor as stored: rows that do not divide "
               f"into {request.base} blocks, or names it keeps" if client.type_rules == "sdcpp" else
               "all are 1-D, small, high-precision, non-finite or of unfit row length")
        raise CkptError(f"{comp.name}: asked for {request.name} but no tensor can be quantized ({why})")
    spec = src.spec
    arch = spec.gguf_arch if comp.role == "diffusion_model" and spec else text_encoder_arch(comp)
    return OutputFile(path, comp.name, "comfy", tensors, format="gguf", gguf_arch=arch, kv=kv,
                      metadata={"ckptkit.component": comp.name})


def gguf_text_limit(ckpt, comp: ComponentSpec, client: Client, ops: dict, tokenizer=None) -> str | None:
    """Why `client` cannot load this text encoder from the GGUF we would write; None: it can.
    `tokenizer`: the llm_tokenizer.GGUFTokenizer written with it (llm_tokenizer_for), if any."""
    arch = text_encoder_arch(comp)
    if not client.loads_text_encoder(comp.layout, arch):
        limit = f"{client.title} loads no {comp.name} text encoder from GGUF"
        if comp.layout == "hf_llm" and client.text_archs is not None:
            limit += (f" (its text-encoder loader takes general.architecture {', '.join(sorted(client.text_archs))}"
                      + ("; Gemma-2 only on its unmerged gemma_tenc branch" if comp.name == "gemma2" else "") + ")")
        return limit
    if comp.layout == "hf_llm" and client.name == "comfy" and arch == "llama" and tokenizer is None:
        shape = _llm_embedding_shape(ckpt, ops)
        if shape in llm_names.COMFY_TEKKEN_SHAPES:
            return (f"{client.title} loads no {comp.name} text encoder of a {shape} embedding from a GGUF without "
                    "its tokenizer: for that shape (Mistral-Small) it rebuilds the tekken tokenizer from "
                    "tokenizer.ggml.* metadata, which the weights do not hold, and refuses a file without it; "
                    "give the model's tokenizer with --tokenizer PATH (its tokenizer.json or tekken.json, or a "
                    "folder holding one, e.g. a diffusers FLUX.2 folder's tokenizer/) to write it as GGUF")
    if comp.layout == "hf_t5" and client.name == "comfy" and (
            shape := _t5_embedding_shape(ckpt, ops)) in t5_names.COMFY_SPIECE_SHAPES:
        if tokenizer is None:
            return (f"{client.title} loads no {comp.name} text encoder of a {shape} embedding from a GGUF without "
                    "its tokenizer: for that shape (UMT5-XXL) it rebuilds UMT5's sentencepiece tokenizer from "
                    "tokenizer.ggml.* metadata, which the weights do not hold, and refuses a file without it; "
                    "give the model's tokenizer with --tokenizer PATH (its spiece.model, or a folder holding it, "
                    "e.g. a diffusers Wan folder's tokenizer/) to write it as GGUF")
        if missing := tokenizer.comfy_missing():
            return (f"{client.title} rebuilds the sentencepiece tokenizer of a {shape} embedding (UMT5-XXL) from "
                    f"tokenizer.ggml.* and {tokenizer.source} gives no {', '.join(missing)} (give the folder with "
                    "its tokenizer_config.json, or the model's spiece.model, with --tokenizer PATH)")
    return None


def _t5_embedding_shape(ckpt, ops: dict) -> tuple[int, ...] | None:
    embed = next((n for n in ("shared.weight", "encoder.embed_tokens.weight") if n in ops), None)
    info = ckpt.tensors.get(ops[embed].sources()[0]) if embed is not None else None
    return tuple(info.shape) if info is not None else None


def _llm_embedding_shape(ckpt, ops: dict) -> tuple[int, ...] | None:
    embed = llm_names.text_prefix(ops) + "embed_tokens.weight"
    info = ckpt.tensors.get(ops[embed].sources()[0]) if embed in ops else None
    return tuple(info.shape) if info is not None else None


def llm_tokenizer_for(ckpt, comp: ComponentSpec, client: Client, ops: dict, explicit: str | None):
    """The tokenizer an arch-llama LLM text encoder's GGUF carries (llm_tokenizer.py): `--tokenizer`,
    else one found beside the source; None where there is none, or the client reads no such GGUF.
    One whose token count is not the embedding's row count is refused."""
    from ckptkit.quant import llm_tokenizer

    arch = text_encoder_arch(comp)
    if comp.layout != "hf_llm" or arch != "llama" or not client.loads_text_encoder(comp.layout, arch):
        return None
    path = llm_tokenizer.locate(explicit, getattr(ckpt, "path", None))
    if path is None:
        return None
    tok = llm_tokenizer.load(path, arch)
    shape = _llm_embedding_shape(ckpt, ops)
    if shape is not None:
        tok.check_rows(comp.name, shape[0])
    return tok


def t5_tokenizer_for(ckpt, comp: ComponentSpec, client: Client, ops: dict, explicit: str | None,
                     notes: list[str]):
    """The tokenizer a UMT5 text encoder's GGUF carries (t5_tokenizer.py): `--tokenizer`, else one
    found beside the source; None where there is none, or the client reads no such GGUF. Fewer pieces
    than embedding rows are padded with [PAD{i}] as llama.cpp pads; more, or far fewer, are refused
    (one found beside the source and not asked for is left out instead, said in `notes`: such a
    UMT5's GGUF was written without one before, and only UMT5-XXL's needs one for ComfyUI-GGUF)."""
    from ckptkit.quant import t5_tokenizer

    arch = text_encoder_arch(comp)
    if (comp.layout != "hf_t5" or comp.diffusers_class != "UMT5EncoderModel"
            or not client.loads_text_encoder(comp.layout, arch)):
        return None
    path = t5_tokenizer.locate(explicit, getattr(ckpt, "path", None))
    shape = _t5_embedding_shape(ckpt, ops) if path is not None else None
    if shape is None:
        return None
    try:
        return t5_tokenizer.load(path, shape[0], comp.name, arch)
    except CkptError as exc:
        if explicit is not None:
            raise
        notes.append(f"{comp.name}: the tokenizer found beside the source is not written into its GGUF: {exc}")
        return None


def _llm_text_tower(comp: ComponentSpec, ops: dict, plan: Plan, mmproj: bool = True) -> tuple[dict, dict]:
    """The text tower of an LLM text encoder, for its GGUF, and Qwen2.5-VL's vision tower for the
    mmproj GGUF beside it (`mmproj`: not in a one-file bundle). A vision tower or projector that no
    file takes is no part of what ComfyUI-GGUF's text-encoder loader reads (said in the notes)."""
    kept = {n: e for n, e in ops.items() if not llm_names.is_vision(n)}
    left = [n for n in ops if n not in kept]
    if not left:
        return ops, {}
    unfit = mmproj_names.unfit(left) if comp.name == "qwen25vl" else None
    if comp.name == "qwen25vl" and mmproj and unfit is None:
        return kept, {n: ops[n] for n in left}
    if comp.name == "qwen25vl":
        unfit = unfit or "a one-file bundle holds no mmproj"
        why = f"Qwen2.5-VL vision tower: not in the LLM GGUF, and no mmproj GGUF written ({unfit})"
        plan.notes.append(f"{comp.name}: the vision tower ({len(left)} tensors) is not written ({unfit}): ComfyUI-GGUF "
                          "reads it from a sibling '*mmproj*.gguf' (without one it warns that Qwen-Image-Edit will be "
                          "broken). Qwen-Image text-to-image uses the text tower only; for Qwen-Image-Edit keep the "
                          "safetensors text encoder or add a published mmproj GGUF")
    else:
        why = f"{comp.name} vision tower / projector: not part of the text encoder GGUF (llama.cpp's text model leaves it out)"
        plan.notes.append(f"{comp.name}: {len(left)} vision-tower / projector tensors left out of the text encoder GGUF")
    plan.dropped.update({n: why for n in left})
    return kept, {}


def _mmproj_output(ckpt, comp: ComponentSpec, text: dict, vision: dict, request: Request, te_path: str, scan: bool,
                   progress, plan: Plan) -> OutputFile:
    """Qwen2.5-VL's vision tower as llama.cpp's clip mmproj GGUF, beside the text encoder's and named
    so that ComfyUI-GGUF's qwen2vl loader finds it (quant/mmproj_names.py: names, KV and types as
    llama.cpp's convert_hf_to_gguf.py writes them). Each tensor is an expression over the source
    (q/k/v slices of the fused qkv, the two temporal halves of the patch embedding). The manifest
    lists it as `<component>_mmproj`, role "mmproj"."""
    src_shapes = {n: t.shape for n, t in ckpt.tensors.items()}
    shapes = {n: expr.shape_of(e, src_shapes) for n, e in vision.items()}
    prefix = mmproj_names.vision_prefix(vision)
    canon = {mmproj_names.canonical(n, prefix): n for n in vision}
    blocks = mmproj_names.n_blocks(canon)
    ftype = mmproj_names.file_type(request.base, {source_dtype(ckpt, e) for e in vision.values()} & FLOAT_CODES)
    tensors = []
    for name, source in canon.items():
        try:
            made = mmproj_names.parts(name, vision[source], shapes[source], blocks)
        except ValueError as exc:
            raise CkptError(f"{comp.name}: {exc}") from None
        tensors += [_mmproj_tensor(ckpt, comp, final, part, src_shapes, ftype, scan, progress, plan.notes)
                    for final, part in made]
    vision_config, eps = _vision_config(ckpt, comp, {**text, **vision}, src_shapes)
    kv, missing = mmproj_names.hparams({n: shapes[s] for n, s in canon.items()}, blocks, vision_config, eps, ftype)
    path = mmproj_names.file_name(te_path, ftype)
    plan.notes.append(f"{comp.name}: the vision tower ({len(vision)} tensors) is written to {path}, llama.cpp's clip "
                      f"mmproj ({ftype}), beside {te_path}: ComfyUI-GGUF's qwen2vl loader finds it there by name "
                      f"(Qwen-Image-Edit needs it); stable-diffusion.cpp takes it as --llm_vision {path}")
    if missing:
        plan.notes.append(f"warning: {path}: {', '.join(missing)} not written (no config gives them, and the tower is "
                          "not the released Qwen2.5-VL one's shape): llama.cpp's clip loader needs them (give the "
                          "model's config.json with --config); ComfyUI-GGUF does not read them")
    out = OutputFile(path, f"{comp.name}_mmproj", "comfy", tensors, format="gguf", gguf_arch="clip", kv=kv)
    plan.info["components"][out.component] = {"role": "mmproj", "file": path, "naming": "llama.cpp",
                                              "policy": policy_report(out, REQUESTS[ftype.lower()])}
    return out


def _mmproj_tensor(ckpt, comp: ComponentSpec, name: str, e, src_shapes: dict, ftype: str, scan: bool, progress,
                   notes: list[str]) -> TensorOp:
    """One mmproj tensor, typed as llama.cpp's converter types it (mmproj_names.tensor_type), and
    scanned as every quantized tensor is (non-finite values, fp16 overflow: _checked)."""
    shape, sdt = expr.shape_of(e, src_shapes), source_dtype(ckpt, e)
    d = Decision(*mmproj_names.tensor_type(name, shape, ftype), shape)
    if sdt not in FLOAT_CODES:
        d = Decision("F32", f"{sdt} tensor stored as F32", shape)
    elif scan and (d.quantized or (d.type == "F16" and sdt != "F16")):
        d = _checked(ckpt, e, d, sdt, shape, progress, notes, comp.name, name)
    return TensorOp(name, e, shape, sdt, d.type, d.reason)


def _vision_config(ckpt, comp: ComponentSpec, ops: dict, src_shapes: dict) -> tuple[dict, float]:
    """Qwen2.5-VL's vision_config and rms_norm_eps as a config says them (the file's own, --config);
    ({}, 1e-6: convert_hf_to_gguf.py's default) where none does."""
    from ckptkit.convert.components import resolve_component_config
    from ckptkit.convert.configs import AMBIGUOUS, UNDETERMINED

    shapes = {n: expr.shape_of(e, src_shapes) for n, e in ops.items()}
    resolved = resolve_component_config(comp, shapes, "original", None, ckpt, strict=False)

    def known(key):
        value = resolved.values.get(key)
        return value if resolved.sources.get(key) not in (UNDETERMINED, AMBIGUOUS, None) else None

    vision, eps = known("vision_config"), known("rms_norm_eps")
    return (vision if isinstance(vision, dict) else {}), (eps if isinstance(eps, float) else 1e-6)


@dataclass
class _LLMGGUF:
    names: dict[str, str]  # tensor name -> llama.cpp name
    permute: bool  # q/k in llama.cpp's order (arch llama)


def _llm_gguf(ckpt, comp: ComponentSpec, ops: dict, kv: dict) -> _LLMGGUF:
    """llama.cpp names, the q/k permute and the hyper-parameters the shapes give, for an LLM text
    encoder's GGUF. Arch llama is refused where ComfyUI-GGUF's fixed 32/8-head un-permute would be
    wrong (llm_names.check_comfy_heads). `ckptkit.hf_prefix` records the prefix the tower sat under,
    so reading the file back gives the source's own names (ComfyUI-GGUF's are the `model.` ones)."""
    arch = llm_names.ARCHS.get(comp.name)
    if arch is None:
        raise CkptError(f"{comp.name}: no GGUF architecture a text-encoder loader takes; keep it as safetensors")
    shapes = {n: expr.shape_of(e, {k: t.shape for k, t in ckpt.tensors.items()}) for n, e in ops.items()}
    prefix = llm_names.text_prefix(shapes)
    blocks = llm_names.n_blocks(shapes, prefix)
    names = {}
    for n in ops:
        try:
            names[n] = llm_names.to_llama(comp.name, n, prefix, blocks)
        except ValueError as exc:
            raise CkptError(f"{comp.name}: {exc}") from None
    layer = f"{prefix}layers.0."
    q_rows, k_rows = shapes[layer + "self_attn.q_proj.weight"][0], shapes[layer + "self_attn.k_proj.weight"][0]
    a = arch[0]
    kv.update({f"{a}.block_count": blocks, f"{a}.embedding_length": shapes[prefix + "embed_tokens.weight"][1],
               f"{a}.feed_forward_length": shapes[layer + "mlp.gate_proj.weight"][0], "ckptkit.hf_prefix": prefix})
    q_norm = shapes.get(layer + "self_attn.q_norm.weight")
    if q_norm is not None:
        kv.update({f"{a}.attention.head_count": q_rows // q_norm[0], f"{a}.attention.head_count_kv": k_rows // q_norm[0],
                   f"{a}.attention.key_length": q_norm[0], f"{a}.attention.value_length": q_norm[0]})
    if arch[2]:
        llm_names.check_comfy_heads(comp.name, q_rows, k_rows, _declared_heads(ckpt, comp, shapes))
        heads, kv_heads = llm_names.COMFY_HEADS
        kv.update({f"{a}.attention.head_count": heads, f"{a}.attention.head_count_kv": kv_heads})
    return _LLMGGUF(names, arch[2])


def _declared_heads(ckpt, comp: ComponentSpec, shapes: dict) -> tuple[int | None, int | None]:
    """(query heads, key/value heads) as a config says them (the file's own, --config); None where
    nothing does (the weights cannot tell them)."""
    from ckptkit.convert.components import resolve_component_config
    from ckptkit.convert.configs import AMBIGUOUS, UNDETERMINED

    resolved = resolve_component_config(comp, shapes, "original", None, ckpt, strict=False)
    out = []
    for key in ("num_attention_heads", "num_key_value_heads"):
        value = resolved.values.get(key)
        known = resolved.sources.get(key) not in (UNDETERMINED, AMBIGUOUS, None)
        out.append(value if known and isinstance(value, int) else None)
    return out[0], out[1]


def stored_as_ggml(t: TensorOp, kv: dict) -> TensorOp:
    """`t` in the dims ggml's own writer stores (sd.cpp reads ne as written), its full shape kept
    in comfy.gguf.orig_shape for readers that honour it."""
    stored = unit_dims_trimmed(t.shape)
    if stored == t.shape:
        return t
    kv[f"comfy.gguf.orig_shape.{t.name}"] = list(t.shape)
    return replace(t, expr=t.expr if t.stored else expr.reshape(t.expr, stored), shape=stored)


def unit_dims_trimmed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape ggml's own writer stores (ggml_n_dims: no outer dims of 1 beyond the first),
    e.g. SD3's pos_embed (1, N, C) -> (N, C)."""
    n = max((i + 1 for i, d in enumerate(reversed(shape)) if d != 1), default=1)
    return tuple(shape[len(shape) - n:]) if shape else shape


def _checked(ckpt, e, d: Decision, sdt: str, shape, progress, notes: list[str], component: str,
             name: str) -> Decision:
    """Never write inf/NaN scales: a tensor with non-finite values stays in high precision, and one
    with values beyond fp16's range is quantized on trial, kept F32 if any block's fp16 scale
    overflows (or if it was to be cast to F16). Reported in the notes."""
    label = f"{component}: {name}"
    t = e.evaluate(ckpt.load)
    if progress:
        progress(t.numel() * t.element_size())
    if not t.numel():
        return d
    amax = float(t.abs().amax())  # NaN propagates through amax, so this one pass finds NaN and inf
    if not math.isfinite(amax):
        keep = "F32" if sdt in ("F32", "F64") else keep_type(sdt, shape, name)
        notes.append(f"warning: {label}: non-finite values (NaN/Inf); stored as {keep}, not {d.type}")
        return Decision(keep, "non-finite values: not quantized", shape)
    if amax <= FP16_MAX:
        return d
    if d.type == "F16":
        notes.append(f"warning: {label}: |x| up to {amax:.3g} overflows fp16; stored as F32")
        return Decision("F32", "values overflow fp16: kept F32", shape)
    if d.type in PLAIN or not scales_overflow(t, d):
        return d
    notes.append(f"warning: {label}: |x| up to {amax:.3g} would overflow {d.type}'s fp16 block scales; stored as F32")
    return Decision("F32", f"values overflow {d.type}'s fp16 scales: kept F32", shape)


def scales_overflow(t: torch.Tensor, d: Decision) -> bool:
    """Quantize on trial and see whether any block dequantizes to inf/NaN (an fp16 scale overflowed)."""
    import numpy as np

    from ckptkit.quant import ggml

    rows = t.detach().to(torch.float32).contiguous().numpy().reshape(-1, d.stored_shape[-1])
    q = ggml.quantize(rows, d.type)
    return not bool(np.isfinite(ggml.dequantize(q, d.type, rows.shape)).all())


def policy_report(out: OutputFile, request: Request | None, rules=()) -> dict:
    """Per component: what was asked, tensors and bytes per type, what stayed in high precision
    and why, and which tensors fell back to another type (row length, non-finite values)."""
    from ckptkit.units import tally

    types = tally((t.dtype, t.nbytes) for t in out.tensors)
    kept: Counter = Counter()
    fallbacks: Counter = Counter()
    quantized = request is not None and request.quantized
    for t in out.tensors:
        kind = t.note.split(";")[0]
        if quantized and t.dtype in PLAIN:
            kept[kind] += 1
        if "; fallback " in t.note:
            fallbacks[t.note.split("; fallback ")[1].split(":")[0]] += 1
    return {"requested": request.name if request else "keep", "format": out.format,
            "quantized_tensors": sum(v["tensors"] for k, v in types.items() if k not in PLAIN) if out.format == "gguf" else 0,
            "types": types, "kept_high_precision": dict(kept), "fallbacks": dict(fallbacks),
            # what verify's coverage check allows besides the request (rules may name any type)
            **({"rule_types": sorted({t for _, t in rules})} if rules and quantized else {})}
