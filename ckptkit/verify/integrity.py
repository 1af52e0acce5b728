"""Integrity: the reader's full validation, sha256 against the manifest, non-finite values
(streaming), and for GGUF the block data length of every tensor and nothing past the last tensor
but padding."""

from __future__ import annotations

from ckptkit.formats.hashing import file_sha256
from ckptkit.inspect import scan_nonfinite
from ckptkit.verify.result import Findings
from ckptkit.verify.sets import ComponentSet


def gguf_structure(ckpt) -> list[str]:
    """Problems in a GGUF file's data section (empty when sound). The reader refuses most of them
    at open already (block lengths, overlaps, gaps, bytes past the padding); what it lets through is
    padding that is not zero."""
    import gguf

    problems = []
    end = ckpt.data_offset
    for t in sorted(ckpt.layout, key=lambda t: t.offset):
        block, size = gguf.GGML_QUANT_SIZES[t.type]
        if t.numel % block or t.nbytes != t.numel // block * size:
            problems.append(f"{t.name}: {t.nbytes} bytes do not hold {t.numel} {t.type.name} values")
        if t.offset < end:
            problems.append(f"{t.name}: overlaps the previous tensor")
        elif t.offset > end and any(ckpt.read_span(end, t.offset)):
            problems.append(f"{t.name}: non-zero padding bytes before it")
        end = max(end, t.end)
    tail = ckpt.file_size - end
    if tail >= ckpt.alignment:
        problems.append(f"{tail} bytes after the last tensor (more than alignment padding)")
    elif tail > 0 and any(ckpt.read_span(end, ckpt.file_size)):
        problems.append("non-zero bytes after the last tensor")
    return problems


def check_integrity(cset: ComponentSet, scan: bool = True) -> Findings:
    out = Findings()
    for row in cset.manifest_rows:  # the manifest itself: present, pinned, listing every file, inside the folder
        out.add("integrity", None, row.metric, row.value, row.threshold, row.passed, row.detail)
    nonfinite_table = {}
    for name, comp in cset.components.items():
        if comp.ckpt is None:
            out.add("integrity", name, "readable", False, None, False, comp.error or "unreadable")
            continue
        out.add("integrity", name, "readable", True, None, True, comp.ckpt.format)
        if cset.manifest is not None:  # a set's manifest pins every file: a missing hash fails, never skips
            expected = (comp.manifest or {}).get("sha256")
            actual = file_sha256(comp.file)
            ok = bool(expected) and actual == expected
            out.add("integrity", name, "sha256", actual[:16], (expected or "")[:16] or None, ok,
                    "" if ok else f"{comp.file.name} differs from the manifest" if expected
                    else f"the manifest records no sha256 for {comp.file.name} (edited?)")
        if comp.ckpt.format == "gguf":
            problems = gguf_structure(comp.ckpt)
            out.add("integrity", name, "gguf_blocks", len(problems), 0, not problems, "; ".join(problems[:3]))
        if scan:
            names = [n for n in comp.ckpt.tensors if n.startswith(comp.prefix) and n not in comp.exclude]
            view = _Subset(comp.ckpt, names)
            bad = scan_nonfinite(view)
            nonfinite_table.update({f"{name}:{k}": v for k, v in bad.items()})
            total = sum(v["nan"] + v["inf"] for v in bad.values())
            out.add("integrity", name, "nonfinite", total, 0, total == 0,
                    f"{len(bad)} tensors with NaN/Inf, e.g. {next(iter(bad))}" if bad else "")
    if nonfinite_table:
        out.tables["nonfinite"] = nonfinite_table
    return out


class _Subset:
    """The tensors of one component in a shared checkpoint, for the streaming scan."""

    def __init__(self, ckpt, names):
        self._ckpt = ckpt
        self.tensors = {n: ckpt.tensors[n] for n in names}

    def load(self, name):
        return self._ckpt.load(name)
