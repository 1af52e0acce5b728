"""GGUF: a strict, bounds-checked reader of our own (mmap, zero-copy); writing through gguf-py's
GGUFWriter in streaming order.

We parse the header ourselves instead of using gguf-py's `GGUFReader` because that reader walks
whatever lengths and counts a file claims: a 64-byte file whose metadata claims an array of 2**40
elements (or a bit flip that turns a string KV into an array) hangs every command while memory
grows, a tensor offset of 2**64 - 32 wraps into the header and is accepted, and overlapping,
misaligned or gapped tensors are accepted too. Here every count and length is checked against the
bytes that remain before anything is allocated or iterated, and every refusal is one line naming
the problem. gguf-py is still used for writing (`GGUFStreamWriter` below), for its constants
(`GGMLQuantizationType`, `GGML_QUANT_SIZES`, `GGUFValueType`) and for dequantizing the ggml types
our C kernels lack (`gguf.quants.dequantize`).

The format (v2/v3, little-endian): magic "GGUF", u32 version, u64 tensor count, u64 KV count; KVs
(string key, u32 value type, value); tensor infos (string name, u32 n_dims, n_dims x u64 dims in
ggml order, u32 ggml type, u64 offset relative to the data section); padding to `general.alignment`
(default 32); the data section, each tensor at an aligned offset. Strings are u64 length + bytes.

Logical shapes are numpy order (ggml dims reversed); a `comfy.gguf.orig_shape.<name>` KV
(ComfyUI-GGUF's convention for reshaped conv weights) overrides the stored shape.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ckptkit.errors import CkptError
from ckptkit.formats.atomic import atomic_path
from ckptkit.formats.base import Checkpoint, TensorInfo
from ckptkit.formats.files import open_regular, printable

ORIG_SHAPE_KEY = "comfy.gguf.orig_shape."
# ggml types that are plain arrays, as safetensors dtype codes.
PLAIN = {"F32": "F32", "F16": "F16", "BF16": "BF16", "F64": "F64",
         "I8": "I8", "I16": "I16", "I32": "I32", "I64": "I64"}
_PLAIN_NUMPY = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8"}

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4
# ComfyUI-GGUF's video files hold the Conv3d patch embeddings as 5-D F32 tensors (tools/fix_5d_tensors.py),
# which its loader and stable-diffusion.cpp's own GGUF reader take (plain ggml refuses more than 4)
GGUF_MAX_DIMS = 5
HEADER_BYTES = 24  # magic, version, tensor count, KV count
MAX_ARRAY_DEPTH = 2  # an array of arrays at most (llama.cpp refuses nested arrays altogether)
MAX_ORIG_SHAPE_DIMS = 8

# GGUFValueType ids (gguf-py's enum, spelled out so the parser needs no import of gguf).
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = range(13)
_TYPE_NAMES = ("UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL", "STRING", "ARRAY",
               "UINT64", "INT64", "FLOAT64")
# value type -> (struct format, numpy dtype) for the fixed-size types
_SCALARS = {_UINT8: ("<B", "u1"), _INT8: ("<b", "i1"), _UINT16: ("<H", "<u2"), _INT16: ("<h", "<i2"),
            _UINT32: ("<I", "<u4"), _INT32: ("<i", "<i4"), _FLOAT32: ("<f", "<f4"), _BOOL: ("<B", "u1"),
            _UINT64: ("<Q", "<u8"), _INT64: ("<q", "<i8"), _FLOAT64: ("<d", "<f8")}
_SCALAR_STRUCTS = {t: struct.Struct(fmt) for t, (fmt, _) in _SCALARS.items()}
_INTEGER_TYPES = {_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _UINT64, _INT64}
# the fewest bytes one value of each type takes in the file (a string: its length; an array: type + count)
_MIN_SIZE = {t: s.size for t, s in _SCALAR_STRUCTS.items()} | {_STRING: 8, _ARRAY: 12}
_MIN_KV = 8 + 0 + 4 + 1  # key length, empty key, value type, a 1-byte value
_MIN_TENSOR_INFO = 8 + 0 + 4 + 8 + 4 + 8  # name length, empty name, n_dims, one dim, type, offset
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


class _Bad(Exception):
    """A reason a file is not a valid GGUF file (becomes a CkptError naming the file)."""


def _q(text: str, limit: int = 80) -> str:
    """A name or value for a message: repr'd (control characters escaped) and kept short."""
    r = repr(text)
    return r if len(r) <= limit else r[:limit - 4] + "...'"


