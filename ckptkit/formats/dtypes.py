"""The dtype table: safetensors dtype codes <-> torch dtypes and item sizes."""

from __future__ import annotations

import torch

# code -> (torch dtype, item size in bytes); the codes are safetensors' header strings.
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
# Newer torch builds have unsigned wide types; safetensors knows them too.
for _code, _name, _size in (("U16", "uint16", 2), ("U32", "uint32", 4), ("U64", "uint64", 8)):
    if hasattr(torch, _name):
        DTYPES[_code] = (getattr(torch, _name), _size)

TORCH_TO_CODE: dict[torch.dtype, str] = {dt: code for code, (dt, _) in DTYPES.items()}
FLOAT_CODES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})


def itemsize(code: str) -> int:
    return DTYPES[code][1]


def to_torch(code: str) -> torch.dtype:
    return DTYPES[code][0]


def code_of(dtype: torch.dtype) -> str:
    return TORCH_TO_CODE[dtype]


def parse_dtype(text: str) -> torch.dtype:
    """'fp16' / 'f16' / 'float16' / 'F16' -> torch.float16 (for CLI options)."""
    aliases = {"fp16": "F16", "float16": "F16", "half": "F16", "bf16": "BF16", "bfloat16": "BF16",
               "fp32": "F32", "float32": "F32", "float": "F32", "fp64": "F64", "float64": "F64"}
    code = aliases.get(text.lower(), text.upper())
    if code not in DTYPES:
        from ckptkit.errors import CkptError

        raise CkptError(f"unknown dtype {text!r}; use one of fp16, bf16, fp32")
    return DTYPES[code][0]
