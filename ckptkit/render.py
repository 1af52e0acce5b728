"""Human-readable rendering of library results (the CLI prints these; --json bypasses them)."""

from __future__ import annotations

from ckptkit.formats.files import printable
from ckptkit.inspect import InspectReport
from ckptkit.units import human_bytes, human_count


def table(rows: list[list[str]], header: list[str]) -> str:
    """Aligned columns; cells are escaped (a name read from a file never breaks a line)."""
    rows = [[printable(c) for c in r] for r in rows]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def inspect_report(r: InspectReport) -> str:
    out = [f"{printable(r.path)}  [{r.format}]  {r.tensor_count} tensors, {human_bytes(r.total_bytes)}"]
    if r.family:
        variant = f", variant {r.variant}" if r.variant else ""
        out.append(f"family: {r.family} ({r.family_title}){variant}; {r.form}; confidence {r.confidence:.2f}")
    elif r.standalone:
        users = f"; used by {', '.join(r.used_by)}" if r.used_by else ""
        out.append(f"family: unknown - standalone component: {r.standalone}{users}")
    else:
        out.append("family: unknown")
    if r.evidence:
        out.append(f"  by structure: {'; '.join(printable(e) for e in r.evidence)}")
    if r.given:
        out.append(f"  given with {r.given}; by structure alone: {r.detected_as or 'unknown'}")
    if r.components:
        rows = [[c.name, c.role, c.prefix or "-", c.tensors, human_count(c.params), human_bytes(c.bytes),
                 " ".join(f"{d}:{human_bytes(b)}" for d, b in sorted(c.dtypes.items(), key=lambda kv: -kv[1]))]
                for c in r.components]
        out.append(table(rows, ["component", "role", "prefix", "tensors", "params", "bytes", "dtypes"]))
    for c in r.components:
        q = c.quantization
        if q:
            kinds = ", ".join(f"{n} {f}" for f, n in sorted(q["formats"].items()))
            out.append(f"quantization of {c.name}: {q['scheme']}, {q['quantized']} quantized weights ({kinds}), "
                       f"{q['scales']} scale/metadata tensors")
        if c.config_error:
            out.append(f"config of {c.name}: {printable(c.config_error)}")
        elif c.config:
            by_source: dict[str, list[str]] = {}
            for key, info in c.config.items():
                by_source.setdefault(info["source"], []).append(key)
            out.append(f"config of {c.name}: " + "; ".join(
                f"{len(keys)} from {source}" + (f" ({', '.join(keys)})" if "UNDETERMINED" in source or
                                                 "--config" in source or len(keys) <= 3 else "")
                for source, keys in sorted(by_source.items())))
        if c.note:
            out.append(f"{c.name}: {printable(c.note)}")
        elif c.not_released:
            out.append(f"{c.name}: not the released sizes: " + ", ".join(
                f"{k} {v[0]} (released {v[1]})" for k, v in list(c.not_released.items())[:6]))
    if r.groups:
        rows = [[g.prefix, g.tensors, human_count(g.params), human_bytes(g.bytes),
                 " ".join(f"{d}:{human_bytes(b)}" for d, b in sorted(g.dtypes.items(), key=lambda kv: -kv[1])),
                 g.guess or "-"] for g in r.groups]
        out.append(table(rows, ["prefix", "tensors", "params", "bytes", "dtypes", "role"]))
    for label, group in (("junk", r.junk), ("ema", r.ema), ("unclaimed", r.unclaimed)):
        if group["tensors"]:
            names = ", ".join(printable(n) for n in group["names"][:4]) + (", ..." if group["tensors"] > 4 else "")
            out.append(f"{label}: {group['tensors']} tensors, {human_bytes(group['bytes'])} ({names})")
    if r.nonfinite is not None and not r.nonfinite:
        out.append("scan: no NaN/Inf values")
    if r.problems:
        out.append("problems:")
        out += [f"  - [{p.code}] {printable(p.message)}" for p in r.problems]
    else:
        out.append("problems: none")
    return "\n".join(out)
