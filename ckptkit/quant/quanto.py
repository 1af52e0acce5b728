"""optimum-quanto's serialization, written (`ckptkit quantize --to quanto --type qint8|qfloat8|qint4`):
the state dict of a frozen quanto QLinear as diffusers/transformers `save_pretrained` writes it
(optimum/quanto nn/qmodule.py, tensor/weights/qbytes.py, qbits.py):

    8-bit  L.weight._data (int8 / float8_e4m3fn, [out, in]), L.weight._scale ([out, 1])
    4-bit  L.weight._data._data (uint8, two values a byte, packed along rows), L.weight._scale and
           L.weight._shift ([groups, 1]; groups of 128 inputs, or fewer, as QModuleMixin picks)
    both   L.input_scale, L.output_scale (scalars 1.0 in the weight's dtype: no activation quantization)

One weight at a time: 8-bit weights by quanto's own steps written out here (see EIGHT_BIT), 4-bit
ones by quanto itself, each through a one-layer QLinear (quantize, freeze, state_dict); the bytes
are exactly what quanto writes for it. The 4-bit weights' shapes, which those tensors do not hold,
go in the header (`ckptkit.quanto_shapes`).
"""

from __future__ import annotations

import torch

from ckptkit.engine import expr
from ckptkit.engine.plan import TensorOp
from ckptkit.quant.layerwise import Backend

TYPES = {"qint8": "qint8", "qfloat8": "qfloat8", "qint4": "qint4"}
DATA = {"qint8": "I8", "qfloat8": "F8_E4M3"}
SHAPES_KEY = "ckptkit.quanto_shapes"  # header metadata: {layer: [out, in]} of the packed 4-bit weights


def group_size(in_features: int, bits: int) -> int | None:
    """QModuleMixin's choice (optimum/quanto nn/qmodule.py): 128, stepping down by 32 until it divides
    the input width; None (one scale per row) for 8 bits or when none divides."""
    if bits == 8 or in_features <= 128:
        return None
    size = 128
    while in_features % size != 0 and size > 32:
        size -= 32
    return size if in_features % size == 0 else None


# qint8 / qfloat8: (stored dtype, qtype.qmax). quanto's own steps for an 8-bit weight, written out
# here (AbsmaxOptimizer per output row, then quantize_symmetric): importing optimum.quanto takes
# ~7 s (it imports transformers and diffusers), and its one-layer QLinear route ~9x the time of
# these few ops per weight. Bytes checked against quanto's in tests/quant/test_lib_writers.py.
EIGHT_BIT = {"qint8": (torch.int8, 127.0), "qfloat8": (torch.float8_e4m3fn, 448.0)}


KERNEL_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # quantize_qint8's dtype codes


def _quantize_8bit(w: torch.Tensor, type_name: str) -> dict[str, torch.Tensor]:
    """quanto's steps (`_steps_8bit`) are about 4 ns a value in torch, five passes in the weight's
    dtype; qint8 runs them in one pass of ckptkit/quant/_libkernels.c, with the same bytes
    (tests/quant/test_lib_writers.py), except where a row is all zeros or not finite."""
    if type_name == "qint8" and w.dim() == 2 and w.dtype in KERNEL_DTYPES:
        try:
            from ckptkit.quant import _libkernels
        except ImportError:
            _libkernels = None
        if _libkernels is not None:
            w = w.contiguous()
            data = torch.empty(w.shape, dtype=torch.int8)
            scale = torch.empty((w.shape[0], 1), dtype=w.dtype)
            raw = {torch.float32: torch.int32}.get(w.dtype, torch.int16)  # numpy has no bfloat16
            if _libkernels.quantize_qint8(w.view(raw).numpy(), KERNEL_DTYPES[w.dtype], *w.shape,
                                          data.numpy(), scale.view(raw).numpy()):
                return {"weight._data": data, "weight._scale": scale.reshape(()) if w.shape[0] == 1 else scale}
    return _steps_8bit(w, type_name)


def _steps_8bit(w: torch.Tensor, type_name: str) -> dict[str, torch.Tensor]:
    dtype, qmax = EIGHT_BIT[type_name]
    if w.shape[0] == 1:  # SymmetricOptimizer: a single row is quantized per tensor
        scale = torch.max(torch.abs(w)) / qmax
    else:
        scale = torch.amax(torch.abs(w), dim=1, keepdim=True) / qmax
    data = w / scale
    if not dtype.is_floating_point:
        data = torch.round(data)
    info = torch.finfo(dtype) if dtype.is_floating_point else torch.iinfo(dtype)
    data = torch.clamp(data, min=info.min, max=info.max).to(dtype)
    return {"weight._data": data.contiguous(), "weight._scale": scale.contiguous()}


