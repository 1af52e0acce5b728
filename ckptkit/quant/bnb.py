"""bitsandbytes' serialization, written (`ckptkit quantize --to bnb --type nf4|fp4|nf4_dq|fp4_dq|int8`):
the state-dict layout transformers and diffusers save and `Params4bit.from_prequantized` /
`Int8Params` load (bitsandbytes nn/modules.py `_save_to_state_dict`, functional.py
`QuantState.as_dict(packed=True)`):

    4-bit  L.weight (uint8, two values a byte), L.weight.absmax, L.weight.quant_map,
           [_dq: L.weight.nested_absmax, L.weight.nested_quant_map], L.weight.quant_state.bitsandbytes__nf4
    int8   L.weight (int8, row-wise), L.SCB (float32 per row), L.weight_format (0: row)

Quantized as bitsandbytes quantizes (`quantize_4bit`, blocks of 64; `int8_vectorwise_quant` of the
fp16 weight as `Int8Params` does), one weight at a time, by one-pass C kernels with its bytes
(quant/_libkernels.c; bitsandbytes itself for double quantization and values that are not
finite). The quant state's JSON is padded with spaces to a fixed length (JSON allows it;
bitsandbytes reads it with json.loads) so the plan knows every shape before any value is read.
"""

from __future__ import annotations

import functools
import json
import math

import torch

from ckptkit.engine import expr
from ckptkit.engine.plan import TensorOp
from ckptkit.errors import CkptError
from ckptkit.quant.layerwise import Backend

BLOCKSIZE = 64  # bitsandbytes' default (transformers/diffusers BitsAndBytesConfig)
NESTED_BLOCKSIZE = 256
STATE_BYTES = 512
TYPES = {"nf4": "nf4", "fp4": "fp4", "nf4_dq": "nf4", "fp4_dq": "fp4", "int8": "llm_int8"}


def _quantize(w: torch.Tensor, type_name: str) -> dict[str, torch.Tensor]:
    """The layer's serialized tensors, by suffix after the layer name."""
    if type_name == "int8":  # Int8Params._quantize: the fp16 weight, row-wise
        cb, scb = _quantize_int8(w.to(torch.float16).contiguous())
        return {"weight": cb, "SCB": scb, "weight_format": torch.tensor(0, dtype=torch.uint8)}
    packed, state = _quantize_4bit(w.contiguous(), TYPES[type_name], type_name.endswith("_dq"))
    out = {"weight": packed}
    for key, value in state.items():
        if key.startswith("quant_state."):
            raw = bytes(value.tolist())
            if len(raw) > STATE_BYTES:
                raise CkptError(f"bitsandbytes quant state of {len(raw)} bytes exceeds {STATE_BYTES}")
            value = torch.tensor(list(raw + b" " * (STATE_BYTES - len(raw))), dtype=torch.uint8)
        out[f"weight.{key}"] = value
    return out


def _quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """F.int8_vectorwise_quant(w) of an fp16 matrix, run by ckptkit/quant/_libkernels.c in one pass: the
    library's default kernel is four torch passes (abs, row max, scale, round) over float32 copies,
    about 4 ns a value, most of an int8 run's time (and importing bitsandbytes takes 2-3 s). Bytes
    equal bitsandbytes' (tests/quant/test_lib_writers.py); a matrix with an all-zero row or a value
    that is not finite, or a build without the extension, goes to bitsandbytes itself."""
    try:
        from ckptkit.quant import _libkernels
    except ImportError:
        _libkernels = None
    if _libkernels is not None and w.dim() == 2:
        rows, cols = w.shape
        out = torch.empty((rows, cols), dtype=torch.int8)
        stats = torch.empty(rows, dtype=torch.float32)
        if _libkernels.quantize_int8(w.view(torch.int16).numpy(), rows, cols, out.numpy(), stats.numpy()):
            return out, stats
    import bitsandbytes.functional as F

    cb, scb, _ = F.int8_vectorwise_quant(w)
    return cb, scb


# bitsandbytes' 4-bit code tables as functional.py get_4bit_type lists them, before it divides them by
# their largest magnitude: copied so that a plain (not double-quantized) 4-bit layer is written
# without importing bitsandbytes, which alone takes 2-3 s, most of a small component's run.
# tests/quant/test_lib_writers.py checks `_code` against get_4bit_type.
CODES = {
    "nf4": [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
            -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
            0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
            0.7229568362236023, 1.0],
    "fp4": [0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0],
}


@functools.cache
def _code(quant_type: str) -> torch.Tensor:
    """get_4bit_type(quant_type): the table over its largest magnitude (the file's quant_map)."""
    data = torch.tensor(CODES[quant_type])
    return data.div_(data.abs().max())


