"""safetensors: a strict reader of our own (mmap, zero-copy) and a streaming, atomic writer.

We parse the header ourselves instead of using `safetensors.safe_open` because we need
validation errors that name the file and the problem, lazy access to shapes without torch,
and a writer that emits one tensor at a time (safetensors' `save_file` wants the whole dict).
The format: 8-byte little-endian header length N, N bytes of JSON, then the data area.
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import mmap
import os
import struct
import sys
import threading
import weakref
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ckptkit.errors import CkptError
from ckptkit.formats.atomic import atomic_write
from ckptkit.formats.base import Checkpoint, TensorInfo
from ckptkit.formats.dtypes import DTYPES, code_of
from ckptkit.formats.files import open_regular, parse_json, printable
from ckptkit.formats.schema import describe

MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_DIMS = 64
INT64_MAX = 2**63 - 1


def parse_header(path: Path, file_size: int, head: bytes) -> tuple[dict[str, TensorInfo], dict[str, str], dict[str, tuple[int, int]], int]:
    """Validate a header fully. Returns (infos, metadata, name -> (begin, end) in the data area, data start)."""

    def bad(problem: str) -> CkptError:
        return CkptError(f"{path}: not a valid safetensors file: {problem}")

    if file_size < 8:
        raise bad(f"file is {file_size} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER_BYTES:
        raise bad(f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if 8 + n > file_size:
        raise bad(f"header length {n} runs past the end of the {file_size}-byte file (truncated?)")
    header = parse_json(head[8 : 8 + n], f"{path}: not a valid safetensors file", "header", duplicates=False)
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise bad("__metadata__ must map strings to strings")
    data_start = 8 + n
    data_size = file_size - data_start
    infos: dict[str, TensorInfo] = {}
    spans: dict[str, tuple[int, int]] = {}
    for name, entry in header.items():
        pname = printable(repr(name))
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"tensor {pname}: entry must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise bad(f"tensor {pname}: unknown dtype {describe(dtype)}")
        if (not isinstance(shape, list) or len(shape) > MAX_DIMS
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= INT64_MAX for d in shape)):
            raise bad(f"tensor {pname}: shape {describe(shape) if not isinstance(shape, list) else printable(shape)[:80]} "
                      f"is not a list of at most {MAX_DIMS} integers in [0, 2^63)")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise bad(f"tensor {pname}: data_offsets {printable(offsets)[:80]} is not [begin, end]")
        begin, end = offsets
        if not 0 <= begin <= end:
            raise bad(f"tensor {pname}: data_offsets {offsets} are not ordered")
        if end > data_size:
            raise bad(f"tensor {pname}: data ends at {end} but the data area has {data_size} bytes (truncated?)")
        if math.prod(d for d in shape if d) * DTYPES[dtype][1] > INT64_MAX:
            raise bad(f"tensor {pname}: shape {printable(shape)[:80]} has strides beyond 2^63 bytes")
        nbytes = math.prod(shape) * DTYPES[dtype][1]
        if nbytes != end - begin:
            raise bad(f"tensor {pname}: shape {shape} of {dtype} needs {nbytes} bytes, offsets give {end - begin}")
        infos[name] = TensorInfo(name, tuple(shape), dtype, nbytes)
        spans[name] = (begin, end)
    cursor = 0
    for name, (begin, end) in sorted(spans.items(), key=lambda kv: kv[1]):
        if begin != cursor:
            what = "overlaps the previous tensor" if begin < cursor else f"leaves a gap of {begin - cursor} bytes"
            raise bad(f"tensor {printable(repr(name))} at offset {begin} {what}")
        cursor = end
    if cursor != data_size:
        raise bad(f"{data_size - cursor} bytes after the last tensor are not covered by the header")
    return infos, metadata, spans, data_start


class SafetensorsCheckpoint(Checkpoint):
    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        super().__init__(paths=[path], format="safetensors")
        self._file = open_regular(path)
        try:
            size = os.fstat(self._file.fileno()).st_size
            head = self._file.read(8)
            if len(head) == 8:
                (n,) = struct.unpack("<Q", head)
                if n <= MAX_HEADER_BYTES and 8 + n <= size:
                    head += self._file.read(n)
            self.tensors, self.metadata, self._spans, self._data_start = parse_header(path, size, head)
        except BaseException:
            self._file.close()  # a refused file must not leak its descriptor
            raise
        self._mmap = None
        if size > 0 and self.tensors:
            self._mmap = _map_copy_on_write(self._file.fileno())
        # name -> the live uint8 window its loaded tensors share (see _window)
        self._windows: weakref.WeakValueDictionary[str, np.ndarray] = weakref.WeakValueDictionary()
        self._windows_lock = threading.RLock()  # a window's finalizer may run while it is held
        # called with (begin, end) file offsets when the last user of a loaded tensor lets go of it
        # (the source hasher trails the executor with it: manifest.py SourceHasher)
        self.release_hooks: list = []

    def raw_span(self, name: str) -> tuple[int, int]:
        """Absolute (begin, end) file offsets of a tensor's bytes."""
        begin, end = self._spans[name]
        return self._data_start + begin, self._data_start + end

    def position(self, name: str) -> tuple[int, ...]:
        return (self.raw_span(name)[0],)

    def _load(self, name: str) -> torch.Tensor:
        info = self.tensors[name]
        dtype = DTYPES[info.dtype][0]
        if info.numel == 0:
            return torch.empty(info.shape, dtype=dtype)
        return torch.frombuffer(self._window(name), dtype=dtype, count=info.numel).view(info.shape)

    def _window(self, name: str) -> np.ndarray:
        """The tensor's bytes in the mapping, as one object shared by every live load of `name`.

        Mapped pages count in our RSS once touched and stay so while the file is mapped: a full
        pass over a big file would hold all of it. So when the last tensor using a window is freed,
        the window's whole pages are given back (they stay in the page cache) and a streaming
        copy holds only the tensors still in use. Sharing one window per name keeps two loads of
        one tensor aliased, so neither loses the other's in-place changes. In-place changes never
        reach the file; whether a load after every earlier tensor was freed sees them is not
        specified (a release also drops the pages of neighbours not in use, see _release_pages)."""
        with self._windows_lock:
            window = self._windows.get(name)
            if window is None:
                begin, end = self.raw_span(name)
                window = np.frombuffer(self._mmap, dtype=np.uint8, count=end - begin, offset=begin)
                weakref.finalize(window, _release_pages, self._mmap, begin, end, self.release_hooks,
                                 self._live_spans).atexit = False
                _populate(window)
                self._windows[name] = window
            return window

    def _live_spans(self) -> list[tuple[int, int]]:
        """File spans of the tensors loaded and still in use."""
        with self._windows_lock:
            names = list(self._windows.keys())
        return [self.raw_span(n) for n in names]

    def close(self) -> None:
        # Tensors handed out keep the mmap alive through their buffer; closing only drops our refs.
        self._mmap = None
        self._file.close()


