"""Sizes and counts for people (1.2 GB, 3.50B), and the per-type tally reports share."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def human_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


_UNITS = {"": 1, "b": 1, "k": 10 ** 3, "kb": 10 ** 3, "m": 10 ** 6, "mb": 10 ** 6, "g": 10 ** 9, "gb": 10 ** 9,
          "t": 10 ** 12, "tb": 10 ** 12, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_bytes(text: str) -> int:
    """'4GB' / '3.5 GiB' / '800M' / '1000000' -> bytes (decimal units as human_bytes prints them)."""
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (e.g. 4GB, 3.5GiB, 800MB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def tally(items) -> dict[str, dict[str, int]]:
    """(type, bytes) pairs -> {type: {"tensors": count, "bytes": total}}: the per-type summary of a
    plan's output file (quantize reports) and of a stored file (verify's coverage)."""
    out: dict[str, dict[str, int]] = {}
    for kind, nbytes in items:
        entry = out.setdefault(kind, {"tensors": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["bytes"] += nbytes
    return out