def _align(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


class _Undecodable:
    """Stands for a string value that is not UTF-8 while the parser moves on (the KV becomes None)."""


_UNDECODABLE = _Undecodable()


class _Cursor:
    """Little-endian reads from `buf` (the mmap), each checked against the bytes that remain."""

    def __init__(self, buf, size: int, pos: int = 0):
        self.buf, self.size, self.pos = buf, size, pos

    def left(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise _Bad(f"{what} needs {n} bytes at offset {self.pos} but only {self.size - self.pos} remain (truncated?)")

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def string(self, what: str) -> bytes:
        n = self.u64(f"{what} length")
        if n > self.size - self.pos:
            raise _Bad(f"{what} claims {n} bytes at offset {self.pos} but only {self.size - self.pos} remain")
        data = self.buf[self.pos:self.pos + n]
        self.pos += n
        return data


def _value(cur: _Cursor, vtype: int, what: str, depth: int = 0):
    """One KV value of type `vtype`: a Python int/float/bool/str, a list for arrays; _UNDECODABLE
    for a string (or an array holding one) that is not UTF-8."""
    if vtype in _SCALARS:
        s = _SCALAR_STRUCTS[vtype]
        cur.need(s.size, what)
        (v,) = s.unpack_from(cur.buf, cur.pos)
        cur.pos += s.size
        return bool(v) if vtype == _BOOL else v
    if vtype == _STRING:
        data = cur.string(what)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return _UNDECODABLE
    if vtype != _ARRAY:
        raise _Bad(f"{what} has unknown value type {vtype}")
    itype = cur.u32(f"{what} array type")
    count = cur.u64(f"{what} array length")
    if itype not in _MIN_SIZE:
        raise _Bad(f"{what} is an array of unknown value type {itype}")
    if itype == _ARRAY and depth + 1 >= MAX_ARRAY_DEPTH:
        raise _Bad(f"{what} nests arrays deeper than {MAX_ARRAY_DEPTH} levels")
    least = count * _MIN_SIZE[itype]
    if least > cur.left():
        raise _Bad(f"{what} claims an array of {count} {_TYPE_NAMES[itype]} values (at least {least} bytes) "
                   f"at offset {cur.pos} but only {cur.left()} bytes remain")
    if itype in _SCALARS:
        size = _MIN_SIZE[itype]
        values = np.frombuffer(cur.buf[cur.pos:cur.pos + count * size], dtype=_SCALARS[itype][1])
        cur.pos += count * size
        return values.astype(bool).tolist() if itype == _BOOL else values.tolist()
    if itype == _STRING:  # a tight loop: tokenizers hold 100k+ strings
        buf, size, pos, unpack = cur.buf, cur.size, cur.pos, _U64.unpack_from
        out: list = []
        undecodable = False
        for i in range(count):
            if pos + 8 > size:
                raise _Bad(f"{what} string {i} length needs 8 bytes at offset {pos} but only {size - pos} remain")
            (n,) = unpack(buf, pos)
            pos += 8
            if n > size - pos:
                raise _Bad(f"{what} string {i} claims {n} bytes at offset {pos} but only {size - pos} remain")
            try:
                out.append(buf[pos:pos + n].decode("utf-8"))
            except UnicodeDecodeError:
                undecodable = True
                out.append(None)
            pos += n
        cur.pos = pos
        return _UNDECODABLE if undecodable else out
    out = [_value(cur, _ARRAY, f"{what}[{i}]", depth + 1) for i in range(count)]
    return _UNDECODABLE if any(v is _UNDECODABLE for v in out) else out


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor as the file stores it. `dims` is ggml order (ne0, the fastest-varying dim, first);
    `shape` is the same in numpy order (dims reversed, without `comfy.gguf.orig_shape`)."""

    name: str  # the name stored in the file
    key: str  # its name in GGUFCheckpoint.tensors (differs for T5: transformers' names)
    type: object  # gguf.GGMLQuantizationType
    dims: tuple[int, ...]
    offset: int  # absolute file offset of its first byte
    nbytes: int
    numel: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.dims))

    @property
    def end(self) -> int:
        return self.offset + self.nbytes


@dataclass
class _Parsed:
    version: int
    kv: dict
    kv_types: dict  # key -> (value type, array item type or None)
    tensors: list  # (name, dims, GGMLQuantizationType, relative offset, nbytes, numel), in header order
    alignment: int
    data_offset: int


def _parse(buf, file_size: int) -> _Parsed:
    """Validate the whole header and the data section's layout; raises _Bad with the reason."""
    import gguf

    if file_size < HEADER_BYTES:
        raise _Bad(f"file is {file_size} bytes, shorter than the {HEADER_BYTES}-byte GGUF header")
    if buf[:4] != GGUF_MAGIC:
        raise _Bad(f"bad magic {bytes(buf[:4])!r} (expected b'GGUF')")
    cur = _Cursor(buf, file_size, 4)
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS:
        if version & 0xFFFF == 0 and version:
            raise _Bad(f"big-endian GGUF (version field {version:#010x}) is not supported")
        if version == 1:
            raise _Bad("GGUF version 1 is not supported (only versions 2 and 3)")
        raise _Bad(f"unsupported GGUF version {version} (only versions 2 and 3)")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("KV count")
    least = n_kv * _MIN_KV + n_tensors * _MIN_TENSOR_INFO
    if least > cur.left():
        raise _Bad(f"header claims {n_kv} KV pairs and {n_tensors} tensors (at least {least} bytes) "
                   f"but only {cur.left()} bytes follow the header")

    kv: dict[str, object] = {}
    kv_types: dict[str, tuple[int, int | None]] = {}
    for i in range(n_kv):
        raw_key = cur.string(f"KV {i} key")
        try:
            key = raw_key.decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad(f"KV {i} key {raw_key[:60]!r} is not valid UTF-8") from None
        if key in kv:
            raise _Bad(f"duplicate key {_q(key)}")
        vtype = cur.u32(f"key {_q(key)} value type")
        if vtype not in _MIN_SIZE:
            raise _Bad(f"key {_q(key)} has unknown value type {vtype}")
        item = None
        if vtype == _ARRAY:  # peek the item type (validated by _value) for orig_shape / alignment checks
            cur.need(4, f"key {_q(key)} array type")
            (item,) = _U32.unpack_from(buf, cur.pos)
        value = _value(cur, vtype, f"key {_q(key)}")
        kv[key] = None if value is _UNDECODABLE else value
        kv_types[key] = (vtype, item)

    least = n_tensors * _MIN_TENSOR_INFO
    if least > cur.left():
        raise _Bad(f"header claims {n_tensors} tensors (at least {least} bytes of tensor infos) "
                   f"but only {cur.left()} bytes remain after the KV pairs")
    tensors = []
    names: set[str] = set()
    for i in range(n_tensors):
        raw_name = cur.string(f"tensor {i} name")
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad(f"tensor {i} name {raw_name[:60]!r} is not valid UTF-8") from None
        if name in names:
            raise _Bad(f"duplicate tensor name {_q(name)}")
        names.add(name)
        n_dims = cur.u32(f"tensor {_q(name)} n_dims")
        if not 1 <= n_dims <= GGUF_MAX_DIMS:
            raise _Bad(f"tensor {_q(name)} has {n_dims} dimensions (must be 1 to {GGUF_MAX_DIMS})")
        dims = tuple(cur.u64(f"tensor {_q(name)} dimension") for _ in range(n_dims))
        if 0 in dims:
            raise _Bad(f"tensor {_q(name)} has a zero-sized dimension {list(dims)}")
        raw_type = cur.u32(f"tensor {_q(name)} type")
        rel = cur.u64(f"tensor {_q(name)} offset")
        numel = math.prod(dims)
        if numel >= 2**63:
            raise _Bad(f"tensor {_q(name)} dimensions {list(dims)} overflow the element count")
        try:
            qtype = gguf.GGMLQuantizationType(raw_type)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise _Bad(f"tensor {_q(name)} has unknown ggml type {raw_type}") from None
        if dims[0] % block:
            raise _Bad(f"tensor {_q(name)}: first dimension {dims[0]} is not a multiple of "
                       f"{qtype.name}'s block size {block}")
        tensors.append((name, dims, qtype, rel, numel // block * type_size, numel))
    infos_end = cur.pos

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in kv:
        value = kv["general.alignment"]
        if kv_types["general.alignment"][0] != _UINT32:
            raise _Bad(f"general.alignment must be a UINT32, not {_TYPE_NAMES[kv_types['general.alignment'][0]]}")
        if value <= 0 or value & (value - 1):
            raise _Bad(f"general.alignment {value} is not a power of two")
        alignment = value
    data_offset = _align(infos_end, alignment)
    data_size = file_size - data_offset  # negative when the file ends inside the header's padding

    for name, dims, qtype, rel, nbytes, _ in tensors:
        if rel % alignment:
            raise _Bad(f"tensor {_q(name)} offset {rel} is not a multiple of the alignment {alignment}")
        if rel + nbytes > data_size:
            raise _Bad(f"tensor {_q(name)} ({qtype.name} {list(dims)}, {nbytes} bytes at data offset {rel}) ends at "
                       f"{rel + nbytes} but the data section has {max(data_size, 0)} bytes (truncated?)")
    cursor, previous = 0, None
    for name, _, _, rel, nbytes, _ in sorted(tensors, key=lambda t: t[3]):
        if rel < cursor:
            raise _Bad(f"tensor {_q(name)} at data offset {rel} overlaps tensor {_q(previous)} (which ends at {cursor})")
        if rel > _align(cursor, alignment):
            if previous is None:
                raise _Bad(f"the first tensor {_q(name)} starts at data offset {rel}, not 0")
            raise _Bad(f"tensor {_q(name)} at data offset {rel} leaves a gap of {rel - cursor} bytes after "
                       f"tensor {_q(previous)} (more than alignment padding)")
        cursor, previous = rel + nbytes, name
    if data_size > _align(cursor, alignment):
        if previous is None:
            raise _Bad(f"{data_size} bytes follow the header but the file has no tensors")
        raise _Bad(f"{data_size - cursor} bytes after the last tensor (at most "
                   f"{_align(cursor, alignment) - cursor} bytes of alignment padding may follow)")

    numels = {t[0]: t[5] for t in tensors}
    for key, (vtype, item) in kv_types.items():
        if not key.startswith(ORIG_SHAPE_KEY):
            continue
        target = key[len(ORIG_SHAPE_KEY):]
        value = kv[key]
        if target not in numels:
            raise _Bad(f"{_q(key)} names no tensor in the file")
        if vtype != _ARRAY or item not in _INTEGER_TYPES or not isinstance(value, list):
            raise _Bad(f"{_q(key)} must be an array of integers, not {_TYPE_NAMES[vtype]}"
                       + (f" of {_TYPE_NAMES[item]}" if vtype == _ARRAY and item in _MIN_SIZE else ""))
        if not 1 <= len(value) <= MAX_ORIG_SHAPE_DIMS or min(value) < 1:
            raise _Bad(f"{_q(key)} {_q(str(value))} must be 1 to {MAX_ORIG_SHAPE_DIMS} dimensions, each >= 1")
        if math.prod(value) != numels[target]:
            raise _Bad(f"{_q(key)} {value} holds {math.prod(value)} elements but tensor {_q(target)} "
                       f"stores {numels[target]}")
    return _Parsed(version, kv, kv_types, tensors, alignment, data_offset)


# Errors the parser could meet on some byte string that the checks above do not foresee: they are
# still a verdict on the file, never a traceback.
_PARSE_ERRORS = (struct.error, ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError, MemoryError)


class GGUFCheckpoint(Checkpoint):
    """A GGUF file: names, logical shapes and types from the header (validated in full at open,
    nothing of the data section read), tensors read zero-copy from an mmap.

    Besides the Checkpoint interface:
      kv            key -> value (int, float, bool, str, list for arrays; None for non-UTF-8 strings)
      architecture  `general.architecture`, or None
      version       the GGUF version (2 or 3)
      layout        [GGUFTensor] in header order: stored name, `.tensors` key, ggml type, ggml-order
                    dims (`.shape`: numpy order), absolute offset, nbytes, numel
      data_offset   absolute offset of the data section; alignment: `general.alignment` or 32
      file_size     the file's size in bytes
      ggml_type(name), raw(name), read_span(begin, end), position(name)
    """

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        super().__init__(paths=[path], format="gguf")
        self._mmap = None
        with open_regular(path) as fh:  # refuses FIFOs and devices without blocking on them
            try:
                self.file_size = os.fstat(fh.fileno()).st_size
                if self.file_size < HEADER_BYTES:
                    raise CkptError(f"{path}: not a valid GGUF file: file is {self.file_size} bytes, "
                                    f"shorter than the {HEADER_BYTES}-byte GGUF header")
                mapping = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)  # keeps its own descriptor
            except OSError as exc:
                raise CkptError(f"{path}: cannot read ({exc.strerror or exc})") from None
        try:
            parsed = _parse(mapping, self.file_size)
            self._setup(path, parsed)
        except _Bad as exc:
            mapping.close()
            raise CkptError(f"{path}: not a valid GGUF file: {_one_line(str(exc))}") from None
        except _PARSE_ERRORS as exc:
            mapping.close()
            raise CkptError(f"{path}: not a valid GGUF file: {type(exc).__name__}: {_one_line(str(exc))}") from None
        except BaseException:
            mapping.close()
            raise
        self._mmap = mapping

    def _setup(self, path: Path, parsed: _Parsed) -> None:
        self.version = parsed.version
        self.kv: dict[str, object] = parsed.kv
        self._kv_types = parsed.kv_types
        self.alignment = parsed.alignment
        self.data_offset = parsed.data_offset
        self.metadata = {k: str(v) for k, v in self.kv.items() if not k.startswith(ORIG_SHAPE_KEY)}
        # llama.cpp names T5 and LLM tensors its own way; read them as transformers names, as ComfyUI-GGUF does
        rename = _t5_to_hf if self.architecture in ("t5", "t5encoder") else (lambda n: n)
        self._unpermute: dict[str, int] = {}  # name -> heads: q/k rows to put back in HF order (arch llama)
        if self.architecture in _LLM_ARCHS:
            rename, self._unpermute = _llm_to_hf(self.kv, self.architecture, [t[:2] for t in parsed.tensors])
        self.layout: list[GGUFTensor] = []
        self._records: dict[str, GGUFTensor] = {}
        for name, dims, qtype, rel, nbytes, numel in parsed.tensors:
            key = rename(name)
            if key in self._records:
                raise _Bad(f"tensor {_q(name)} is read as {_q(key)}, which another tensor is also read as")
            rec = GGUFTensor(name, key, qtype, dims, parsed.data_offset + rel, nbytes, numel)
            orig = self.kv.get(ORIG_SHAPE_KEY + name)  # validated by _parse
            shape = tuple(int(d) for d in orig) if orig is not None else rec.shape
            self.tensors[key] = TensorInfo(key, shape, PLAIN.get(qtype.name, qtype.name), nbytes)
            self.layout.append(rec)
            self._records[key] = rec

    @property
    def architecture(self) -> str | None:
        arch = self.kv.get("general.architecture")
        return str(arch) if arch is not None else None

    def record(self, name: str) -> GGUFTensor:
        """The layout record of a tensor, by its name in `.tensors`."""
        return self._records[name]

    def ggml_type(self, name: str):
        return self._records[name].type

    def position(self, name: str) -> tuple[int, ...]:
        return (self._records[name].offset,)

    def _buffer(self) -> mmap.mmap:
        if self._mmap is None:
            raise ValueError(f"{self.path}: checkpoint is closed")
        return self._mmap

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of a tensor (quantized blocks for quantized types), as read-only uint8
        straight from the mmap."""
        rec = self._records[name]
        return np.frombuffer(self._buffer(), dtype=np.uint8, count=rec.nbytes, offset=rec.offset)

    def stored_layout(self, name: str) -> tuple[str, tuple[int, ...]]:
        rec = self._records[name]
        return rec.type.name, tuple(rec.shape)

    def stored_bytes(self, name: str) -> np.ndarray:
        heads = self._unpermute.get(name)
        if heads is None:
            return self.raw(name)
        from ckptkit.quant.llm_names import unpermute_rows

        rec = self._records[name]  # rows are whole blocks: the bytes of the tensor in HF row order
        rows = rec.numel // rec.dims[0] if len(rec.dims) > 1 else rec.numel
        return unpermute_rows(self.raw(name), rows, heads)

    def read_span(self, begin: int, end: int) -> bytes:
        """A copy of the file's bytes [begin, end) (clipped to the file), e.g. padding to inspect."""
        begin, end = max(0, begin), min(end, self.file_size)
        return self._buffer()[begin:end] if end > begin else b""

    def _load(self, name: str) -> torch.Tensor:
        """A tensor of its own (a copy, or dequantized): the mapped pages it was read from are given
        back at once, so a pass over a big file holds one tensor, not the file (see _release)."""
        try:
            return self._read(name)
        finally:
            self._release(name)

    def _release(self, name: str) -> None:
        """Drop this process's mapping of a tensor's whole pages (they stay in the page cache). The
        mapping is shared and read-only, so a view from raw() still in use reads the same bytes: its
        pages fault in again from the file."""
        rec, mapping = self._records[name], self._mmap
        start = -(-rec.offset // mmap.PAGESIZE) * mmap.PAGESIZE
        stop = (rec.offset + rec.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if mapping is not None and not mapping.closed and stop > start and hasattr(mmap, "MADV_DONTNEED"):
            mapping.madvise(mmap.MADV_DONTNEED, start, stop - start)

    def _read(self, name: str) -> torch.Tensor:
        t = self._read_stored(name)
        heads = self._unpermute.get(name)
        if heads is None:
            return t
        from ckptkit.quant.llm_names import unpermute

        return unpermute(t, heads).contiguous()  # llama.cpp's q/k order back to transformers'

    def _read_stored(self, name: str) -> torch.Tensor:
        rec = self._records[name]
        info = self.tensors[name]
        type_name = rec.type.name
        if type_name in _PLAIN_NUMPY:
            arr = np.frombuffer(self._buffer(), dtype=_PLAIN_NUMPY[type_name], count=rec.numel, offset=rec.offset)
            return torch.from_numpy(arr.copy()).reshape(info.shape)
        if type_name == "BF16":
            return torch.from_numpy(self.raw(name).copy()).view(torch.bfloat16).reshape(info.shape)
        from ckptkit.quant import ggml

        if type_name in ggml.KERNEL_TYPES:  # our C kernels (ggml's dequantize_row_*), multithreaded
            values = ggml.dequantize(self.raw(name), type_name, rec.shape)
            return torch.from_numpy(values).reshape(info.shape)
        if not _gguf_py_dequantizes(rec.type):
            raise CkptError(f"{self.path}: tensor {name!r} is stored as {type_name}, which ckptkit cannot dequantize")
        import gguf

        rows = self.raw(name).reshape(rec.numel // rec.dims[0], -1)  # other ggml types (IQ*, TQ*, ...)
        try:
            with np.errstate(all="ignore"):  # garbage blocks give NaN/inf: data, not a warning
                arr = gguf.quants.dequantize(rows, rec.type)
            out = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).reshape(info.shape)
        except Exception as exc:  # gguf-py's code, our verdict: one line naming file and tensor
            raise CkptError(f"{self.path}: tensor {name!r} ({type_name}) could not be dequantized by gguf-py: "
                            f"{type(exc).__name__}: {_one_line(str(exc))}") from None
        return out

    def close(self) -> None:
        mapping, self._mmap = self._mmap, None
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:  # arrays from raw() still use it: it closes when the last one goes
                pass


_GGUF_PY_DEQUANTIZES: dict[int, bool] = {}


def _gguf_py_dequantizes(qtype) -> bool:
    """Whether gguf.quants.dequantize implements `qtype` (tried once per type on one zero block)."""
    import gguf

    known = _GGUF_PY_DEQUANTIZES.get(int(qtype))
    if known is None:
        _, type_size = gguf.GGML_QUANT_SIZES[qtype]
        try:
            gguf.quants.dequantize(np.zeros((1, type_size), dtype=np.uint8), qtype)
            known = True
        except Exception:  # NotImplementedError for Q8_1, Q8_K, ...
            known = False
        _GGUF_PY_DEQUANTIZES[int(qtype)] = known
    return known


def _one_line(text: str, limit: int = 200) -> str:
    text = printable(" ".join(text.split()))
    return text if len(text) <= limit else text[:limit - 3] + "..."


_LLM_ARCHS = frozenset({"llama", "qwen2vl", "qwen3", "qwen3vl"})  # ComfyUI-GGUF's LLAMA_SD_MAP archs


def _llm_to_hf(kv: dict, arch: str, stored: list[str]):
    """(rename, {name: heads}) for an LLM text encoder: ComfyUI-GGUF's LLAMA_SD_MAP, then the prefix
    the tower had in the file ckptkit wrote it from (`ckptkit.hf_prefix`; ComfyUI's `model.` names
    otherwise); arch llama's q/k are un-permuted with the file's head counts (ComfyUI-GGUF's fixed
    32/8 where it has none)."""
    from ckptkit.quant import llm_names

    prefix = kv.get("ckptkit.hf_prefix")
    prefix = prefix if isinstance(prefix, str) and prefix in llm_names.TEXT_PREFIXES else "model."

    def rename(name: str) -> str:
        return llm_names.from_canonical(llm_names.to_hf(name), prefix)

    heads = {}
    if arch == "llama":
        q, k = (kv.get(f"llama.attention.{key}") for key in ("head_count", "head_count_kv"))
        q = q if isinstance(q, int) and q > 0 else llm_names.COMFY_HEADS[0]
        k = k if isinstance(k, int) and k > 0 else llm_names.COMFY_HEADS[1]
        for name, dims in stored:
            rows = math.prod(dims[1:]) if len(dims) > 1 else math.prod(dims)
            for suffix, h in (("attn_q", q), ("attn_k", k)):
                # rows that are no whole number of head pairs were never permuted by llama.cpp: left as stored
                if name.startswith("blk.") and name.endswith((f".{suffix}.weight", f".{suffix}.bias")) \
                        and len(dims) <= 2 and rows % (2 * h) == 0:
                    heads[rename(name)] = h
    return rename, heads


def _t5_to_hf(name: str) -> str:
    from ckptkit.quant.t5_names import to_hf

    return to_hf(name)


class _Sink:
    """Tensor data written and hashed on a background thread (file writes and hashlib release
    the GIL), so the caller quantizes the next tensor meanwhile; at most `depth` tensors wait."""

    def __init__(self, fout, hasher, depth: int = 2):
        import queue
        import threading

        self._fout, self._hash = fout, hasher
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    for piece in item:
                        self._hash.update(piece)
                        self._fout.write(piece)
                except BaseException as exc:  # reported to the writer's thread at its next call
                    self._error = exc

    def put(self, *pieces) -> None:
        self._check()
        self._queue.put(pieces)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._check()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error


class GGUFStreamWriter:
    """Streaming GGUF writer (gguf-py's GGUFWriter in streaming order: infos, header, KV, tensor
    infos, then tensor data one at a time), with atomic rename. `specs` gives, per tensor in
    write order: (name, stored numpy shape, ggml type name, nbytes). gguf-py writes everything up
    to the tensor data; the data (with gguf-py's alignment padding, byte for byte) goes through a
    background sink that also hashes the file: `sha256` once the writer has closed."""

    def __init__(self, path: str | os.PathLike, arch: str, specs: Iterable[tuple[str, tuple[int, ...], str, int]],
                 kv: dict[str, object] | None = None):
        self.path = Path(path)
        self.arch = arch
        self.specs = list(specs)
        self.kv = dict(kv or {})
        for name, shape, *_ in self.specs:
            if len(name.encode("utf-8")) > 127:
                raise CkptError(f"{self.path}: tensor name {name!r} is over 127 bytes, which ggml cannot load")
            if len(tuple(shape)) == 0:  # gguf-py would write n_dims 0, which the reader above refuses
                raise CkptError(f"{self.path}: tensor {name!r} is 0-dimensional (a scalar, e.g. the LTX VAE's "
                                f"timestep_scale_multiplier); a GGUF tensor has 1 to {GGUF_MAX_DIMS} dimensions: "
                                f"keep this component in safetensors")
        self._next = 0

    def __enter__(self) -> "GGUFStreamWriter":
        import gguf

        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        try:
            w = gguf.GGUFWriter(tmp, self.arch)
            for key, value in self.kv.items():
                _add_kv(w, key, value)
            for name, shape, type_name, nbytes in self.specs:
                # A float32 "tensor dtype" with raw_dtype keeps our logical shape as given (gguf-py
                # would otherwise reinterpret it as a byte shape).
                w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes,
                                  raw_dtype=gguf.GGMLQuantizationType[type_name])
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            import hashlib

            fout = w.fout[0]
            self._pos, self._align = fout.tell(), w.data_alignment
            self._hash = hashlib.sha256()
            with open(tmp, "rb") as head:  # what gguf-py wrote (flushed): header, KV, tensor infos
                self._hash.update(head.read(self._pos))
            self._sink = _Sink(fout, self._hash)
        except BaseException as exc:  # __exit__ never runs when __enter__ fails: remove the temp file here
            import sys

            self._ctx.__exit__(type(exc), exc, sys.exc_info()[2])
            raise
        self._writer = w
        return self

    def write(self, name: str, data: np.ndarray) -> None:
        want, _, _, nbytes = self.specs[self._next]
        if name != want or data.nbytes != nbytes:
            raise ValueError(f"expected {nbytes} bytes of {want!r}, got {data.nbytes} of {name!r}")
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        start = -(-self._pos // self._align) * self._align  # as gguf-py's write_tensor_data pads
        end = start + data.nbytes
        after = -(-data.nbytes // self._align) * self._align - data.nbytes
        self._sink.put(bytes(start - self._pos), data, bytes(after))
        self._pos = end + after
        self._next += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        own = None  # an error found here, after a block that raised none
        try:
            try:
                self._sink.close()
            except BaseException as err:
                own = err
            if own is None and exc_type is None and self._next != len(self.specs):
                own = ValueError(f"{self.path}: {len(self.specs) - self._next} planned tensors were never written")
            self._writer.close()
            if exc_type is None and own is not None:
                exc_type, exc, tb = type(own), own, own.__traceback__
            self.sha256 = self._hash.hexdigest() if exc_type is None else None
        finally:
            self._ctx.__exit__(exc_type, exc, tb)  # removes the temporary file on any error
        if own is not None and exc is own:
            raise own


def _add_kv(writer, key: str, value) -> None:
    import gguf

    if key == "general.architecture":
        return
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value) if 0 <= value < 2**32 else writer.add_int64(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, (bytes, bytearray)):  # an array of UINT8 (tokenizer.ggml.precompiled_charsmap)
        writer.add_array(key, bytes(value))
    elif isinstance(value, (list, tuple)):
        if value and all(isinstance(v, int) for v in value):
            writer.add_key_value(key, list(value), gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.INT32)
        else:
            writer.add_array(key, list(value))
    else:
        raise TypeError(f"cannot store {type(value).__name__} in GGUF key {key}")


def torch_to_plain(tensor: torch.Tensor) -> tuple[np.ndarray, str]:
    """A float tensor as the numpy array and ggml type name GGUF stores it with."""
    if tensor.dtype == torch.bfloat16:
        return tensor.contiguous().view(torch.int16).numpy().view(np.uint8).reshape(-1), "BF16"
    if tensor.dtype == torch.float16:
        return tensor.contiguous().numpy(), "F16"
    return tensor.contiguous().to(torch.float32).numpy(), "F32"
