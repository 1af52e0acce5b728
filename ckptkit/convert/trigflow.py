"""TrigFlow planner: a Sana flow-matching transformer -> its TrigFlow (SANA-Sprint) checkpoint form.

What the plan does (domain notes §5; NVlabs/Sana `SanaMS.initialize`, `SanaMSCM`):
  * copies every tensor of the flow model, through the sana layout map, so an original (NVlabs) or a
    diffusers source gives either output layout; byte-for-byte, or cast with --dtype;
  * diffusers layout: flow Sana's `time_embed.emb.timestep_embedder.*` becomes `time_embed.timestep_embedder.*`
    (SanaCombinedTimestepGuidanceEmbeddings has no `emb.` level);
  * adds the guidance embedder (`time_embed.guidance_embedder.*` / original `cfg_embedder.mlp.*`) as NVlabs
    initialises it for Sprint training: linear_1.weight ~ N(0, 0.02) (seeded), linear_1.bias, linear_2.weight
    and linear_2.bias zero. The zero last layer makes the embedding exactly 0 whatever the guidance input, so
    conditioning = timestep embedding + 0 and the model computes the flow model's velocity exactly; the
    random first layer only lets training move linear_2 off zero;
  * `--with-logvar` (original layout only: diffusers has no place for it) adds the sCM training head
    `logvar_linear` (xavier-normal weight, seeded; zero bias), unused at inference;
  * QK norm is never added (it is not function-preserving): the output has it only where the source has it.

The time-embedding convention is carried, not changed (changing it is a fine-tune, not a remap): the
output's `timestep_scale` is the factor on flow time t the network embeds, 1000 for an original Sana and
1 for a dense-time Sprint teacher. diffusers' SanaSprintPipeline always feeds t and ignores
`timestep_scale` (pipeline_sana_sprint.py 0.42.1, `timestep=scm_timestep`), so for any scale but 1 the plan
carries a warning that the pipeline would run the model at the wrong time; `ckptkit sample` honours it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from ckptkit.engine import expr
from ckptkit.convert.components import config_json, map_component, shipped_config
from ckptkit.engine.expr import Expr
from ckptkit.convert.layouts import get_layout
from ckptkit.convert.models import diffusers_shapes
from ckptkit.convert.configs import metadata_value
from ckptkit.engine.plan import OutputFile, Plan, TensorOp
from ckptkit.engine.ops import CAST_TARGETS
from ckptkit.errors import CkptError
from ckptkit.families.common import SANA_SPRINT_SCHEDULER
from ckptkit.families.detect import Detection
from ckptkit.formats.base import Checkpoint
from ckptkit.formats.dtypes import DTYPES, FLOAT_CODES

SIGMA_DATA = SANA_SPRINT_SCHEDULER["sigma_data"]
GUIDANCE_EMBEDS_SCALE = 0.1  # Sprint's cfg_embed_scale: the embedder sees 0.1 * guidance
ORIGINAL_TIME_SCALE = 1000.0  # NVlabs' flow Sana embeds 1000 t
DENSE_TIME_SCALE = 1.0  # the Sprint teacher's fine-tune embeds t (timestep_norm_scale_factor=1000)
INIT_STD = 0.02  # NVlabs: nn.init.normal_(cfg_embedder.mlp[0].weight, std=0.02)
TIME_RENAME = ("time_embed.emb.timestep_embedder.", "time_embed.timestep_embedder.")
GUIDANCE = "time_embed.guidance_embedder."
FREQ_CHANNELS = 256  # Timesteps(num_channels=256) feeds the embedder
SPRINT_TEACHER_NAME = re.compile(r"sprint.*teacher", re.IGNORECASE)  # SANA_Sprint_1.6B_1024px_teacher.pth
LAYOUTS = ("diffusers", "original")


@dataclass
class TrigFlowOptions:
    layout: str = "diffusers"
    time_scale: float | None = None  # None: detect (config.json, file name), else assume ORIGINAL_TIME_SCALE
    with_logvar: bool = False
    dtype: str = "keep"
    seed: int = 0  # of the guidance embedder's first layer (and logvar): the function never depends on it


def _refusal(det: Detection) -> str | None:
    """Why this checkpoint has no TrigFlow form, or None when it is a Sana flow model."""
    from ckptkit.trigflow.adapters import ADAPTERS

    if det.family is None:
        return "not a Sana transformer (family unknown): `ckptkit trigflow` remaps Sana flow-matching transformers"
    cls = det.spec.diffusion_model.diffusers_class
    if cls not in ADAPTERS:
        return (f"{det.spec.title} ({cls}) is not a flow-matching model (it predicts noise / v in a DDPM "
                "schedule), so it has no TrigFlow form")
    if not ADAPTERS[cls].checkpoint_form:
        return (f"{det.spec.title} is a flow-matching model, but only Sana has a TrigFlow checkpoint form (a "
                "guidance embedder in SanaTransformer2DModel); `ckptkit sample` wraps it in TrigFlow at run time")
    return None


def source_time_scale(ckpt: Checkpoint, config: dict | None, given: float | None) -> tuple[float, str]:
    """(time scale of the source, why): the factor on flow time t its time embedding sees."""
    if given is not None:
        if not given > 0 or not math.isfinite(given):
            raise CkptError(f"--time-scale must be a positive number, got {given}")
        return float(given), "given (--time-scale)"
    if config is not None and "timestep_scale" in config:
        # diffusers' SanaPipeline feeds scheduler timesteps in [0, 1000] times config.timestep_scale
        scale = ORIGINAL_TIME_SCALE * float(config["timestep_scale"])
        return scale, f"from config.json (SanaPipeline embeds 1000 t x timestep_scale {config['timestep_scale']})"
    if any(SPRINT_TEACHER_NAME.search(p.name) for p in ckpt.paths):
        return DENSE_TIME_SCALE, "file name names a SANA-Sprint teacher (dense time: embeds t)"
    return ORIGINAL_TIME_SCALE, ("assumed: original Sana embeds 1000 t (weights cannot tell; pass --time-scale 1 "
                                 "for a dense-time Sprint teacher)")


def _source_dtype(ckpt: Checkpoint, e: Expr) -> str:
    if e.op in ("full", "randn"):
        return e.args[-1]
    dtype = ckpt.tensors[e.sources()[0]].dtype
    return dtype if dtype in DTYPES else "F32"  # quantized GGUF data loads dequantized to float32


def _added(width: int, dtype: str, seed: int, with_logvar: bool) -> dict[str, tuple[Expr, str]]:
    """The new tensors, in diffusers names (logvar in original names: it has no diffusers name)."""
    added = {
        GUIDANCE + "linear_1.weight": (expr.randn((width, FREQ_CHANNELS), seed, INIT_STD, dtype),
                                       f"guidance embedder input layer: N(0, {INIT_STD}) seed {seed}"),
        GUIDANCE + "linear_1.bias": (expr.full((width,), 0.0, dtype), "zero"),
        GUIDANCE + "linear_2.weight": (expr.full((width, width), 0.0, dtype),
                                       "zero: the guidance embedding is exactly 0 (function-preserving)"),
        GUIDANCE + "linear_2.bias": (expr.full((width,), 0.0, dtype), "zero"),
    }
    if with_logvar:  # NVlabs: nn.Linear(hidden, 1), xavier init, zero bias; training only
        added["logvar_linear.weight"] = (expr.randn((1, width), seed + 1, math.sqrt(2 / (width + 1)), dtype),
                                         f"sCM training head (logvar): xavier-normal seed {seed + 1}")
        added["logvar_linear.bias"] = (expr.full((1,), 0.0, dtype), "zero")
    return added


def _compose(e: Expr, ops: dict[str, Expr], src_shapes: dict) -> Expr:
    """`e` (over diffusers names) with each diffusers name replaced by its expression over the source;
    a fused tensor rebuilt from all of its own slices (original -> original `attn.qkv`) becomes a copy."""
    if e.op == "src":
        return ops[e.args[0]]
    out = Expr(e.op, tuple(_compose(x, ops, src_shapes) if isinstance(x, Expr) else x for x in e.args))
    if out.op == "cat" and all(p.op == "slice" and p.args[0].op == "src" for p in out.args[1:]):
        parts, dim = out.args[1:], out.args[0]
        name = parts[0].args[0].args[0]
        starts, stops = [p.args[2] for p in parts], [p.args[3] for p in parts]
        if (all(p.args[0].args[0] == name and p.args[1] == dim for p in parts)
                and starts == [0, *stops[:-1]] and stops[-1] == src_shapes[name][dim]):
            return parts[0].args[0]
    return out


def _check(ckpt: Checkpoint, det: Detection, opts: TrigFlowOptions) -> None:
    if opts.layout not in LAYOUTS:
        raise CkptError(f"unknown layout {opts.layout!r}; use one of {', '.join(LAYOUTS)}")
    if opts.dtype not in CAST_TARGETS:
        raise CkptError(f"unknown dtype {opts.dtype!r}; use one of {', '.join(CAST_TARGETS)}")
    if opts.with_logvar and opts.layout != "original":
        raise CkptError("--with-logvar adds NVlabs' training head `logvar_linear`, which SanaTransformer2DModel "
                        "has no place for: use it with --layout original")
    why = _refusal(det)
    if why:
        raise CkptError(f"{ckpt.path}: {why}")
    if "diffusion_model" not in det.components:
        raise CkptError(f"{ckpt.path}: no Sana transformer in it")


def _diffusers_ops(ckpt: Checkpoint, det: Detection, plan: Plan, opts: TrigFlowOptions):
    """(ops in diffusers names over source names, added tensors, config, time scale and why)."""
    comp, prefix = det.spec.diffusion_model, det.components["diffusion_model"]
    config = shipped_config(ckpt, det.names, prefix)
    for name in det.junk:
        plan.dropped[name] = "junk (training/schedule buffer)"
    for name in det.unclaimed:
        plan.dropped[name] = "under no known component prefix"
    cmap = map_component(ckpt, comp, prefix, det.names, "diffusers", set(det.junk) | set(det.ema) | set(det.unclaimed),
                         config)
    plan.dropped.update(cmap.dropped)
    time_scale, why = source_time_scale(ckpt, config, opts.time_scale)

    cfg = {k: v for k, v in cmap.config.items() if not k.startswith("_")}
    cfg.update(guidance_embeds=True, guidance_embeds_scale=GUIDANCE_EMBEDS_SCALE, timestep_scale=time_scale)
    ops = {n.replace(*TIME_RENAME): e for n, e in cmap.ops.items()}
    dtype = CAST_TARGETS[opts.dtype] or _source_dtype(ckpt, ops[TIME_RENAME[1] + "linear_1.weight"])
    added = _added(cfg["num_attention_heads"] * cfg["attention_head_dim"], dtype, opts.seed, opts.with_logvar)
    ops.update({n: e for n, (e, _) in added.items() if not n.startswith("logvar_linear.")})

    got = expr.shapes(ops, {n: t.shape for n, t in ckpt.tensors.items()})
    want = diffusers_shapes(comp.diffusers_class, cfg)
    if got != want:
        odd = sorted(set(got) ^ set(want)) or sorted(n for n in want if got[n] != want[n])
        raise CkptError(f"{ckpt.path}: the TrigFlow form does not match SanaTransformer2DModel(guidance_embeds=True) "
                        f"(e.g. {odd[0]!r})")
    return ops, added, cfg, time_scale, why


def _original_ops(ckpt: Checkpoint, det: Detection, plan: Plan, ops: dict[str, Expr], added: dict, cfg: dict):
    """The diffusers-named ops mapped to NVlabs' names (sana layout map, composed), plus logvar; the
    source's own pos_embed / y_embedding where it has them. Returns (ops, added notes by original name)."""
    comp, prefix = det.spec.diffusion_model, det.components["diffusion_model"]
    src_shapes = {n: t.shape for n, t in ckpt.tensors.items()}
    fwd = get_layout(comp.layout).to_original(expr.shapes(ops, src_shapes), cfg)
    out = {}
    for name, e in fwd.items():
        if e.op == "zeros" and det.names == "original" and prefix + name in ckpt.tensors:
            out[name] = expr.src(prefix + name)
            plan.dropped.pop(prefix + name, None)
        else:
            out[name] = _compose(e, ops, src_shapes)
    out.update({n: e for n, (e, _) in added.items() if n.startswith("logvar_linear.")})
    original_name = {e.args[0]: o for o, e in fwd.items() if e.op == "src"}
    return out, {original_name.get(n, n): note for n, (_, note) in added.items()}


