"""optimum-quanto's serialization, written (`ckptkit quantize --to quanto --type qint8|qfloat8`):
the state dict of a frozen quanto QLinear as diffusers/transformers `save_pretrained` writes it
(optimum/quanto nn/qmodule.py, tensor/weights/qbytes.py):

    L.weight._data (int8 / float8_e4m3fn, [out, in]), L.weight._scale ([out, 1], the weight's dtype),
    L.input_scale, L.output_scale (scalars 1.0 in the weight's dtype: no activation quantization)

Quantized by quanto itself (`quantize_weight` with its AbsmaxOptimizer, per output row, as
QLinear.qweight does), one weight at a time.
"""

from __future__ import annotations

import torch

from ckptkit.engine import expr
from ckptkit.engine.plan import TensorOp
from ckptkit.quant.layerwise import Backend, quantized

TYPES = {"qint8": "qint8", "qfloat8": "qfloat8"}
DATA = {"qint8": "I8", "qfloat8": "F8_E4M3"}


def _quantize(w: torch.Tensor, type_name: str) -> dict[str, torch.Tensor]:
    import optimum.quanto as quanto
    from optimum.quanto.tensor.optimizers import AbsmaxOptimizer

    qtype = quanto.qint8 if type_name == "qint8" else quanto.qfloat8_e4m3fn
    scale = AbsmaxOptimizer()(w, qtype=qtype, axis=0)
    q = quanto.quantize_weight(w, qtype=qtype, axis=0, scale=scale, shift=None, group_size=None)
    one = torch.ones((), dtype=w.dtype)
    return {"weight._data": q._data, "weight._scale": q._scale, "input_scale": one, "output_scale": one}


def _part(w: torch.Tensor, type_name: str, key: str, source: str) -> torch.Tensor:
    if key in ("input_scale", "output_scale"):  # 1.0: no activation quantization (laid out last, see _layer)
        return torch.ones((), dtype=w.dtype)
    return quantized((source, type_name), w, lambda: _quantize(w, type_name))[key]


def _layer(layer: str, e, shape, sdt: str, type_name: str) -> list[TensorOp]:
    parts = {"weight._data": (tuple(shape), DATA[type_name]), "weight._scale": ((shape[0], 1), sdt),
             "input_scale": ((), sdt), "output_scale": ((), sdt)}
    return [TensorOp(f"{layer}.{key}", expr.fn("quanto_part", e, type_name, key, str(e)), part_shape, code, code,
                     f"quanto:{type_name}" if key == "weight._data" else f"quanto {key}")
            for key, (part_shape, code) in parts.items()]


def _shape(shape, type_name: str, key: str, source: str):
    return {"weight._data": tuple(shape), "weight._scale": (shape[0], 1)}.get(key, ())


def _quantization_config(type_name: str, kept: list[str], library: str, dtype: str) -> dict:
    """diffusers' QuantoConfig / transformers' QuantoConfig, as their to_dict() writes them."""
    weights = "int8" if type_name == "qint8" else "float8"
    if library == "diffusers":  # it skips modules by their last name
        return {"quant_method": "quanto", "weights_dtype": weights,
                "modules_to_not_convert": sorted({k.rsplit(".", 1)[-1] for k in kept})}
    return {"quant_method": "quanto", "weights": weights, "activations": None, "modules_to_not_convert": kept}


# transformers (5.x) quantizes quanto models on load only (its quantizer is not serializable), and
# diffusers' modules_to_not_convert matches a module's last name (diffusers quantizers/quanto/utils.py)
BACKEND = Backend("quanto", "optimum-quanto", TYPES, _layer, requires="optimum.quanto",
                  quantization_config=_quantization_config, loads_prequantized={"transformers": False},
                  skips_by_child_name=("diffusers",), aligned=True)
expr.register("quanto_part", _part, _shape)
