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
    return _finish(op, op.expr.evaluate(source.load))


def _finish(op: TensorOp, tensor: torch.Tensor) -> torch.Tensor:
    if op.dtype != op.src_dtype and op.dtype in DTYPES:  # ggml types are encoded by the GGUF writer
        tensor = tensor.to(DTYPES[op.dtype][0])
    if tuple(tensor.shape) != op.shape:
        raise CkptError(f"{op.name}: planned shape {list(op.shape)}, source gives {list(tensor.shape)}")
    return tensor


def _group(op: TensorOp):
    """The transform `op` is one part of (expr.part), or None."""
    return op.expr.args[0] if op.expr.op == "part" and not op.stored else None


def _jobs(ops: list[TensorOp]):
    """The ops in order, consecutive parts of one transform together (a quantized layer's data,
    scales and state come from one quantization)."""
    job: list[TensorOp] = []
    for op in ops:
        if job and not (_group(op) is not None and _group(op) == _group(job[0])):
            yield job
            job = []
        job.append(op)
    if job:
        yield job


def _produce_job(job: list[TensorOp], source: Checkpoint) -> list[torch.Tensor]:
    group = _group(job[0])
    if group is None:
        return [produce(job[0], source)]
    parts = group.evaluate(source.load)
    return [_finish(op, parts[op.expr.args[1]]) for op in job]


def tensors_in_order(ops: list[TensorOp], source: Checkpoint, pool: ThreadPoolExecutor | None, lookahead: int):
    """(op, tensor) in the plan's order; with a pool, up to `lookahead` jobs (a tensor, or the parts
    of one transform) are produced ahead."""
    if pool is None:
        for job in _jobs(ops):
            yield from zip(job, _produce_job(job, source))
        return
    pending: deque = deque()
    it = _jobs(ops)
    for job in it:
        pending.append((job, pool.submit(_produce_job, job, source)))
        if len(pending) >= lookahead:
            break
    while pending:
        job, fut = pending.popleft()
        nxt = next(it, None)
        if nxt is not None:
            pending.append((nxt, pool.submit(_produce_job, nxt, source)))
        yield from zip(job, fut.result())


def overflows(op: TensorOp, tensor: torch.Tensor, source: Checkpoint) -> bool:
    """A cast to fp16 that turns finite values into inf."""
    if op.dtype != "F16" or op.src_dtype not in ("F32", "BF16", "F64") or not tensor.numel():
        return False
    return bool(torch.isinf(tensor).any()) and not bool(torch.isinf(op.expr.evaluate(source.load)).any())