def _tensor_ops(ckpt: Checkpoint, ops: dict[str, Expr], notes: dict[str, str], cast: str | None) -> list[TensorOp]:
    shapes = expr.shapes(ops, {n: t.shape for n, t in ckpt.tensors.items()})
    tensors = []
    for name, e in ops.items():
        sdt = _source_dtype(ckpt, e.args[1] if e.op == "zeros" else e)
        dtype = cast if cast and sdt in FLOAT_CODES else sdt
        tensors.append(TensorOp(name, e, shapes[name], sdt, dtype, notes.get(name, "")))
    return tensors


def plan_trigflow(ckpt: Checkpoint, det: Detection, opts: TrigFlowOptions) -> Plan:
    _check(ckpt, det, opts)
    plan = Plan("trigflow", str(ckpt.path), [], info={"family": det.family, "source_variant": det.variant,
                                                      "variant": "sana-sprint", "layout": opts.layout,
                                                      "components": {}, "warnings": []})
    if det.variant == "sana-sprint":  # a guidance embedder: already the TrigFlow form
        plan.info["already_trigflow"] = True
        plan.notes.append(f"{ckpt.path}: already in TrigFlow form (it has a guidance embedder): left as it is, "
                          "nothing written")
        return plan

    comp = det.spec.diffusion_model
    ops, added, cfg, time_scale, why = _diffusers_ops(ckpt, det, plan, opts)
    if opts.layout == "original":
        ops, notes = _original_ops(ckpt, det, plan, ops, added, cfg)
        path = f"{comp.name}.safetensors"
    else:
        notes = {n: note for n, (_, note) in added.items()}
        path = f"{comp.diffusers_folder}/diffusion_pytorch_model.safetensors"
    tensors = _tensor_ops(ckpt, ops, notes, CAST_TARGETS[opts.dtype])
    metadata = {"ckptkit.component": comp.name, "ckptkit.trigflow.time_scale": repr(time_scale),
                "ckptkit.trigflow.sigma_data": repr(SIGMA_DATA)}
    if opts.layout == "original":  # the diffusers layout writes config.json instead
        metadata.update(metadata_value({comp.name: cfg}))
    plan.outputs.append(OutputFile(path, comp.name, opts.layout, tensors, metadata=metadata))
    plan.info["components"][comp.name] = {"role": comp.role, "file": path, "naming": opts.layout,
                                          "diffusers_class": comp.diffusers_class}
    plan.info["trigflow"] = {"sigma_data": SIGMA_DATA, "time_scale": time_scale, "time_scale_source": why,
                             "guidance_embeds_scale": GUIDANCE_EMBEDS_SCALE, "qk_norm": cfg.get("qk_norm"),
                             "added": notes, "seed": opts.seed, "function_preserving": True,
                             "sana_sprint_pipeline": _pipeline_verdict(time_scale)}
    plan.notes.append(f"time scale {time_scale:g} ({why})")
    if time_scale != DENSE_TIME_SCALE:
        plan.info["warnings"].append(plan.info["trigflow"]["sana_sprint_pipeline"])
    if opts.layout == "diffusers":
        _sidecars(plan, comp, cfg)
    return plan


