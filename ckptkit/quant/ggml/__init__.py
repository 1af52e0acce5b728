"""ggml block quantization from Python, byte-exact with ggml's reference quantizer.

The block types (Q4_0 ... Q8_0, Q2_K ... Q6_K) run in the C extension `_kernels`, a port of ggml's
`quantize_row_*_ref` / `dequantize_row_*` (see the header of `_kernels.c` for why we port instead
of depending on a library). So does F16 quantization, like `GGML_FP32_TO_FP16` (round to nearest
even, overflow to inf, subnormals kept; NaN becomes sign | 0x7E00 as in ggml's portable
conversion). F32, BF16 and dequantization to F32 of F16/BF16 are done here in numpy, BF16 like
`ggml_compute_fp32_to_bf16` (round to nearest even, NaN forced quiet).

On x86-64 CPUs with AVX2 (+F16C) / AVX-512, Q8_0 and F16 run SIMD versions of the reference code
(same bytes, 5-15x faster; see `_kernels.c`). CKPTKIT_GGML_SCALAR=1 in the environment (read at
import) or `_kernels.set_simd("scalar")` switches to the scalar reference code only.

Rows are independent, so `quantize`/`dequantize` split the rows into chunks and run them on a
thread pool; the kernels release the GIL. The bytes do not depend on the number of threads.

    >>> q = quantize(w, "Q4_K")                  # uint8 (rows, row_bytes(Q4_K, cols))
    >>> w2 = dequantize(q, "Q4_K", w.shape)      # float32
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
from gguf import GGMLQuantizationType

from . import _kernels

__all__ = [
    "QUANT_TYPES",
    "KERNEL_TYPES",
    "block_size",
    "type_size",
    "row_bytes",
    "type_id",
    "quantize",
    "dequantize",
]

_FLOAT_TYPES = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2)}
# name -> (type id, block size, bytes per block) for the types the C kernels handle
_KERNEL = {name: (tid, bs, ts) for tid, (name, bs, ts) in _kernels.TYPES.items()}

KERNEL_TYPES: tuple[str, ...] = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
QUANT_TYPES: tuple[str, ...] = ("F32", "F16", "BF16") + KERNEL_TYPES

# the C kernels also convert F32 -> F16 (the same bytes as the numpy code below, faster with SIMD)
assert set(_KERNEL) == set(KERNEL_TYPES) | {"F16"}, "_kernels.TYPES does not match KERNEL_TYPES"
for _name, (_tid, _bs, _ts) in _KERNEL.items():  # the C block structs must match gguf-py's table
    assert int(GGMLQuantizationType[_name]) == _tid, _name

if os.environ.get("CKPTKIT_GGML_SCALAR", "").strip() not in ("", "0"):
    _kernels.set_simd("scalar")

# rows handed to one C call; small enough to balance threads, big enough to hide call overhead
_MIN_ROWS_PER_TASK = 8


def _name(qtype: Any) -> str:
    """Canonical type name from a name ('q4_k'), a GGMLQuantizationType or its int value."""
    if isinstance(qtype, GGMLQuantizationType):
        name = qtype.name
    elif isinstance(qtype, (int, np.integer)) and not isinstance(qtype, bool):
        try:
            name = GGMLQuantizationType(int(qtype)).name
        except ValueError:
            raise ValueError(f"unknown ggml type id {qtype!r}") from None
    elif isinstance(qtype, str):
        name = qtype.upper()
    else:
        raise TypeError(f"ggml type must be a name, an int or a GGMLQuantizationType, not {type(qtype).__name__}")
    if name not in QUANT_TYPES:
        raise ValueError(f"unsupported ggml type {name!r}; supported: {', '.join(QUANT_TYPES)}")
    return name


def type_id(qtype: Any) -> int:
    """gguf/ggml type id (GGMLQuantizationType value) of a supported type."""
    return int(GGMLQuantizationType[_name(qtype)])


def block_size(qtype: Any) -> int:
    """Elements per block (1 for F32/F16/BF16, 32 for Q*_0/Q*_1, 256 for K-quants)."""
    name = _name(qtype)
    return _FLOAT_TYPES[name][0] if name in _FLOAT_TYPES else _KERNEL[name][1]


def type_size(qtype: Any) -> int:
    """Bytes per block."""
    name = _name(qtype)
    return _FLOAT_TYPES[name][1] if name in _FLOAT_TYPES else _KERNEL[name][2]


def row_bytes(qtype: Any, n_per_row: int) -> int:
    """Bytes of one quantized row of n_per_row elements; ValueError if not a whole number of blocks."""
    name = _name(qtype)
    n = int(n_per_row)
    bs = block_size(name)
    if n < 0 or n % bs:
        raise ValueError(f"{name}: row length {n} is not a multiple of the block size {bs}")
    return n // bs * type_size(name)


def _threads(threads: int | None) -> int:
    if threads is None:
        return os.cpu_count() or 1
    threads = int(threads)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return threads


def _chunks(n_rows: int, threads: int) -> list[tuple[int, int]]:
    n_tasks = max(1, min(threads * 4, n_rows // _MIN_ROWS_PER_TASK))
    bounds = np.linspace(0, n_rows, n_tasks + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


# below this many elements a tensor is done on the calling thread: handing it out costs more
_MIN_PARALLEL_ELEMENTS = 1 << 18
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    """A persistent pool per thread count (starting threads for every tensor is a measurable cost
    on models of thousands of small tensors)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ggml")
        return pool


