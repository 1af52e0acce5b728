"""Producing planned tensors: each one evaluated from the lazily read source (layout expression,
then cast), in the plan's order, optionally a few ahead on a thread pool. Both writers
(execute.py for safetensors, gguf_out.py for GGUF) consume this."""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

import torch

from ckptkit.engine.plan import TensorOp
from ckptkit.errors import CkptError
from ckptkit.formats.base import Checkpoint
from ckptkit.formats.dtypes import DTYPES


def produce(op: TensorOp, source: Checkpoint) -> torch.Tensor:
    """Evaluate one planned tensor: layout expression, then cast. A tensor planned as `stored`
    comes back as its stored bytes (uint8 numpy), for the GGUF writer to copy."""
    if op.stored:
        return source.stored_bytes(op.expr.sources()[0])
    tensor = op.expr.evaluate(source.load)
    if op.dtype != op.src_dtype and op.dtype in DTYPES:  # ggml types are encoded by the GGUF writer
        tensor = tensor.to(DTYPES[op.dtype][0])
    if tuple(tensor.shape) != op.shape:
        raise CkptError(f"{op.name}: planned shape {list(op.shape)}, source gives {list(tensor.shape)}")
    return tensor


def tensors_in_order(ops: list[TensorOp], source: Checkpoint, pool: ThreadPoolExecutor | None, lookahead: int):
    """(op, tensor) in the plan's order; with a pool, up to `lookahead` tensors are produced ahead."""
    if pool is None:
        for op in ops:
            yield op, produce(op, source)
        return
    pending: deque = deque()
    it = iter(ops)
    for op in it:
        pending.append((op, pool.submit(produce, op, source)))
        if len(pending) >= lookahead:
            break
    while pending:
        op, fut = pending.popleft()
        nxt = next(it, None)
        if nxt is not None:
            pending.append((nxt, pool.submit(produce, nxt, source)))
        yield op, fut.result()


def overflows(op: TensorOp, tensor: torch.Tensor, source: Checkpoint) -> bool:
    """A cast to fp16 that turns finite values into inf."""
    if op.dtype != "F16" or op.src_dtype not in ("F32", "BF16", "F64") or not tensor.numel():
        return False
    return bool(torch.isinf(tensor).any()) and not bool(torch.isinf(op.expr.evaluate(source.load)).any())
