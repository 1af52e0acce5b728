"""Quantization coverage: per component, what was requested (the manifest's policy) against the
types really in the file. Fails when a component meant to be quantized holds no quantized
tensor (stable-diffusion.cpp #605), or when a tensor is stored in a type the policy forbids (a
quantized VAE)."""

from __future__ import annotations

from ckptkit.errors import CkptError
from ckptkit.quant.types import FALLBACK, PLAIN, parse_request
from ckptkit.units import tally
from ckptkit.verify.result import Findings
from ckptkit.verify.sets import ComponentSet, expected_components

INTEGER_OR_PLAIN = set(PLAIN) | {"F64", "I8", "I16", "I32", "I64", "U8", "BOOL", "F8_E4M3", "F8_E5M2"}
# stored as they are (a split copies them), but lossy: a component holding them is held to their limits
LOSSY_STORED = {"F8_E4M3", "F8_E5M2"}


def type_summary(comp) -> dict[str, dict[str, int]]:
    """Stored type -> tensors and bytes (a scaled fp8 weight counts as its fp8 type: formats/scaled.py)."""
    from ckptkit.formats.scaled import stored_type

    return tally((stored_type(comp.ckpt, n), info.nbytes) for n, info in comp.ckpt.tensors.items()
                 if n.startswith(comp.prefix) and n not in comp.exclude)


def component_quant_type(summary: dict[str, dict[str, int]]) -> str | None:
    """The type a component is judged by: the least precise quantized type it holds (None: plain).
    Not the type holding most bytes: a Q4_K_M file whose narrow rows fell back to Q5_0 / Q8_0 (or a
    small model where the fallbacks outweigh the rest) is still a Q4_K file, and its 1-step figures
    carry Q4_K's error, so it is held to Q4_K's limits."""
    from ckptkit.verify.thresholds import least_precise

    return least_precise(t for t in summary if t not in INTEGER_OR_PLAIN or t in LOSSY_STORED)


def allowed_types(policy: dict) -> set[str] | None:
    """The quantized types a component may hold under its recorded policy: the requested base type,
    the _M/_L mix's raised types (first/last-block ones included), the rules' types, and the fallbacks
    of each (llama.cpp's chain).
    None: the request is not a GGUF type this tool knows (nothing to compare against)."""
    try:
        req = parse_request(policy["requested"])
    except CkptError:
        return None
    todo = [t for t in (req.base, req.attn_v, req.qkv, req.ffn_down, req.edge, *policy.get("rule_types", ())) if t]
    allowed: set[str] = set()
    while todo:
        t = todo.pop()
        if t not in allowed:
            allowed.add(t)
            if t in FALLBACK:
                todo.append(FALLBACK[t])
    return allowed - set(PLAIN)


def _requested(out: Findings, name: str, comp, quantized: dict, summary: dict, kind: str | None) -> bool:
    """The manifest's request against the file. Returns False when a row already failed. A
    quantize set must record a requested type per component (a missing one is a failure, never a
    skip); a split/convert set requests none, so quantized tensors in it are a failure too."""
    policy = (comp.manifest or {}).get("policy")
    actual = ", ".join(f"{t} {v['tensors']}" for t, v in sorted(quantized.items()))
    if kind == "quantize" and not (policy and policy.get("requested")):
        out.add("coverage", name, "requested", None, "a requested type", False,
                "the manifest records no requested type for this component (edited?)")
        return False
    if not policy or not policy.get("requested") or policy["requested"] == "keep":
        if quantized and comp.manifest is not None:
            out.add("coverage", name, "requested", actual, policy.get("requested") if policy else "none", False,
                    "quantized tensors in a component the manifest says was not quantized")
            return False
        return True
    allowed = allowed_types(policy)
    if allowed is not None:
        foreign = sorted(t for t in quantized if t not in allowed)
        if foreign:
            counts = ", ".join(f"{t} {quantized[t]['tensors']}" for t in foreign)
            out.add("coverage", name, "requested", ", ".join(foreign), policy["requested"], False,
                    f"{counts} tensors where {policy['requested']} was requested (allowed: {', '.join(sorted(allowed))})")
            return False
    return True


