"""Integrity: the reader's full validation, sha256 against the manifest (hashed on a thread beside
the value checks), non-finite values (streaming; with a reference the numeric check counts them in
its own pass over the candidate, so the values are read once), and for GGUF the block data length
of every tensor and nothing past the last tensor but padding."""

from __future__ import annotations

import threading
from concurrent.futures import Future

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


def start_hashing(cset: ComponentSet, progress=None) -> dict[str, Future]:
    """sha256 of every readable component file, on a background thread (hashlib releases the GIL),
    so that hashing overlaps the value checks; `progress(n)` counts bytes hashed. A daemon thread:
    an interrupted verify exits without waiting for it."""
    files: dict[str, Future] = {}
    jobs: dict = {}
    for name, comp in cset.components.items():
        if comp.ckpt is not None:
            files[name] = jobs.setdefault(comp.file, Future())

    def work():
        for path, future in jobs.items():
            try:
                future.set_result(file_sha256(path, progress))
            except BaseException as exc:  # an unreadable file: reported where the hash is read
                future.set_exception(exc)

    if jobs:
        threading.Thread(target=work, name="ckptkit-hash", daemon=True).start()
    return files


def hash_rows(cset: ComponentSet, hashes: dict[str, Future]) -> Findings:
    """The sha256 rows, once the hashes are done. A set's manifest pins every file: a missing hash
    fails, never skips."""
    out = Findings()
    for name, comp in cset.components.items():
        if name not in hashes:
            continue
        expected = (comp.manifest or {}).get("sha256")
        actual = hashes[name].result()
        ok = bool(expected) and actual == expected
        out.add("integrity", name, "sha256", actual[:16], (expected or "")[:16] or None, ok,
                "" if ok else f"{comp.file.name} differs from the manifest" if expected
                else f"the manifest records no sha256 for {comp.file.name} (edited?)")
    return out


def nonfinite_row(out: Findings, name: str, bad: dict[str, dict[str, int]]) -> None:
    total = sum(v["nan"] + v["inf"] for v in bad.values())
    out.add("integrity", name, "nonfinite", total, 0, total == 0,
            f"{len(bad)} tensors with NaN/Inf, e.g. {next(iter(bad))}" if bad else "")
    if bad:
        out.tables.setdefault("nonfinite", {}).update({f"{name}:{k}": v for k, v in bad.items()})


def component_tensors(comp) -> list[str]:
    return [n for n in comp.ckpt.tensors if n.startswith(comp.prefix) and n not in comp.exclude]


def check_integrity(cset: ComponentSet, scan: bool = True, hashes: dict[str, Future] | None = None,
                    progress=None) -> Findings:
    """Every integrity row; with `hashes` (start_hashing) the sha256 rows are left to hash_rows.
    `progress(n)`: bytes of tensors scanned."""
    out = Findings()
    for row in cset.manifest_rows:  # the manifest itself: present, pinned, listing every file, inside the folder
        out.add("integrity", None, row.metric, row.value, row.threshold, row.passed, row.detail)
    for name, comp in cset.components.items():
        if comp.ckpt is None:
            out.add("integrity", name, "readable", False, None, False, comp.error or "unreadable")
            continue
        out.add("integrity", name, "readable", True, None, True, comp.ckpt.format)
        if cset.manifest is not None and hashes is None:
            out.extend(hash_rows(cset, {name: _done(file_sha256(comp.file))}))
        if comp.ckpt.format == "gguf":
            problems = gguf_structure(comp.ckpt)
            out.add("integrity", name, "gguf_blocks", len(problems), 0, not problems, "; ".join(problems[:3]))
        if scan:
            nonfinite_row(out, name, scan_nonfinite(Subset(comp.ckpt, component_tensors(comp)), progress))
    return out


def _done(value) -> Future:
    f = Future()
    f.set_result(value)
    return f


class Subset:
    """The tensors of one component in a shared checkpoint, for the streaming scan."""

    def __init__(self, ckpt, names):
        self._ckpt = ckpt
        self.tensors = {n: ckpt.tensors[n] for n in names}

    def load(self, name):
        return self._ckpt.load(name)
