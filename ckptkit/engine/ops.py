"""Per-tensor operations of a plan: for each output name its source expression, the dtype the
expression gives and the dtype it is written as. Every planner builds its TensorOps here."""

from __future__ import annotations

from ckptkit.engine import expr
from ckptkit.engine.plan import TensorOp
from ckptkit.errors import CkptError, printable
from ckptkit.formats.base import Checkpoint
from ckptkit.formats.dtypes import DTYPES, FLOAT_CODES
from ckptkit.formats.scaled import is_marker

CAST_TARGETS = {"keep": None, "fp16": "F16", "bf16": "BF16", "fp32": "F32"}
POSITION_IDS = "embeddings.position_ids"


def source_dtype(ckpt: Checkpoint, e: expr.Expr) -> str:
    if e.op == "arange":
        return "I64"
    if e.op in ("full", "randn", "eye"):  # made, not read: the dtype it is made in
        return e.args[-1]
    dtype = ckpt.tensors[e.sources()[0]].dtype
    return dtype if dtype in DTYPES else "F32"  # quantized GGUF data loads dequantized to float32


def tensor_ops(ckpt: Checkpoint, ops: dict[str, expr.Expr], cast: str | None, fix_position_ids: bool,
               notes: list[str], label: str) -> list[TensorOp]:
    src_shapes = {n: t.shape for n, t in ckpt.tensors.items()}
    out = []
    for name, e in ops.items():
        note = ""
        if name.endswith(POSITION_IDS) and fix_position_ids:
            n = expr.shape_of(e, src_shapes)[-1]
            e, note = expr.arange(n), "position_ids rebuilt as arange int64"
            notes.append(f"{label}: {name} rebuilt as arange({n}) int64")
        sdt = source_dtype(ckpt, e)
        shape = expr.shape_of(e, src_shapes)
        if 0 in shape and not is_marker(name):  # ComfyUI's `scaled_fp8` marker is empty by design
            raise CkptError(f"{label}: tensor {printable(name)} has shape {list(shape)}: a zero-sized dimension "
                            "(no values) in a model component; the file is damaged")
        dtype = cast if cast and sdt in FLOAT_CODES and not name.endswith(POSITION_IDS) else sdt
        out.append(TensorOp(name, e, expr.shape_of(e, src_shapes), sdt, dtype, note))
    return out
