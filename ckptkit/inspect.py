"""inspect_checkpoint(path) -> InspectReport: what a checkpoint holds and what is wrong with it.

Reads only headers, plus the few small tensors it must look at (position_ids); `scan=True`
streams every tensor once to count non-finite values.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ckptkit.errors import CkptError
from ckptkit.families.detect import Detection, detect
from ckptkit.formats import Checkpoint, open_checkpoint
from ckptkit.formats.dtypes import FLOAT_CODES
from ckptkit.units import human_bytes

POSITION_IDS = "text_model.embeddings.position_ids"


@dataclass
class ComponentReport:
    name: str
    role: str
    prefix: str
    tensors: int
    params: int
    bytes: int
    dtypes: dict[str, int]  # dtype -> bytes
    # the component's config as commands would resolve it: key -> {"value", "source"} (convert/configs.py)
    config: dict[str, dict] | None = None
    config_error: str | None = None  # why none can be resolved (a shipped config that contradicts the weights)
    # the sizes the weights decide that differ from the family's released model: key -> [this, released]
    not_released: dict[str, list] | None = None
    note: str | None = None  # "pruned/distilled: ..." when only depths differ
    # how its weights are quantized in a safetensors file (formats/scaled.py): scheme, formats,
    # quantized weight and scale/metadata tensor counts; None for plain weights
    quantization: dict | None = None


@dataclass
class TensorGroup:
    """Tensors of an unknown model under one common prefix, with a role where evidence is strong."""

    prefix: str
    tensors: int
    params: int
    bytes: int
    dtypes: dict[str, int]
    guess: str | None = None  # "VAE (guess: ...)", always marked as a guess


@dataclass
class Problem:
    code: str  # stable identifier for machines: "float_position_ids", "ema_copy", ...
    message: str
    tensors: list[str] = field(default_factory=list)


@dataclass
class InspectReport:
    path: str
    format: str
    tensor_count: int
    total_bytes: int
    family: str | None
    family_title: str | None
    variant: str | None
    form: str
    confidence: float
    standalone: str | None
    used_by: list[str]
    components: list[ComponentReport]
    missing_components: list[str]
    junk: dict  # {"tensors": n, "bytes": b, "names": [...]}
    ema: dict
    unclaimed: dict
    problems: list[Problem]
    nonfinite: dict[str, dict[str, int]] | None = None  # with scan: tensor -> {"nan": n, "inf": m}
    groups: list[TensorGroup] | None = None  # an unknown model, described by common prefix
    given: str | None = None  # "--family NAME": the family was given, not detected
    evidence: list[str] = field(default_factory=list)  # the structure the family was recognised by
    detected_as: str | None = None  # with `given`: what detection alone finds

    def to_json(self) -> dict:
        return asdict(self)


def _group(ckpt: Checkpoint, names: list[str], limit: int = 20) -> dict:
    return {"tensors": len(names), "bytes": sum(ckpt.tensors[n].nbytes for n in names), "names": names[:limit]}


def _component_reports(ckpt: Checkpoint, det: Detection, view: Checkpoint, scheme, scheme_error
                       ) -> list[ComponentReport]:
    """Per component: tensors, bytes and dtypes as stored in `ckpt`; parameters and config from
    `view`, the file as values (a quantized weight's real shape, under its own name)."""
    spec = det.spec
    skip = set(det.junk) | set(det.ema) | set(det.unclaimed)

    def members(of: Checkpoint) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {c: [] for c in det.components}
        for name in of.tensors:
            if name not in skip and (comp := det.component_of(name)) is not None:
                out[comp].append(name)
        return out

    stored, values = members(ckpt), members(view)
    reports = []
    for comp, names in stored.items():
        dtypes: Counter = Counter()
        for n in names:
            dtypes[ckpt.tensors[n].dtype] += ckpt.tensors[n].nbytes
        role = spec.component(comp).role if spec else "text_encoder" if comp != "vae" else "vae"
        config, error, differs, note = _config_of(view, det, comp, det.components[comp])
        reports.append(ComponentReport(comp, role, det.components[comp], len(names),
                                       sum(view.tensors[n].numel for n in values[comp]),
                                       sum(ckpt.tensors[n].nbytes for n in names), dict(dtypes), config, error,
                                       differs, note, _quantization(scheme, scheme_error, names)))
    return reports


def _scheme(ckpt: Checkpoint):
    """(the file's quantization scheme or None, why it cannot be read as values or None)."""
    from ckptkit.formats.scaled import detect_scheme

    if ckpt.format == "gguf":
        return None, None
    try:
        return detect_scheme(ckpt), None
    except CkptError as exc:
        return None, str(exc)


def _quantization(scheme, error: str | None, names: list[str]) -> dict | None:
    if scheme is None:  # an unreadable scheme is a problem of the file (inspect_checkpoint)
        return None
    mine = set(names)
    # a layer's weight by its own name, or by its data tensor's (quanto: weight._data)
    layers = [layer for w, layer in scheme.layers.items() if w in mine or layer.data in mine]
    if not layers:
        return None
    formats: dict[str, int] = {}
    for layer in layers:
        formats[layer.format] = formats.get(layer.format, 0) + 1
    data = {layer.data for layer in layers}
    return {"scheme": scheme.name, "formats": formats, "quantized": len(layers),
            "scales": sum(1 for n in mine if n in scheme.aux and n not in data)}


# config keys that count layers or blocks: a model differing from its release only in these is pruned
DEPTH_KEYS = frozenset({"layers_per_block", "transformer_layers_per_block", "num_layers", "num_single_layers",
                        "num_hidden_layers", "mid_block_type", "down_block_types", "up_block_types"})


def _released_difference(spec, resolved) -> tuple[dict | None, str | None]:
    """Sizes the weights decide that differ from the family's (first) released model."""
    from ckptkit.convert.configs import WEIGHTS, _norm

    if resolved.released_as is not None:
        return None, None
    released = spec.config
    differs = {k: [v, released[k]] for k, v in resolved.values.items()
               if resolved.sources.get(k) == WEIGHTS and k in released and _norm(v) != _norm(released[k])}
    if not differs:
        return None, None
    if set(differs) <= DEPTH_KEYS:
        return differs, "pruned/distilled: " + ", ".join(f"{k} {v[0]} (released {v[1]})" for k, v in differs.items())
    return differs, None


def _config_of(ckpt: Checkpoint, det: Detection, comp_name: str, prefix: str) -> tuple:
    """The config a command would use, with each value's source; undetermined values are marked."""
    from ckptkit.convert.components import local_shapes, resolve_component_config, shipped_config
    from ckptkit.convert.components import component_spec
    from ckptkit.errors import CkptError

    try:
        spec = det.spec.component(comp_name) if det.spec else component_spec(det)
        if not spec.diffusers_class:
            return None, None, None, None
        exclude = set(det.junk) | set(det.ema) | set(det.unclaimed)
        resolved = resolve_component_config(spec, local_shapes(ckpt, prefix, exclude), det.names,
                                            shipped_config(ckpt, det.names, prefix), ckpt, strict=False)
    except CkptError as exc:
        return None, str(exc), None, None
    from ckptkit.convert.configs import AMBIGUOUS, UNDETERMINED

    config = {k: {"value": None if resolved.sources[k] in (UNDETERMINED, AMBIGUOUS) else v, "source": resolved.sources[k]}
              for k, v in sorted(resolved.values.items()) if k in resolved.sources}
    return config, None, *_released_difference(spec, resolved)


# Roles an unknown model's tensor groups may be given, each only on strong evidence: (role, patterns
# that must all occur among the group's names).
ROLE_EVIDENCE = (
    ("VAE (guess: encoder/decoder convolutions)", (r"(^|\.)decoder\.", r"(^|\.)encoder\.", r"conv_in\.weight$")),
    ("CLIP text encoder (guess)", (r"(text_model\.encoder\.layers|transformer\.resblocks)\.\d+\.", r"(token_embedding|embed_tokens)")),
    ("T5 encoder (guess)", (r"encoder\.block\.\d+\.layer\.0\.SelfAttention\.", r"(shared|embed_tokens)\.weight$")),
    ("LLM text encoder (guess: decoder layers with embeddings)",
     (r"layers\.\d+\.self_attn\.(q_proj|o_proj)\.weight$", r"embed_tokens\.weight$")),
    ("transformer blocks (guess: a diffusion model)", (r"(blocks|layers)\.\d+\..*(attn|attention)",)),
)


def prefix_groups(ckpt: Checkpoint, names: list[str]) -> list[TensorGroup]:
    """Group names by their leading components (numbered blocks stay in their parent), descending a
    level while one group holds everything."""
    import re

    def key(name: str, depth: int) -> str:
        parts = []
        for part in name.split(".")[:-1]:
            if part.isdigit() or len(parts) == depth:
                break
            parts.append(part)
        return ".".join(parts) + "." if parts else ""

    depth, groups = 1, {}
    while True:
        groups = {}
        for n in names:
            groups.setdefault(key(n, depth), []).append(n)
        if len(groups) > 1 or depth >= 4 or not names:
            break
        deeper = {key(n, depth + 1) for n in names}
        if deeper == set(groups):
            break
        depth += 1
    out = []
    for prefix, members in sorted(groups.items(), key=lambda kv: -sum(ckpt.tensors[n].nbytes for n in kv[1])):
        dtypes: Counter = Counter()
        for n in members:
            dtypes[ckpt.tensors[n].dtype] += ckpt.tensors[n].nbytes
        guess = next((role for role, patterns in ROLE_EVIDENCE
                      if all(any(re.search(p, n) for n in members) for p in patterns)), None)
        out.append(TensorGroup(prefix or "(top level)", len(members), sum(ckpt.tensors[n].numel for n in members),
                               sum(ckpt.tensors[n].nbytes for n in members), dict(dtypes), guess))
    return out


def _position_id_problems(ckpt: Checkpoint, det: Detection) -> list[Problem]:
    problems = []
    spec = det.spec
    for comp, prefix in det.components.items():
        layout = spec.component(comp).layout if spec else ("hf_clip" if comp.startswith("clip") else "")
        if layout != "hf_clip" or det.names != "original":
            continue
        name = prefix + POSITION_IDS
        if name not in ckpt.tensors:
            if det.form == "bundle":
                problems.append(Problem("missing_position_ids", f"{comp}: position_ids absent (loaders rebuild them as arange)"))
            continue
        info = ckpt.tensors[name]
        if len(info.shape) not in (1, 2) or (len(info.shape) == 2 and info.shape[0] != 1) or info.numel > 1 << 20:
            problems.append(Problem("broken_position_ids", f"{comp}: position_ids have shape {list(info.shape)}, "
                                                           "not [N] or [1, N]", [name]))
            continue
        ids = ckpt.load(name)
        expected = torch.arange(ids.shape[-1])
        as_loaded = ids.to(torch.int64).reshape(-1)  # what an int cast (truncation) gives loaders
        wrong = (as_loaded != expected).nonzero().reshape(-1).tolist()
        if ids.is_floating_point():
            detail = f"; truncating to int breaks {len(wrong)} of them (e.g. index {wrong[0]} -> {int(as_loaded[wrong[0]])})" if wrong else ""
            problems.append(Problem("float_position_ids", f"{comp}: position_ids stored as {ckpt.tensors[name].dtype}{detail}", [name]))
        elif wrong:
            problems.append(Problem("broken_position_ids", f"{comp}: position_ids differ from arange at {len(wrong)} positions", [name]))
    return problems


def _problems(ckpt: Checkpoint, det: Detection, comps: list[ComponentReport]) -> list[Problem]:
    problems: list[Problem] = []
    if det.family is None and det.standalone is None:
        problems.append(Problem("unknown_family", "no family spec matches this file: described by prefix below; "
                                                  "`quantize` (generic policy, --arch), `verify` and `split --prefix` "
                                                  "still work"))
    if det.missing:
        problems.append(Problem("missing_components", f"missing components: {', '.join(det.missing)}"))
    if det.ema:
        size = sum(ckpt.tensors[n].nbytes for n in det.ema)
        problems.append(Problem("ema_copy", f"EMA copy of the diffusion model: {len(det.ema)} tensors, {human_bytes(size)} "
                                            "(dropped by split unless --extract-ema)", det.ema[:5]))
    if det.unclaimed and det.family is not None:
        problems.append(Problem("unknown_prefix", f"{len(det.unclaimed)} tensors under no known component prefix",
                                det.unclaimed[:10]))
    problems.extend(_position_id_problems(ckpt, det))
    for c in comps:
        undetermined = [k for k, info in (c.config or {}).items() if "UNDETERMINED" in info["source"]]
        if undetermined:
            from ckptkit.convert.configs import AMBIGUOUS

            ambiguous = all(c.config[k]["source"] == AMBIGUOUS for k in undetermined)
            why = ("released models of these very sizes differ in it" if ambiguous
                   else "the sizes are not a released model's")
            problems.append(Problem("config_undetermined", f"{c.name}: the weights do not decide "
                                    f"{', '.join(undetermined)} and {why}: converting to diffusers or running it "
                                    "needs --config"))
        if c.config_error:
            problems.append(Problem("config_error", f"{c.name}: {c.config_error}"))
    empty = [n for n, t in ckpt.tensors.items() if 0 in t.shape]
    if empty:
        problems.append(Problem("zero_size", f"{len(empty)} tensors have a zero-sized dimension (no values)", empty[:10]))
    integer = [n for n, t in ckpt.tensors.items() if n.endswith(".weight") and len(t.shape) >= 2
               and t.dtype not in FLOAT_CODES and not t.dtype.startswith(("Q", "IQ", "TQ"))]
    if integer:
        problems.append(Problem("integer_weights", f"{len(integer)} weight tensors are stored as integers "
                                                   f"({ckpt.tensors[integer[0]].dtype}), not floating point", integer[:10]))
    fp32 = [n for n, t in ckpt.tensors.items() if t.dtype in ("F32", "F64") and len(t.shape) >= 2
            and n not in det.ema]
    if fp32:
        size = sum(ckpt.tensors[n].nbytes for n in fp32)
        if size > 0.5 * max(1, ckpt.total_bytes):
            problems.append(Problem("fp32_weights", f"{human_bytes(size)} of weights stored as fp32; "
                                                    f"fp16/bf16 would save {human_bytes(size // 2)}", fp32[:5]))
    return problems


def scan_nonfinite(ckpt: Checkpoint, progress: Callable[[int], None] | None = None) -> dict[str, dict[str, int]]:
    """Stream every float tensor once; return counts of NaN/Inf per tensor that has any."""
    bad = {}
    for name, info in ckpt.tensors.items():
        if info.dtype in FLOAT_CODES or info.dtype.startswith(("Q", "IQ", "TQ")):
            t = ckpt.load(name)
            if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
                t = t.float()
            if not bool(torch.isfinite(t).all()):  # one pass; counted only when something is off
                bad[name] = {"nan": int(torch.isnan(t).sum()), "inf": int(torch.isinf(t).sum())}
        if progress:
            progress(info.nbytes)
    return bad


def inspect_checkpoint(path: str | Path, scan: bool = False, progress=None, family: str | None = None) -> InspectReport:
    from ckptkit.formats.scaled import Dequantized

    with open_checkpoint(path) as ckpt:
        if family is not None:
            ckpt.family_override = family  # every detection on it (config resolution too) reads it so
        scheme, error = _scheme(ckpt)
        # the family, components and configs are found in the file as values: quanto renames its
        # weights (weight._data) and bitsandbytes packs them (shape [n/2, 1])
        view = Dequantized(ckpt, scheme) if scheme is not None else ckpt
        det = detect(view)
        comps = _component_reports(ckpt, det, view, scheme, error)
        problems = _problems(view, det, comps)
        if error:  # never a dead end: described, and every value-reading command refuses it
            problems.append(Problem("quantization_unknown", error))
        nonfinite = None
        if scan:
            nonfinite = scan_nonfinite(ckpt, progress)
            if nonfinite:
                problems.append(Problem("nonfinite", f"{len(nonfinite)} tensors hold NaN/Inf values", list(nonfinite)[:10]))
        spec = det.spec
        return InspectReport(
            path=str(path), format=ckpt.format, tensor_count=len(ckpt), total_bytes=ckpt.total_bytes,
            family=det.family, family_title=spec.title if spec else None, variant=det.variant, form=det.form,
            confidence=det.confidence, standalone=det.standalone, used_by=list(det.used_by), components=comps,
            missing_components=det.missing, junk=_group(ckpt, det.junk), ema=_group(ckpt, det.ema),
            unclaimed=_group(ckpt, det.unclaimed), problems=problems, nonfinite=nonfinite,
            groups=prefix_groups(ckpt, list(ckpt.tensors)) if det.family is None and not det.standalone else None,
            given=det.given, detected_as=det.detected_as, evidence=list(det.evidence),
        )
