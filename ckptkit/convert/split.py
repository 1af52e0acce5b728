"""Split planner: a bundled checkpoint (or any detected checkpoint) -> one file per component.

Layouts of the output:
  comfy     (default) what ComfyUI / stable-diffusion.cpp load from separate files: diffusion
            model and VAE in original names (prefix stripped), text encoders in transformers
            layout (OpenCLIP converted, as ComfyUI's own clip_g files are)
  original  the names inside the bundle, prefix stripped, no conversion
  diffusers one folder per component with config.json, plus model_index.json and a scheduler
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ckptkit.engine import expr
from ckptkit.convert.components import config_json, config_to_carry, map_component, output_path, shipped_config, target_naming
from ckptkit.convert.configs import metadata_value
from ckptkit.engine.ops import CAST_TARGETS, tensor_ops
from ckptkit.engine.plan import OutputFile, Plan
from ckptkit.errors import CkptError
from ckptkit.families.detect import Detection
from ckptkit.families.spec import ComponentSpec
from ckptkit.formats.base import Checkpoint

LAYOUTS = ("comfy", "original", "diffusers")


@dataclass
class SplitOptions:
    layout: str = "comfy"
    components: tuple[str, ...] = ()  # empty: all found
    dtype: str = "keep"
    extract_ema: bool = False
    fix_position_ids: bool = False
    prefixes: dict[str, str] | None = None  # NAME -> PREFIX, to split a file of unknown family


def _ema_ops(ckpt: Checkpoint, det: Detection, ops: dict[str, expr.Expr]) -> dict[str, expr.Expr]:
    """Swap each diffusion-model source for its EMA copy (`model_ema.<name without dots>`)."""
    spec = det.spec
    prefix = det.components["diffusion_model"]
    ema = {n[len(spec.ema_prefix) + len("diffusion_model"):]: n for n in det.ema}
    missing = []

    def swap(name: str) -> str:
        key = name[len(prefix):].replace(".", "")
        if key not in ema:
            missing.append(name)
            return name
        return ema[key]

    out = {n: expr.rename(e, swap) for n, e in ops.items()}
    if missing:
        raise CkptError(f"--extract-ema: no EMA copy of {len(missing)} tensors (e.g. {missing[0]})")
    return out


def plan_split(ckpt: Checkpoint, det: Detection, opts: SplitOptions) -> Plan:
    if opts.layout not in LAYOUTS:
        raise CkptError(f"unknown layout {opts.layout!r}; use one of {', '.join(LAYOUTS)}")
    if opts.dtype not in CAST_TARGETS:
        raise CkptError(f"unknown dtype {opts.dtype!r}; use one of {', '.join(CAST_TARGETS)}")
    spec = det.spec
    if spec is None and opts.prefixes:
        return plan_split_by_prefix(ckpt, opts)
    if spec is None:
        raise CkptError(f"{ckpt.path}: family unknown, so its components are unknown; split it by explicit "
                        "prefixes instead: --layout original --prefix NAME=PREFIX (repeatable)")
    wanted = list(opts.components) or list(det.components)
    for name in wanted:
        if name not in det.components:
            raise CkptError(f"component {name!r} is not in this file (it has {', '.join(det.components)})")
    if opts.extract_ema and not det.ema:
        raise CkptError("--extract-ema: this file has no EMA copy")
    cast = CAST_TARGETS[opts.dtype]
    plan = Plan("split", str(ckpt.path), [], info={"family": det.family, "variant": det.variant,
                                                   "layout": opts.layout, "components": {}})
    exclude = set(det.junk) | set(det.ema) | set(det.unclaimed)
    for name in det.junk:
        plan.dropped[name] = "junk (training/schedule buffer)"
    for name in det.unclaimed:
        plan.dropped[name] = "under no known component prefix"
    if not opts.extract_ema:
        for name in det.ema:
            plan.dropped[name] = "EMA copy (use --extract-ema to keep it instead)"
    for comp in spec.components:
        if comp.name not in det.components:
            continue
        prefix = det.components[comp.name]
        if comp.name not in wanted:
            for n in ckpt.tensors:
                if det.component_of(n) == comp.name and n not in exclude:
                    plan.dropped[n] = "component not requested"
            continue
        config = shipped_config(ckpt, det.names, prefix)
        naming = target_naming(comp, opts.layout)
        cmap = map_component(ckpt, comp, prefix, det.names, naming, exclude, config)
        plan.dropped.update(cmap.dropped)
        ops = cmap.ops
        if opts.extract_ema and comp.role == "diffusion_model":
            ops = _ema_ops(ckpt, det, ops)
            plan.notes.append("diffusion model written from its EMA copy")
            for n in sorted({s for e in cmap.ops.values() for s in e.sources()}):
                plan.dropped[n] = "live weights replaced by their EMA copy (--extract-ema)"
        path = output_path(comp, opts.layout)
        tensors = tensor_ops(ckpt, ops, cast, opts.fix_position_ids, plan.notes, comp.name)
        metadata = {"ckptkit.component": comp.name, "ckptkit.family": det.family}
        if opts.layout != "diffusers":  # a diffusers folder ships config.json instead
            from ckptkit.formats.scaled import carried_metadata

            carried = config_to_carry(ckpt, comp, prefix, det.names, cmap, exclude, config)
            metadata.update(metadata_value({comp.name: carried} if carried else {}))
            metadata.update(carried_metadata(ckpt, ops))  # ComfyUI's per-layer quantization, renamed
        plan.outputs.append(OutputFile(path, comp.name, naming if opts.layout != "comfy" else "comfy", tensors,
                                       metadata=metadata))
        plan.info["components"][comp.name] = {"role": comp.role, "file": path, "naming": naming,
                                              "diffusers_class": comp.diffusers_class}
        if opts.layout == "diffusers":
            plan.sidecars[f"{comp.diffusers_folder}/config.json"] = config_json(comp, cmap.config)
    if opts.layout == "diffusers":
        _pipeline_sidecars(plan, spec, [c for c in spec.components if c.name in wanted and c.name in det.components],
                           next((v for v in spec.variants if v.name == det.variant), None))
    return plan


def plan_split_by_prefix(ckpt: Checkpoint, opts: SplitOptions) -> Plan:
    """A file no family spec knows, split by the user's NAME=PREFIX pairs, names kept as they are."""
    if opts.layout != "original":
        raise CkptError("splitting by --prefix keeps names as they are: use it with --layout original")
    plan = Plan("split", str(ckpt.path), [], info={"family": None, "layout": "original", "components": {}})
    claimed: set[str] = set()
    for name, prefix in opts.prefixes.items():
        ops = {n[len(prefix):]: expr.src(n) for n in ckpt.tensors if n.startswith(prefix) and n not in claimed}
        if not ops:
            raise CkptError(f"--prefix {name}={prefix}: no tensor starts with {prefix!r}")
        claimed |= {e.args[0] for e in ops.values()}
        tensors = tensor_ops(ckpt, ops, CAST_TARGETS[opts.dtype], opts.fix_position_ids, plan.notes, name)
        plan.outputs.append(OutputFile(f"{name}.safetensors", name, "original", tensors,
                                       metadata={"ckptkit.component": name}))
        plan.info["components"][name] = {"role": None, "file": f"{name}.safetensors", "naming": "original"}
    for n in ckpt.tensors:
        if n not in claimed:
            plan.dropped[n] = "under no requested prefix"
    return plan


def _pipeline_sidecars(plan: Plan, spec, comps: list[ComponentSpec], variant=None) -> None:
    import diffusers

    from ckptkit.convert.models import model_class

    pipeline = (variant and variant.pipeline) or spec.pipeline
    scheduler = (variant and variant.scheduler) or spec.scheduler
    index = {"_class_name": pipeline, "_diffusers_version": diffusers.__version__, **spec.pipeline_config}
    for comp in comps:
        _, config_cls = model_class(comp.diffusers_class)
        index[comp.diffusers_folder] = ["transformers" if config_cls else "diffusers", comp.diffusers_class]
    if scheduler:
        index["scheduler"] = ["diffusers", scheduler["_class_name"]]
        sched = {**scheduler, "_diffusers_version": diffusers.__version__}
        plan.sidecars["scheduler/scheduler_config.json"] = json.dumps(sched, indent=2) + "\n"
    plan.sidecars["model_index.json"] = json.dumps(index, indent=2) + "\n"
