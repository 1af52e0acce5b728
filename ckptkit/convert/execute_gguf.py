"""The executor's GGUF path: tensors produced one at a time, quantized (or converted to a plain
ggml type) and streamed through GGUFStreamWriter."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ckptkit.convert.plan import OutputFile, TensorOp
from ckptkit.formats.base import Checkpoint
from ckptkit.formats.gguf import GGUFStreamWriter


def encode(op: TensorOp, tensor: torch.Tensor, threads: int | None = None) -> np.ndarray:
    """A produced tensor as the bytes its ggml type stores."""
    from ckptkit.quant import ggml

    t = tensor.detach()
    if op.dtype == "F32":
        return t.to(torch.float32).contiguous().numpy().reshape(-1).view(np.uint8)
    if op.dtype == "F16":
        return t.to(torch.float16).contiguous().numpy().reshape(-1).view(np.uint8)
    if op.dtype == "BF16":
        return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().reshape(-1).view(np.uint8)
    rows = t.to(torch.float32).contiguous().numpy().reshape(-1, op.shape[-1])
    return ggml.quantize(rows, op.dtype, threads=threads).reshape(-1)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(16 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_gguf(out: OutputFile, target: Path, source: Checkpoint, pool, lookahead: int,
               progress: Callable[[int], None]) -> tuple[str, int]:
    from ckptkit.convert.execute import _tensors_in_order

    specs = [(t.name, t.shape, t.dtype, t.nbytes) for t in out.tensors]
    kv = dict(out.kv)
    with GGUFStreamWriter(target, out.gguf_arch or "unknown", specs, kv) as writer:
        for op, tensor in _tensors_in_order(out.tensors, source, pool, lookahead):
            writer.write(op.name, encode(op, tensor))
            progress(op.nbytes)
            del tensor
    return _file_sha256(target), target.stat().st_size
