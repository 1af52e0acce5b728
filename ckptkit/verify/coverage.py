"""Quantization coverage: per component, what was requested (the manifest's policy) against the
types really in the file. Fails when a component meant to be quantized holds no quantized
tensor (stable-diffusion.cpp #605), or when a tensor is stored in a type the policy forbids (a
quantized VAE)."""

from __future__ import annotations


from ckptkit.quant.types import PLAIN, parse_request
from ckptkit.verify.result import Findings
from ckptkit.verify.sets import ComponentSet

INTEGER_OR_PLAIN = set(PLAIN) | {"F64", "I8", "I16", "I32", "I64", "U8", "BOOL", "F8_E4M3", "F8_E5M2"}


def type_summary(comp) -> dict[str, dict[str, int]]:
    summary: dict[str, dict[str, int]] = {}
    for n, info in comp.ckpt.tensors.items():
        if n.startswith(comp.prefix) and n not in comp.exclude:
            entry = summary.setdefault(info.dtype, {"tensors": 0, "bytes": 0})
            entry["tensors"] += 1
            entry["bytes"] += info.nbytes
    return summary


def component_quant_type(summary: dict[str, dict[str, int]]) -> str | None:
    """The type a component is judged by: the least precise quantized type it holds (None: plain).
    Not the type holding most bytes: a Q4_K_M file whose narrow rows fell back to Q5_0 / Q8_0 (or a
    small model where the fallbacks outweigh the rest) is still a Q4_K file, and its 1-step figures
    carry Q4_K's error, so it is held to Q4_K's limits."""
    from ckptkit.verify.thresholds import least_precise

    return least_precise(t for t in summary if t not in INTEGER_OR_PLAIN)


def check_coverage(cset: ComponentSet) -> Findings:
    out = Findings()
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
        if requested and requested != "keep":
            req = parse_request(requested)
            if req.quantized:
                ok = bool(quantized)
                out.add("coverage", name, "quantized", sum(v["tensors"] for v in quantized.values()), f"> 0 ({requested})",
                        ok, actual if ok else f"meant to be {requested}, but every tensor is plain: {actual}")
                continue
        count = sum(v["tensors"] for v in quantized.values())
        out.add("coverage", name, "types", count, None, None,
                f"{actual}" + ("" if requested else " (no policy recorded)"))
    return out


