"""The executor: the only code that writes model files. It runs any Plan.

Tensors are produced one at a time from lazily read sources (mmap), in the plan's order, and
streamed to the writers; memory stays bounded by the few tensors in flight. With `workers > 1`
the CPU-bound part (layout ops, casts) of the next tensors runs in a thread pool while the
current one is written. Output files are hashed (sha256) on a second thread while they are
written, and renamed into place only when complete.
"""

from __future__ import annotations

import gc
import hashlib
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ckptkit.engine.plan import OutputFile, Plan
from ckptkit.engine.produce import overflows, tensors_in_order
from ckptkit.errors import CkptError
from ckptkit.formats.base import Checkpoint
from ckptkit.formats.files import inside
from ckptkit.formats.safetensors import SafetensorsWriter, tensor_bytes
from ckptkit.engine.gguf_out import write_gguf

@dataclass
class WrittenFile:
    path: str  # relative to the output folder
    component: str | None
    layout: str
    sha256: str
    bytes: int
    tensors: int
    params: int
    dtypes: dict[str, int]  # dtype -> tensor count


class _Hasher:
    """sha256 on a background thread (hashlib releases the GIL), fed in write order."""

    def __init__(self):
        self._hash = hashlib.sha256()
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while (item := self._queue.get()) is not None:
            self._hash.update(item)

    def update(self, data) -> None:
        self._queue.put(data)

    def hexdigest(self) -> str:
        self._queue.put(None)
        self._thread.join()
        return self._hash.hexdigest()


class _HashingFile:
    """A file object wrapper that forwards writes and feeds the hasher, in 16 MB pieces so the
    hasher's queue holds a bounded amount of memory."""

    CHUNK = 16 << 20

    def __init__(self, fh, hasher: _Hasher):
        self._fh, self._hasher = fh, hasher

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), self.CHUNK):
            piece = view[start:start + self.CHUNK]
            self._hasher.update(piece)
            self._fh.write(piece)
        return len(view)

    def __getattr__(self, name):
        return getattr(self._fh, name)


def _write_safetensors(out: OutputFile, target: Path, source: Checkpoint, pool, lookahead: int,
                       progress: Callable[[int], None], allow_overflow: bool) -> tuple[str, int]:
    specs = [(t.name, t.dtype, t.shape) for t in out.tensors]
    hasher = _Hasher()
    overflow: list[str] = []
    writer = SafetensorsWriter(target, specs, out.metadata, out.align)
    writer.wrap = lambda fh: _HashingFile(fh, hasher)
    try:
        with writer:
            for op, tensor in tensors_in_order(out.tensors, source, pool, lookahead):
                if not allow_overflow and overflows(op, tensor, source):
                    overflow.append(op.name)
                writer.write(op.name, tensor)
                progress(op.nbytes)
                del tensor
            if overflow:
                raise CkptError(f"casting to fp16 overflows in {len(overflow)} tensors ({', '.join(overflow[:5])}"
                                f"{', ...' if len(overflow) > 5 else ''}); keep the dtype or pass --allow-overflow")
    finally:
        digest = hasher.hexdigest()
    return digest, target.stat().st_size


def output_digest(out: OutputFile, source: Checkpoint, workers: int = 1) -> str:
    """The sha256 the file `out` will have, computed from the source without writing anything
    (for the content-addressed store: a component already stored is not written again)."""
    if out.format != "safetensors":
        raise CkptError("the store holds safetensors outputs only")
    h = hashlib.sha256(SafetensorsWriter(out.path, [(t.name, t.dtype, t.shape) for t in out.tensors], out.metadata,
                                         out.align).header)
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        for _op, tensor in tensors_in_order(out.tensors, source, pool, max(2, workers)):
            h.update(tensor_bytes(tensor))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return h.hexdigest()


def describe_file(out: OutputFile, path: Path, digest: str) -> WrittenFile:
    dtypes: dict[str, int] = {}
    for t in out.tensors:
        dtypes[t.dtype] = dtypes.get(t.dtype, 0) + 1
    return WrittenFile(out.path, out.component, out.layout, digest, path.stat().st_size, len(out.tensors),
                       sum(t.numel for t in out.tensors), dtypes)


def in_source_order(outputs: list[OutputFile], source: Checkpoint) -> list[OutputFile]:
    """The output files in the order their data sits in the source (a bundle stores its components
    one after another, sorted by name; the family spec lists them another way): one sequential pass
    over the source, the disk's best order, and the source hasher can trail it (manifest.py)."""
    def first(out: OutputFile) -> tuple:
        where = [source.position(n) for op in out.tensors for n in op.expr.sources()]
        return min(where, default=())

    return sorted(outputs, key=first)


def execute(plan: Plan, source: Checkpoint, out_dir: str | Path, workers: int = 1,
            progress: Callable[[int], None] | None = None, allow_overflow: bool = False) -> list[WrittenFile]:
    """Run a plan against its source checkpoint; returns what was written, with hashes."""
    out_dir = Path(out_dir)
    progress = progress or (lambda _n: None)
    written: list[WrittenFile] = []
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    # Every tensor allocates a few objects, so the cyclic collector runs often, and each full run
    # walks every object alive (torch's modules, the plan): ~1 s of a 7 GB split. What exists now
    # lives until the end anyway: freeze it out of the collector's walks.
    gc.freeze()
    try:
        for out in in_source_order(plan.outputs, source):
            target = inside(out_dir, out.path, "output plan", "output file")  # the one gate from names to paths
            if out.format == "safetensors":
                digest, _ = _write_safetensors(out, target, source, pool, max(2, workers), progress, allow_overflow)
            else:
                digest, _ = write_gguf(out, target, source, pool, max(2, workers), progress, plan.deferred_scan)
            written.append(describe_file(out, target, digest))
        order = {o.path: i for i, o in enumerate(plan.outputs)}
        written.sort(key=lambda w: order[w.path])  # reported in the plan's order
        for rel, text in plan.sidecars.items():
            from ckptkit.formats.atomic import atomic_write

            with atomic_write(inside(out_dir, rel, "output plan", "output file")) as fh:
                fh.write(text.encode("utf-8"))
    finally:
        gc.unfreeze()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return written