def _layerwise_requested(out: Findings, name: str, comp, policy: dict) -> None:
    """A `--to comfy|bnb|quanto` component: the file holds the requested format in as many layers
    as the manifest says were quantized, and exactly the tensors per stored dtype it recorded."""
    from ckptkit.formats.scaled import Dequantized
    from ckptkit.quant.layerwise import get_backend

    requested = policy.get("requested")
    raw = comp.ckpt.inner if isinstance(comp.ckpt, Dequantized) else comp.ckpt
    layers = comp.ckpt.scheme.layers.values() if isinstance(comp.ckpt, Dequantized) else ()
    if requested in (None, "keep"):
        bad = [la.weight for la in layers if la.weight.startswith(comp.prefix)]
        out.add("coverage", name, "requested", len(bad), 0, not bad,
                f"{len(bad)} quantized layers where the manifest requests none" if bad else "kept as stored")
        return
    try:
        backend = get_backend(policy["backend"], writing=False)
        fmt = backend.types[backend.type_of(requested)]
    except CkptError as exc:
        out.add("coverage", name, "requested", requested, f"a --to {policy['backend']} type", False, str(exc))
        return
    count = sum(1 for la in layers if la.format == fmt and la.weight.startswith(comp.prefix))
    foreign = sorted({la.format for la in layers if la.format != fmt})
    want = policy.get("quantized_tensors")
    ok = count > 0 and count == want and not foreign
    out.add("coverage", name, "quantized", count, want, ok,
            f"{count} layers {fmt}" + (f"; also {', '.join(foreign)}" if foreign else "")
            + ("" if count == want else f"; the manifest says {want}"))
    stored = tally((info.dtype, info.nbytes) for n, info in raw.tensors.items()
                   if n.startswith(comp.prefix) and n not in comp.exclude)
    recorded = policy.get("types")
    same = recorded is not None and {t: (v["tensors"], v["bytes"]) for t, v in recorded.items()} == \
        {t: (v["tensors"], v["bytes"]) for t, v in stored.items()}
    out.add("coverage", name, "types_recorded", None, None, same,
            "" if same else f"the file holds {stored}, the manifest records {recorded}")


def _recorded(out: Findings, name: str, policy: dict, summary: dict, actual: str) -> None:
    """The file holds exactly the tensors per type the manifest says the quantizer wrote."""
    recorded = policy.get("types")
    if recorded is not None and {t: (v["tensors"], v["bytes"]) for t, v in recorded.items()} != \
            {t: (v["tensors"], v["bytes"]) for t, v in summary.items()}:
        out.add("coverage", name, "types_recorded", actual, "the manifest's types", False,
                "the file's types and sizes differ from what the manifest says was written")


def check_coverage(cset: ComponentSet, ref: ComponentSet | None = None) -> Findings:
    out = Findings()
    kind = (cset.manifest or {}).get("kind")
    for name, why in expected_components(cset, ref).items():
        if name not in cset.components:
            out.add("coverage", name, "component", None, "present", False,
                    f"{name} is missing: required by {why} (whatever the manifest lists)")
    for name, comp in cset.components.items():
        if comp.ckpt is None or comp.spec is None:
            continue
        summary = type_summary(comp)
        out.tables[f"types:{name}"] = summary
        quantized = {t: v for t, v in summary.items() if t not in INTEGER_OR_PLAIN}
        policy = (comp.manifest or {}).get("policy") or {}
        requested = policy.get("requested")
        actual = ", ".join(f"{t} {v['tensors']}" for t, v in sorted(summary.items(), key=lambda kv: -kv[1]["bytes"]))
        if comp.spec.role == "vae" and quantized:
            out.add("coverage", name, "vae_types", sorted(quantized), "F32/F16/BF16", False,
                    "a VAE must not be quantized (fp16 at most)")
            continue
        if policy.get("backend") not in (None, "gguf"):  # quantized safetensors (quant/layerwise.py)
            _layerwise_requested(out, name, comp, policy)
            continue
        if not _requested(out, name, comp, quantized, summary, kind):
            continue
        if requested and requested != "keep":
            req = parse_request(requested)
            if req.quantized:
                ok = bool(quantized)
                out.add("coverage", name, "quantized", sum(v["tensors"] for v in quantized.values()), f"> 0 ({requested})",
                        ok, actual if ok else f"meant to be {requested}, but every tensor is plain: {actual}")
                if ok:
                    _recorded(out, name, policy, summary, actual)
                continue
        count = sum(v["tensors"] for v in quantized.values())
        out.add("coverage", name, "types", count, None, None,
                f"{actual}" + ("" if requested else " (no policy recorded)"))
    return out