@functools.cache
def _bounds(quant_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes backends/default/ops.py _get_4bit_quantize_bounds: the midpoints of the sorted code."""
    code = _code(quant_type)
    order = torch.argsort(code)
    return (code[order[:-1]] + code[order[1:]]) / 2, order


def _quantize_4bit(w: torch.Tensor, quant_type: str, nested: bool) -> tuple[torch.Tensor, dict]:
    """F.quantize_4bit(w, blocksize=64, quant_type, compress_statistics=nested) and its quant state
    as `QuantState.as_dict(packed=True)` gives it. The kernel runs in ckptkit/quant/_libkernels.c:
    bitsandbytes' CPU kernel is several float32 torch passes, about 20 ns a value, most of a 4-bit
    run's time. A plain layer's state (absmax, quant_map, the JSON of type, blocksize, dtype and
    shape) is written here as bitsandbytes writes it; double quantization is bitsandbytes' own.
    Bytes equal bitsandbytes' (tests/quant/test_lib_writers.py); values that are not finite, or a
    build without the extension, go to bitsandbytes itself."""
    try:
        from ckptkit.quant import _libkernels
    except ImportError:
        _libkernels = None
    if _libkernels is None or w.dtype not in (torch.float32, torch.float16, torch.bfloat16) \
            or not bool(torch.isfinite(w).all()):
        import bitsandbytes.functional as F

        packed, state = F.quantize_4bit(w, blocksize=BLOCKSIZE, quant_type=quant_type, compress_statistics=nested)
        return packed, state.as_dict(packed=True)
    bounds, order = _bounds(quant_type)
    x = w.reshape(-1).float().contiguous()
    n = x.numel()
    packed = torch.empty(((n + 1) // 2, 1), dtype=torch.uint8)
    absmax = torch.empty(-(-n // BLOCKSIZE), dtype=torch.float32)
    _libkernels.quantize_4bit(x.numpy(), n, BLOCKSIZE, bounds.float().contiguous().numpy(),
                              None if quant_type == "nf4" else order.to(torch.uint8).contiguous().numpy(),
                              packed.numpy(), absmax.numpy())
    if nested:  # as F.quantize_4bit does with compress_statistics
        import bitsandbytes.functional as F

        offset = absmax.mean()
        qabsmax, state2 = F.quantize_blockwise(absmax - offset, blocksize=256)
        state = F.QuantState(absmax=qabsmax, shape=w.shape, dtype=w.dtype, blocksize=BLOCKSIZE,
                             code=F.get_4bit_type(quant_type, device=w.device), quant_type=quant_type, offset=offset,
                             state2=state2)
        return packed, state.as_dict(packed=True)
    meta = {"quant_type": quant_type, "blocksize": BLOCKSIZE, "dtype": str(w.dtype).strip("torch."),
            "shape": list(w.shape)}  # QuantState.as_dict's non-tensor fields, in its order
    return packed, {"absmax": absmax, "quant_map": _code(quant_type).clone(),
                    f"quant_state.bitsandbytes__{quant_type}": torch.tensor(list(json.dumps(meta).encode()),
                                                                             dtype=torch.uint8)}


def _shapes(shape: tuple[int, ...], type_name: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Suffix -> (shape, dtype code) of a layer's tensors, from its weight's shape alone."""
    if type_name == "int8":
        return {"weight": (shape, "I8"), "SCB": ((shape[0],), "F32"), "weight_format": ((), "U8")}
    n = math.prod(shape)
    blocks = -(-n // BLOCKSIZE)
    out = {"weight": (((n + 1) // 2, 1), "U8")}
    if type_name.endswith("_dq"):
        out.update({"weight.absmax": ((blocks,), "U8"), "weight.quant_map": ((16,), "F32"),
                    "weight.nested_absmax": ((-(-blocks // NESTED_BLOCKSIZE),), "F32"),
                    "weight.nested_quant_map": ((256,), "F32")})
    else:
        out.update({"weight.absmax": ((blocks,), "F32"), "weight.quant_map": ((16,), "F32")})
    out[f"weight.quant_state.bitsandbytes__{TYPES[type_name]}"] = ((STATE_BYTES,), "U8")
    return out


def _layer(layer: str, e, shape, sdt: str, type_name: str) -> list[TensorOp]:
    ops, group = [], expr.fn("bnb_layer", e, type_name)  # one quantization, all its parts (engine/produce.py)
    for key, (part_shape, code) in _shapes(tuple(shape), type_name).items():
        note = f"bnb:{type_name}" if key == "weight" else f"bitsandbytes {key}"
        ops.append(TensorOp(f"{layer}.{key}", expr.part(group, key), part_shape, code, code, note))
    return ops


def _quantization_config(type_name: str, kept: list[str], library: str, dtype: str) -> dict:
    """BitsAndBytesConfig.to_dict() (diffusers and transformers write the same fields)."""
    four = type_name != "int8"
    compute = {"BF16": "bfloat16", "F16": "float16"}.get(dtype, "float32")
    return {"quant_method": "bitsandbytes", "_load_in_4bit": four, "_load_in_8bit": not four,
            "load_in_4bit": four, "load_in_8bit": not four, "llm_int8_threshold": 6.0,
            "llm_int8_skip_modules": kept or None, "llm_int8_enable_fp32_cpu_offload": False,
            "llm_int8_has_fp16_weight": False, "bnb_4bit_quant_type": TYPES[type_name] if four else "fp4",
            "bnb_4bit_use_double_quant": type_name.endswith("_dq"), "bnb_4bit_compute_dtype": compute,
            "bnb_4bit_quant_storage": "uint8"}


BACKEND = Backend("bnb", "bitsandbytes", TYPES, _layer, requires="bitsandbytes",
                  quantization_config=_quantization_config)
expr.register("bnb_layer", _quantize, lambda shape, t: {k: v[0] for k, v in _shapes(tuple(shape), t).items()})