# Linux's MAP_NORESERVE (Python 3.11's mmap module does not name it).
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux") else 0)


def _map_copy_on_write(fd: int) -> mmap.mmap:
    """The whole file, private and writable: pages for torch.frombuffer whose writes never reach the
    file. A private writable mapping is charged in full against the commit limit, so under Linux's
    default heuristic overcommit a file larger than RAM + swap (Qwen-Image's 41 GB on a 24 GB
    machine) failed to open with ENOMEM; MAP_NORESERVE charges nothing (only pages written to
    ever need memory, and nothing here writes)."""
    if MAP_NORESERVE:
        try:
            return mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE | MAP_NORESERVE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            pass
    return mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)


# A loaded tensor is about to be read (written out, hashed, cast), and the pages of a fresh mapping
# are not mapped yet: write(2) from such a buffer copies with page faults disabled, stops at each
# missing page, zeroes the rest of the destination block, faults the page in and retries (ext4:
# folio_zero_new_buffers + fault_in_readable). When the tensor's pages are all in the page cache
# (mincore), one madvise(MADV_POPULATE_READ) (Linux >= 5.14) maps them first and the copy is one
# pass; with --workers > 1 that happens on the pool thread that loads the tensor ahead of the writer.
# Pages not all cached are left alone: populating them (a synchronous read) or MADV_WILLNEED measured
# slower than letting the reads fault. libc through ctypes, because mmap.madvise holds the GIL while
# the kernel works.
MADV_POPULATE_READ = 22


def _libc(name: str, third):
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, third], ctypes.c_int
    return fn


_madvise, _mincore = _libc("madvise", ctypes.c_int), _libc("mincore", ctypes.c_void_p)


