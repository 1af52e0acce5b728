"""ComfyUI's mixed-precision safetensors, written (`ckptkit quantize --to comfy --type fp8_e4m3`):
per Linear weight `L.weight` in fp8 (or int8) and `L.weight_scale` (float32 scalar), the layers
listed in the header's `_quantization_metadata` (ComfyUI's QUANTIZATION.md; comfy/utils.py
convert_old_quants reads it for diffusion models and text encoders alike). Every other tensor is
kept as stored. The quantizer is comfy_kitchen's eager one, so ComfyUI's own quantization of the
same weights gives the same bytes:

    fp8:  scale = amax / finfo(fp8).max;  q = clamp(w * (1 / scale).to(w.dtype), -max, max).to(fp8)
    int8: scale = max(amax / 127, 1e-30);  q = round(w.float() / scale).clamp(-128, 127).to(int8)

Which tensors are quantized is the planner's (quant/layerwise.py). Reading these files back
(dequantization) is formats/scaled.py.
"""

from __future__ import annotations

import json

import torch

from ckptkit.engine import expr
from ckptkit.engine.plan import TensorOp
from ckptkit.quant.layerwise import Backend

# --type -> (ComfyUI format name, stored dtype code, torch dtype)
TYPES = {"fp8_e4m3": ("float8_e4m3fn", "F8_E4M3", torch.float8_e4m3fn),
         "fp8_e5m2": ("float8_e5m2", "F8_E5M2", torch.float8_e5m2),
         "int8": ("int8_tensorwise", "I8", torch.int8)}


def scale_of(w: torch.Tensor, type_name: str) -> torch.Tensor:
    """The float32 scalar scale comfy_kitchen's quantizer picks for `w`."""
    amax = w.float().abs().max()
    if type_name == "int8":
        return (amax / 127).clamp(min=1e-30).reshape(())
    return (amax / torch.finfo(TYPES[type_name][2]).max).clamp(min=1e-12).reshape(())


def quantized(w: torch.Tensor, type_name: str, scale: torch.Tensor | None = None) -> torch.Tensor:
    scale = scale_of(w, type_name) if scale is None else scale
    if type_name == "int8":
        return torch.round(w.float() / scale).clamp(-128, 127).to(torch.int8)
    top = torch.finfo(TYPES[type_name][2]).max
    return torch.clamp(w * (1.0 / scale).to(w.dtype), -top, top).to(TYPES[type_name][2])


def _quantized_layer(w: torch.Tensor, type_name: str) -> dict[str, torch.Tensor]:
    scale = scale_of(w, type_name)
    return {"weight": quantized(w, type_name, scale), "weight_scale": scale}


def _layer(layer: str, e, shape, sdt: str, type_name: str) -> list[TensorOp]:
    fmt, code, _ = TYPES[type_name]
    group = expr.fn("comfy_layer", e, type_name)  # one read of the weight for both (engine/produce.py)
    return [TensorOp(f"{layer}.weight", expr.part(group, "weight"), shape, code, code, f"comfy:{type_name}"),
            TensorOp(f"{layer}.weight_scale", expr.part(group, "weight_scale"), (), "F32", "F32", f"{fmt} scale")]


def _metadata(layers: dict[str, str], shapes: dict) -> dict[str, str]:
    return {"_quantization_metadata": json.dumps(
        {"format_version": "1.0", "layers": {layer: {"format": TYPES[t][0]} for layer, t in layers.items()}})}


BACKEND = Backend("comfy", "ComfyUI mixed precision", {t: v[0] for t, v in TYPES.items()}, _layer, _metadata,
                  aliases={"fp8": "fp8_e4m3", "float8_e4m3fn": "fp8_e4m3", "float8_e5m2": "fp8_e5m2",
                           "int8_tensorwise": "int8"})
expr.register("comfy_layer", _quantized_layer, lambda shape, t: {"weight": tuple(shape), "weight_scale": ()})
