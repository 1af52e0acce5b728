"""The executor's GGUF path: tensors produced one at a time, quantized (or converted to a plain
ggml type) and streamed through GGUFStreamWriter."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ckptkit.engine.plan import OutputFile, TensorOp
from ckptkit.engine.produce import tensors_in_order
from ckptkit.errors import CkptError
from ckptkit.formats.base import Checkpoint
from ckptkit.formats import hashing
from ckptkit.formats.gguf import GGUFStreamWriter


FP16_MAX = 65504.0


def encode(op: TensorOp, tensor: torch.Tensor, threads: int | None = None) -> np.ndarray:
    """A produced tensor as the bytes its ggml type stores. Never writes a non-finite block scale:
    the planner's scan keeps such tensors unquantized; without it (`--no-scan`) a tensor that
    would get one is refused here, naming it."""
    from ckptkit.quant import ggml

    t = tensor.detach()
    if op.dtype == "F32":
        return t.to(torch.float32).contiguous().numpy().reshape(-1).view(np.uint8)
    if op.dtype == "F16":
        h = t.to(torch.float16).contiguous()
        if t.dtype != torch.float16 and bool(torch.isinf(h).any()) and not bool(torch.isinf(t).any()):
            raise CkptError(f"{op.name}: values beyond fp16's range cannot be stored as F16 "
                            "(run without --no-scan to keep such tensors F32)")
        return h.numpy().reshape(-1).view(np.uint8)
    if op.dtype == "BF16":
        return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().reshape(-1).view(np.uint8)
    rows = t.to(torch.float32).contiguous().numpy().reshape(-1, op.shape[-1])
    q = ggml.quantize(rows, op.dtype, threads=threads, weights=op.importance)
    if rows.size:
        lo, hi = float(rows.min()), float(rows.max())  # NaN/inf propagate; two passes, no temporaries
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise CkptError(f"{op.name}: non-finite values cannot be quantized to {op.dtype} "
                            "(run without --no-scan to keep such tensors unquantized)")
        if max(-lo, hi) > FP16_MAX and not np.isfinite(ggml.dequantize(q, op.dtype, rows.shape, threads=threads)).all():
            raise CkptError(f"{op.name}: values up to {max(-lo, hi):.3g} overflow {op.dtype}'s fp16 block scales "
                            "(run without --no-scan to keep such tensors F32)")
    return q.reshape(-1)


def write_gguf(out: OutputFile, target: Path, source: Checkpoint, pool, lookahead: int,
               progress: Callable[[int], None]) -> tuple[str, int]:
    specs = [(t.name, t.shape, t.dtype, t.nbytes) for t in out.tensors]
    kv = dict(out.kv)
    with GGUFStreamWriter(target, out.gguf_arch or "unknown", specs, kv) as writer:
        for op, tensor in tensors_in_order(out.tensors, source, pool, lookahead):
            writer.write(op.name, encode(op, tensor))
            progress(op.nbytes)
            del tensor
    return hashing.file_sha256(target), target.stat().st_size