def _quantize(w: torch.Tensor, type_name: str) -> dict[str, torch.Tensor]:
    """The layer's tensors as quanto itself serializes a frozen QLinear holding `w`."""
    if type_name in EIGHT_BIT:
        return _quantize_8bit(w, type_name)
    import optimum.quanto as quanto

    qtype = {"qint8": quanto.qint8, "qfloat8": quanto.qfloat8_e4m3fn, "qint4": quanto.qint4}[type_name]
    linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
    with torch.no_grad():
        linear.weight.copy_(w)
    holder = torch.nn.Sequential(linear)
    quanto.quantize(holder, weights=qtype)
    quanto.freeze(holder)
    return {k.removeprefix("0."): v.contiguous() for k, v in holder.state_dict().items()}


def _parts(shape, sdt: str, type_name: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Suffix -> (shape, dtype code) of a layer's tensors, from its weight's shape alone."""
    out_f, in_f = shape
    if type_name != "qint4":
        parts = {"weight._data": ((out_f, in_f), DATA[type_name]),
                 "weight._scale": ((out_f, 1) if out_f > 1 else (), sdt)}
    else:
        g = group_size(in_f, 4)
        rows, cols = (out_f * in_f // g, g) if g else (out_f, in_f)
        parts = {"weight._data._data": ((-(-rows // 2), cols), "U8"), "weight._scale": ((rows, 1), sdt),
                 "weight._shift": ((rows, 1), sdt)}
    return {**parts, "input_scale": ((), sdt), "output_scale": ((), sdt)}


def _layer(layer: str, e, shape, sdt: str, type_name: str) -> list[TensorOp]:
    data = "weight._data._data" if type_name == "qint4" else "weight._data"
    group = expr.fn("quanto_layer", e, type_name)  # one quantization, all its parts (engine/produce.py)
    ops = []
    for key, (part_shape, code) in _parts(tuple(shape), sdt, type_name).items():
        if key in ("input_scale", "output_scale"):  # 1.0: no activation quantization
            ops.append(TensorOp(f"{layer}.{key}", expr.full((), 1.0, sdt), part_shape, code, code, f"quanto {key}"))
        else:
            ops.append(TensorOp(f"{layer}.{key}", expr.part(group, key), part_shape, code, code,
                                f"quanto:{type_name}" if key == data else f"quanto {key}"))
    return ops


def _shapes(shape, type_name: str):
    return {k: v[0] for k, v in _parts(tuple(shape), "F32", type_name).items()}


def _metadata(layers: dict[str, str], shapes: dict) -> dict[str, str]:
    """The packed 4-bit weights' shapes, which quanto's tensors do not hold (formats/scaled.py reads them)."""
    import json

    packed = {layer: shapes[layer] for layer, t in layers.items() if t == "qint4"}
    return {SHAPES_KEY: json.dumps(packed, separators=(",", ":"))} if packed else {}


def _quantization_config(type_name: str, kept: list[str], library: str, dtype: str) -> dict:
    """diffusers' QuantoConfig / transformers' QuantoConfig, as their to_dict() writes them."""
    weights = {"qint8": "int8", "qfloat8": "float8", "qint4": "int4"}[type_name]
    if library == "diffusers":  # it skips modules by their last name
        return {"quant_method": "quanto", "weights_dtype": weights,
                "modules_to_not_convert": sorted({k.rsplit(".", 1)[-1] for k in kept})}
    return {"quant_method": "quanto", "weights": weights, "activations": None, "modules_to_not_convert": kept}


# transformers (5.x) quantizes quanto models on load only (its quantizer is not serializable), and
# diffusers' modules_to_not_convert matches a module's last name (diffusers quantizers/quanto/utils.py)
BACKEND = Backend("quanto", "optimum-quanto", TYPES, _layer, _metadata, requires="optimum.quanto",
                  quantization_config=_quantization_config, loads_prequantized={"transformers": False},
                  skips_by_child_name=("diffusers",), aligned=True)
expr.register("quanto_layer", _quantize, _shapes)
