"""bitsandbytes' serialization, written (`ckptkit quantize --to bnb --type nf4|fp4|nf4_dq|fp4_dq|int8`):
the state-dict layout transformers and diffusers save and `Params4bit.from_prequantized` /
`Int8Params` load (bitsandbytes nn/modules.py `_save_to_state_dict`, functional.py
`QuantState.as_dict(packed=True)`):

    4-bit  L.weight (uint8, two values a byte), L.weight.absmax, L.weight.quant_map,
           [_dq: L.weight.nested_absmax, L.weight.nested_quant_map], L.weight.quant_state.bitsandbytes__nf4
    int8   L.weight (int8, row-wise), L.SCB (float32 per row), L.weight_format (0: row)

Quantized by bitsandbytes itself (`quantize_4bit`, blocks of 64; `int8_vectorwise_quant` of the
fp16 weight as `Int8Params` does), one weight at a time; the quant state's JSON is padded with
spaces to a fixed length (JSON allows it; bitsandbytes reads it with json.loads) so the plan knows
every shape before any value is read.
"""

from __future__ import annotations

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
    import bitsandbytes.functional as F

    packed, state = _quantize_4bit(F, w.contiguous(), TYPES[type_name], type_name.endswith("_dq"))
    out = {"weight": packed}
    for key, value in state.as_dict(packed=True).items():
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


def _quantize_4bit(F, w: torch.Tensor, quant_type: str, nested: bool):
    """F.quantize_4bit(w, blocksize=64, quant_type, compress_statistics=nested), its kernel run by
    ckptkit/quant/_libkernels.c: bitsandbytes' CPU kernel is several float32 torch passes, about 20 ns a
    value, most of a 4-bit run's time. Everything around it (absmax statistics, the quant state) is
    bitsandbytes' own. Bytes equal bitsandbytes' (tests/quant/test_lib_writers.py); values that
    are not finite, or a build without the extension, go to bitsandbytes itself."""
    try:
        from bitsandbytes.backends.default.ops import _get_4bit_quantize_bounds

        from ckptkit.quant import _libkernels
    except ImportError:
        _libkernels = None
    if _libkernels is None or w.dtype not in (torch.float32, torch.float16, torch.bfloat16) \
            or not bool(torch.isfinite(w).all()):
        return F.quantize_4bit(w, blocksize=BLOCKSIZE, quant_type=quant_type, compress_statistics=nested)
    bounds, order = _get_4bit_quantize_bounds(quant_type, w.device)
    x = w.reshape(-1).float().contiguous()
    n = x.numel()
    packed = torch.empty(((n + 1) // 2, 1), dtype=torch.uint8)
    absmax = torch.empty(-(-n // BLOCKSIZE), dtype=torch.float32)
    _libkernels.quantize_4bit(x.numpy(), n, BLOCKSIZE, bounds.float().contiguous().numpy(),
                        None if quant_type == "nf4" else order.to(torch.uint8).contiguous().numpy(),
                        packed.numpy(), absmax.numpy())
    code = F.get_4bit_type(quant_type, device=w.device)
    if nested:  # as F.quantize_4bit does with compress_statistics
        offset = absmax.mean()
        qabsmax, state2 = F.quantize_blockwise(absmax - offset, blocksize=256)
        state = F.QuantState(absmax=qabsmax, shape=w.shape, dtype=w.dtype, blocksize=BLOCKSIZE, code=code,
                             quant_type=quant_type, offset=offset, state2=state2)
    else:
        state = F.QuantState(absmax=absmax, shape=w.shape, dtype=w.dtype, blocksize=BLOCKSIZE, code=code,
                             quant_type=quant_type)
    return packed, state


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
