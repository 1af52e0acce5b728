"""A plan is data: the output files, and for every output tensor its source expression and its
target type. Planners (split, merge, convert, quantize) build plans; only the executor writes.
`--dry-run` prints a plan; `--json` emits `Plan.to_json()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ckptkit.engine.expr import Expr


@dataclass
class TensorOp:
    name: str  # output tensor name
    expr: Expr  # over source tensor names (full names in the source checkpoint)
    shape: tuple[int, ...]
    src_dtype: str  # the dtype the expression evaluates to
    dtype: str  # target dtype code ("F16", ...) or ggml type name for GGUF outputs
    note: str = ""  # why this op is what it is (e.g. "position_ids rebuilt as arange")
    importance: object = None  # GGUF quantized types: per-column weights (ggml's weighted search), or None
    stored: bool = False  # GGUF: the source's stored bytes as they are (a quantized tensor never dequantized)

    @property
    def op(self) -> str:
        if self.expr.op in ("full", "randn"):
            return "init"  # a new tensor (e.g. the TrigFlow guidance embedder), made from no source
        if self.expr.op == "src":
            return "copy" if self.dtype == self.src_dtype or self.stored else "cast"
        if self.expr.op in ("fn", "part"):
            return "quantize"  # a registered transform: a library's quantized tensors (quant/layerwise.py)
        return "layout" if self.dtype == self.src_dtype else "layout+cast"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes as stored: plain dtypes by item size, ggml types by their blocks."""
        from ckptkit.formats.dtypes import DTYPES

        if self.dtype in DTYPES:
            return self.numel * DTYPES[self.dtype][1]
        from ckptkit.quant.types import nbytes

        return nbytes(self.dtype, self.shape)

    def to_json(self) -> dict:
        return {"name": self.name, "op": self.op, "source": self.expr.to_json(), "shape": list(self.shape),
                "src_dtype": self.src_dtype, "dtype": self.dtype, **({"note": self.note} if self.note else {}),
                **({"importance": "weighted"} if self.importance is not None else {}),
                **({"stored": True} if self.stored else {})}


@dataclass
class OutputFile:
    path: str  # relative to the output folder
    component: str | None
    layout: str  # "original" | "comfy" | "diffusers"
    tensors: list[TensorOp]
    format: str = "safetensors"  # or "gguf"
    metadata: dict[str, str] = field(default_factory=dict)
    gguf_arch: str | None = None  # GGUF outputs only
    kv: dict = field(default_factory=dict)  # GGUF key/values (file type, comfy.gguf.orig_shape.*, ...)
    align: int = 8  # safetensors: the data section's alignment in the file (SafetensorsWriter)

    def to_json(self) -> dict:
        return {"path": self.path, "component": self.component, "layout": self.layout, "format": self.format,
                "tensor_count": len(self.tensors), "tensors": [t.to_json() for t in self.tensors]}


@dataclass
class Plan:
    kind: str  # "split" | "merge" | "convert" | "quantize"
    source: str
    outputs: list[OutputFile]
    sidecars: dict[str, str] = field(default_factory=dict)  # relative path -> text (config.json, ...)
    dropped: dict[str, str] = field(default_factory=dict)  # source tensor -> reason
    notes: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # planner facts for the manifest (family, variant, ...)
    deferred_scan: bool = False  # quantize planned without its value scan: writers refuse what it would change

    def to_json(self) -> dict:
        return {"kind": self.kind, "source": self.source, "info": self.info,
                "outputs": [o.to_json() for o in self.outputs], "sidecars": sorted(self.sidecars),
                "dropped": self.dropped, "notes": self.notes}

    def describe(self) -> str:
        """Human summary for --dry-run: one block per output file, ops counted."""
        from collections import Counter

        from ckptkit.units import human_bytes

        lines = [f"plan: {self.kind} {self.source}"]
        for out in self.outputs:
            ops = Counter(t.op for t in out.tensors)
            size = sum(t.nbytes for t in out.tensors)
            types = Counter(t.dtype for t in out.tensors)
            lines.append(f"  {out.path}  [{out.component or '-'}, {out.layout}]  {len(out.tensors)} tensors, "
                         f"{human_bytes(size)}; ops: {', '.join(f'{k} {v}' for k, v in sorted(ops.items()))}; "
                         f"types: {', '.join(f'{k} {v}' for k, v in sorted(types.items()))}")
        for path in sorted(self.sidecars):
            lines.append(f"  {path}")
        if self.dropped:
            reasons = Counter(self.dropped.values())
            lines.append("  dropped: " + "; ".join(f"{n} x {r}" for r, n in reasons.most_common()))
        lines += [f"  note: {n}" for n in self.notes]
        from ckptkit.formats.files import printable

        return "\n".join(printable(line) for line in lines)