def _pipeline_verdict(time_scale: float) -> str:
    if time_scale == DENSE_TIME_SCALE:
        return "compatible: SanaSprintPipeline feeds t, which this model embeds"
    return (f"this model embeds {time_scale:g} t, but diffusers' SanaSprintPipeline feeds t and ignores "
            f"config.timestep_scale: it would run the model at the wrong time; sample with `ckptkit sample` "
            f"(or multiply the pipeline's timestep by {time_scale:g})")


def _sidecars(plan: Plan, comp, cfg: dict) -> None:
    """transformer/config.json, scheduler/scheduler_config.json and a SanaSprintPipeline model_index.json
    (text encoder, tokenizer and VAE ship separately: null entries, to be passed to from_pretrained)."""
    import diffusers

    plan.sidecars[f"{comp.diffusers_folder}/config.json"] = config_json(comp, cfg)
    sched = {**SANA_SPRINT_SCHEDULER, "_diffusers_version": diffusers.__version__}
    plan.sidecars["scheduler/scheduler_config.json"] = json.dumps(sched, indent=2) + "\n"
    index = {"_class_name": "SanaSprintPipeline", "_diffusers_version": diffusers.__version__,
             "scheduler": ["diffusers", sched["_class_name"]],
             comp.diffusers_folder: ["diffusers", comp.diffusers_class],
             "text_encoder": [None, None], "tokenizer": [None, None], "vae": [None, None]}
    plan.sidecars["model_index.json"] = json.dumps(index, indent=2) + "\n"


def transform_record(plan: Plan, sources: dict[str, dict]) -> dict:
    """The manifest's `trigflow` section: the plan's record plus the source's hashes."""
    return {**plan.info.get("trigflow", {}), "source_sha256": {p: s["sha256"] for p, s in sources.items()}}