def _resident(addr: int, length: int) -> tuple[int, int, np.ndarray] | None:
    """mincore over the pages of [addr, addr + length): (page-aligned start, length from it, one
    byte per page, bit 0 set when the page is in the page cache), or None where mincore fails."""
    if _mincore is None or length <= 0:
        return None
    start = addr // mmap.PAGESIZE * mmap.PAGESIZE
    length += addr - start
    pages = np.empty(-(-length // mmap.PAGESIZE), dtype=np.uint8)
    return (start, length, pages) if _mincore(start, length, pages.ctypes.data) == 0 else None


def _populate(window: np.ndarray) -> None:
    global _madvise
    if _madvise is None:
        return
    found = _resident(window.ctypes.data, window.nbytes)
    if found is None or not (found[2] & 1).all():
        return
    start, length, _ = found
    if _madvise(start, length, MADV_POPULATE_READ) != 0:
        if ctypes.get_errno() == errno.EINVAL:  # kernel < 5.14: reads fault page by page, as before
            _madvise = None


# The page cache holds large folios (up to 2 MB) and the kernel maps a cached folio whole when one
# of its pages faults in, so a load maps up to 2 MB of its neighbours' bytes too. Read in file order
# that is harmless (the next tensor's release drops them); read out of order (a diffusers-layout UNet
# is written in diffusers order), the pages of neighbours released earlier stayed mapped and the RSS
# of a split grew by ~0.3 MB per tensor (0.9 GB on SDXL). So a release drops everything in the 2 MB
# blocks around the tensor that no tensor still in use occupies.
FOLIO_SPAN = 2 << 20


def _release_pages(mapping: mmap.mmap, begin: int, end: int, hooks: list = (), live=None) -> None:
    """Drop this process's mapping of [begin, end), widened to the surrounding 2 MB blocks up to
    the nearest tensor still in use (`live()` gives their spans; never a page one of them touches);
    later reads fault the pages in again from the file. Then tell the hooks."""
    lo, hi = begin, end
    if live is not None:
        lo, hi = begin // FOLIO_SPAN * FOLIO_SPAN, min(-(-end // FOLIO_SPAN) * FOLIO_SPAN, len(mapping))
        for b, e in live():
            if e <= begin:
                lo = max(lo, e)
            elif b >= end:
                hi = min(hi, b)
    start = -(-lo // mmap.PAGESIZE) * mmap.PAGESIZE
    stop = hi // mmap.PAGESIZE * mmap.PAGESIZE
    if hasattr(mmap, "MADV_DONTNEED") and not mapping.closed and stop > start:
        mapping.madvise(mmap.MADV_DONTNEED, start, stop - start)
    for hook in hooks:
        hook(begin, end)


def cached_fraction(fd: int, begin: int, end: int) -> float | None:
    """The fraction of the file's pages in [begin, end) that are in the page cache, or None where
    the system cannot tell (no mincore; Linux answers only for files this user may write)."""
    if _mincore is None or end <= begin:
        return None
    start = begin // mmap.PAGESIZE * mmap.PAGESIZE
    try:
        with mmap.mmap(fd, end - start, access=mmap.ACCESS_READ, offset=start) as m:
            found = _resident(np.frombuffer(m, dtype=np.uint8).ctypes.data, end - start)
    except (OSError, ValueError, BufferError):
        return None
    return float((found[2] & 1).mean()) if found is not None else None


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor, without copying when it is already contiguous."""
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.device.type != "cpu":
        flat = flat.cpu()
    return memoryview(flat.view(torch.uint8).numpy())


class SafetensorsWriter:
    """Streaming writer: the header is computed from (name, dtype, shape) first, then tensors go
    out one at a time in the same order. Use as a context manager; the file appears under its
    final name only when every tensor was written."""

    def __init__(self, path: str | os.PathLike, specs: Iterable[tuple[str, str, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None, align: int = 8):
        """`align`: the data section starts at a multiple of it (the header is padded with spaces, as
        safetensors pads to 8), so that a tensor at an offset that is a multiple of it is aligned in
        a mapping of the file (quanto's int8 CPU kernels crash on unaligned data)."""
        self.path = Path(path)
        self._order: list[tuple[str, str, tuple[int, ...], int]] = []
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        offset = 0
        for name, dtype, shape in specs:
            if name in header:
                raise CkptError(f"{self.path}: tensor {name!r} planned twice")
            nbytes = math.prod(shape) * DTYPES[dtype][1]
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._order.append((name, dtype, tuple(shape), nbytes))
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        blob += b" " * (-len(blob) % 8)  # safetensors pads the header to 8 bytes with spaces
        blob += b" " * (-(8 + len(blob)) % max(8, align))
        self._header = struct.pack("<Q", len(blob)) + blob
        self._next = 0
        self._ctx = None
        self._fh = None
        self.wrap = None  # optional: fh -> file-like, e.g. to hash what is written

    @property
    def header(self) -> bytes:
        """The exact bytes the file starts with (length + JSON header)."""
        return self._header

    def __enter__(self) -> "SafetensorsWriter":
        self._ctx = atomic_write(self.path)
        self._fh = self._ctx.__enter__()
        if self.wrap is not None:
            self._fh = self.wrap(self._fh)
        self._fh.write(self._header)
        return self

    def write(self, name: str, tensor: torch.Tensor) -> None:
        want_name, dtype, shape, nbytes = self._order[self._next]
        if name != want_name:
            raise ValueError(f"expected tensor {want_name!r} next, got {name!r}")
        if code_of(tensor.dtype) != dtype or tuple(tensor.shape) != shape:
            raise ValueError(f"{name}: planned {dtype}{list(shape)}, got {code_of(tensor.dtype)}{list(tensor.shape)}")
        self.write_bytes(name, tensor_bytes(tensor) if nbytes else b"")

    def write_bytes(self, name: str, data) -> None:
        want_name, _, _, nbytes = self._order[self._next]
        if name != want_name or len(data) != nbytes:
            raise ValueError(f"expected {nbytes} bytes of {want_name!r}, got {len(data)} of {name!r}")
        self._fh.write(data)
        self._next += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self._next != len(self._order):
            exc = ValueError(f"{self.path}: {len(self._order) - self._next} planned tensors were never written")
            self._ctx.__exit__(type(exc), exc, None)
            raise exc
        self._ctx.__exit__(exc_type, exc, tb)


def save_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Convenience for small dicts (tests, fixtures): the streaming writer over an in-memory dict."""
    specs = [(n, code_of(t.dtype), tuple(t.shape)) for n, t in tensors.items()]
    with SafetensorsWriter(path, specs, metadata) as writer:
        for name, tensor in tensors.items():
            writer.write(name, tensor)
