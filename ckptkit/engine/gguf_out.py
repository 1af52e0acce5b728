"""The executor's GGUF path: tensors produced one at a time, quantized (or converted to a plain
ggml type) and streamed through GGUFStreamWriter."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ckptkit.engine.plan import OutputFile, TensorOp
from ckptkit.engine.produce import overflows, tensors_in_order
from ckptkit.errors import Unscanned
from ckptkit.formats.base import Checkpoint
from ckptkit.formats.gguf import GGUFStreamWriter


FP16_MAX = 65504.0


def encode(op: TensorOp, tensor: torch.Tensor, threads: int | None = None, deferred_scan: bool = False) -> np.ndarray:
    """A produced tensor as the bytes its ggml type stores. Never writes a non-finite block scale:
    the planner's scan keeps such tensors unquantized; without it a tensor that would get one is
    refused here, naming it (`Unscanned`): the caller, if it only deferred the scan (a plan made
    without it, on the bet that nothing needs it), scans and plans again."""
    from ckptkit.quant import ggml

    if op.stored:  # already the bytes of its ggml type
        return tensor
    t = tensor.detach()
    if op.dtype == "F32":
        return t.to(torch.float32).contiguous().numpy().reshape(-1).view(np.uint8)
    if op.dtype == "F16":  # produce() cast it (the writer checked the cast)
        return t.to(torch.float16).contiguous().numpy().reshape(-1).view(np.uint8)
    if op.dtype == "BF16":
        return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().reshape(-1).view(np.uint8)
    rows = t.to(torch.float32).contiguous().numpy().reshape(-1, op.shape[-1])
    q = ggml.quantize(rows, op.dtype, threads=threads, weights=op.importance)
    if rows.size:
        lo, hi = float(rows.min()), float(rows.max())  # NaN/inf propagate; two passes, no temporaries
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise Unscanned(f"{op.name}: non-finite values cannot be quantized to {op.dtype} "
                            "(run without --no-scan to keep such tensors unquantized)")
        if max(-lo, hi) > FP16_MAX and not np.isfinite(ggml.dequantize(q, op.dtype, rows.shape, threads=threads)).all():
            raise Unscanned(f"{op.name}: values up to {max(-lo, hi):.3g} overflow {op.dtype}'s fp16 block scales "
                            "(run without --no-scan to keep such tensors F32)")
    return q.reshape(-1)


def write_gguf(out: OutputFile, target: Path, source: Checkpoint, pool, lookahead: int,
               progress: Callable[[int], None], deferred_scan: bool = False) -> tuple[str, int]:
    specs = [(t.name, t.shape, t.dtype, t.nbytes) for t in out.tensors]
    kv = dict(out.kv)
    with GGUFStreamWriter(target, out.gguf_arch or "unknown", specs, kv) as writer:
        for op, tensor in tensors_in_order(out.tensors, source, pool, lookahead):
            if op.dtype == "F16" and op.src_dtype != "F16" and not bool(torch.isfinite(tensor).all()):
                if deferred_scan:  # the scan keeps non-finite values and fp16 overflows out of F16
                    raise Unscanned(f"{op.name}: not finite as F16")
                if overflows(op, tensor, source):
                    raise Unscanned(f"{op.name}: values beyond fp16's range cannot be stored as F16 "
                                    "(run without --no-scan to keep such tensors F32)")
            writer.write(op.name, encode(op, tensor, deferred_scan=deferred_scan))
            progress(op.nbytes)
            del tensor
    return writer.sha256, target.stat().st_size