def _run_rows(fn, n_rows: int, threads: int, n_per_row: int = 0) -> None:
    """Call fn(r0, r1) over row ranges covering [0, n_rows), on up to `threads` threads."""
    if threads > 1 and n_rows * n_per_row < _MIN_PARALLEL_ELEMENTS:
        threads = 1
    chunks = _chunks(n_rows, threads)
    if threads == 1 or len(chunks) <= 1:
        for r0, r1 in chunks:
            fn(r0, r1)
        return
    pool = _pool(threads)
    for fut in [pool.submit(fn, r0, r1) for r0, r1 in chunks]:
        fut.result()


def _as_float32_2d(x: Any) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        x = x.detach().to("cpu")
        import torch  # only when given a tensor

        if x.dtype != torch.float32:
            x = x.to(torch.float32)
        x = x.numpy()
    a = np.asarray(x)
    if a.dtype != np.float32:
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise TypeError(f"cannot quantize an array of dtype {a.dtype}")
        a = a.astype(np.float32)
    if a.ndim != 2:
        raise ValueError(f"quantize expects a 2-D array (rows, n_per_row), got shape {a.shape}")
    return np.ascontiguousarray(a)


# --- BF16 with ggml's rounding ---------------------------------------------------------------------


def _fp32_to_bf16_bits(a: np.ndarray, out: np.ndarray) -> None:
    """uint16 bits as ggml_compute_fp32_to_bf16 (round to nearest even, NaN made quiet)."""
    u = a.view(np.uint32)
    r = (u >> np.uint32(16)) & np.uint32(1)
    r += np.uint32(0x7FFF)
    r += u  # no wrap-around: only NaNs come near 2**32, and they are replaced below
    r >>= np.uint32(16)
    out[...] = r
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():
        out[nan] = (u[nan] >> np.uint32(16)).astype(np.uint16) | np.uint16(64)


# --- public API ------------------------------------------------------------------------------------


def quantize(array: Any, qtype: Any, threads: int | None = None, weights: Any = None) -> np.ndarray:
    """Quantize a 2-D float array row by row: uint8 array (rows, row_bytes(qtype, cols)).

    Byte-exact with ggml's `ggml_quantize_chunk`: without `weights` its reference quantizer; with
    `weights` (one importance value per column, as an imatrix holds them; all ones is what
    stable-diffusion.cpp's convert passes) its weighted search, for the types that have one (Q8_0
    and the plain types ignore them, as ggml does). `threads` defaults to os.cpu_count(); the
    result does not depend on it.
    """
    name = _name(qtype)
    a = _as_float32_2d(array)
    n_rows, n_per_row = a.shape
    w = None
    if weights is not None:
        w = np.ascontiguousarray(weights, dtype=np.float32).reshape(-1)
        if w.size != n_per_row:
            raise ValueError(f"weights: {w.size} values for rows of {n_per_row}")
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError("weights must be finite and non-negative")
    rb = row_bytes(name, n_per_row)
    out = np.empty((n_rows, rb), dtype=np.uint8)
    if name == "F32":
        out.view(np.float32)[...] = a
        return out
    if name == "BF16":  # numpy releases the GIL in these loops: chunk them too
        bits = out.view(np.uint16)

        def work(r0: int, r1: int) -> None:
            _fp32_to_bf16_bits(a[r0:r1], bits[r0:r1])

    else:
        tid = _KERNEL[name][0]

        def work(r0: int, r1: int) -> None:
            _kernels.quantize(tid, a[r0:r1], r1 - r0, n_per_row, out[r0:r1], w)

    _run_rows(work, n_rows, _threads(threads), n_per_row)
    return out


def dequantize(raw: Any, qtype: Any, shape: Sequence[int], threads: int | None = None) -> np.ndarray:
    """Dequantize ggml rows back to float32 of `shape` (last dim = elements per row).

    `raw` is any bytes-like / uint8 array holding prod(shape[:-1]) rows of
    row_bytes(qtype, shape[-1]) bytes each (as `quantize` returns, or a slice of a GGUF file).
    """
    name = _name(qtype)
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 0 for s in shape):
        raise ValueError(f"invalid shape {shape}")
    n_per_row = shape[-1]
    n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    rb = row_bytes(name, n_per_row)
    if isinstance(raw, np.ndarray):
        buf = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    else:
        buf = np.frombuffer(memoryview(raw).cast("B"), dtype=np.uint8)
    if buf.size != n_rows * rb:
        raise ValueError(f"{name}: got {buf.size} bytes, expected {n_rows * rb} for shape {shape}")
    if name == "F32":
        return buf.view(np.float32).reshape(shape).copy()
    if name == "F16":
        return buf.view(np.float16).astype(np.float32).reshape(shape)
    if name == "BF16":
        return (buf.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32).reshape(shape)
    tid = _KERNEL[name][0]
    q = buf.reshape(n_rows, rb)
    out = np.empty((n_rows, n_per_row), dtype=np.float32)

    def work(r0: int, r1: int) -> None:
        _kernels.dequantize(tid, q[r0:r1], r1 - r0, n_per_row, out[r0:r1])

    _run_rows(work, n_rows, _threads(threads), n_per_row)
    return out.reshape(shape)
