"""Quantized safetensors read as values: ComfyUI's scaled fp8 (old `scaled_fp8` marker with
`.scale_weight`; new mixed precision with `.comfy_quant` / `_quantization_metadata` and
`.weight_scale`), plain fp8 + `.weight_scale` files, DeepSeek-style block fp8
(`.weight_scale_inv`), bitsandbytes (4-bit nf4/fp4, LLM.int8) and optimum-quanto (qint8, qfloat8,
qint4 when the file holds the layer's shape: a bias, or ckptkit's recorded shapes). Read as if
the stored values were the weights, such files give silently wrong models (fp8 values off by
their scale, ~1e-3: stable-diffusion.cpp's white images).

    scheme = detect_scheme(ckpt)          # None for a plain file; CkptError for one not understood
    view = dequantizing(ckpt)             # a Checkpoint whose weights are weight x scale

Only commands that need values read through the view (a cast, the diffusers layout, GGUF
quantization, verify); a plain split copies the stored bytes and keeps every scale and marker with
its weight. Dequantization is the owning library's, in its order and dtype (ComfyUI's
comfy/ops.py and comfy_kitchen's eager backend): fp8 `weight.to(cdt) * scale.to(cdt)` in the
compute dtype `cdt`; int8 tensorwise `(q.float() * scale).to(cdt)`. `cdt` is the dtype asked for
(`--dtype`), else the dtype the file keeps its unquantized weights in (what ComfyUI computes in
for it), else float32. Definitions and sources: docs/quantized-formats.md.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field

import torch

from ckptkit.errors import CkptError, printable
from ckptkit.formats.base import Checkpoint, TensorInfo
from ckptkit.formats.dtypes import DTYPES, FLOAT_CODES

FP8 = ("F8_E4M3", "F8_E5M2")
# ComfyUI mixed-precision formats this reader dequantizes (comfy/quant_ops.py QUANT_ALGOS); the
# others (nvfp4, mxfp8, convrot_w4a4, asym_w4a8_int8, awq_w4a16) are refused by name
COMFY_FORMATS = {"float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "int8_tensorwise": "I8"}
SCALE_SUFFIXES = (".scale_weight", ".scale_input", ".weight_scale", ".weight_scale_2", ".input_scale",
                  ".pre_quant_scale", ".weight_scale_inv", ".comfy_quant")
DEEPSEEK_BLOCK = 128


@dataclass(frozen=True)
class QuantLayer:
    """One quantized weight: its stored tensor, how to dequantize it and the tensors that do."""

    weight: str  # e.g. "model.diffusion_model.input_blocks.4.1.proj_in.weight"
    format: str  # "float8_e4m3fn" | "float8_e5m2" | "int8_tensorwise" | "fp8_block128" | "nf4" | "fp4"
    #              | "llm_int8" | "qint8" | "qfloat8"
    scale: str  # the multiply-to-dequantize tensor (bitsandbytes 4-bit: the block absmax)
    aux: tuple[str, ...] = ()  # every other tensor of the layer (input scale, comfy_quant, quant maps)
    data: str = ""  # the stored data when not under the weight's own name (quanto: `<weight>._data`)
    shape: tuple[int, ...] | None = None  # the weight's shape when the data is packed (bitsandbytes 4-bit)
    params: tuple = ()  # (key, value) pairs of the layer's stored quantization state
    dtype: str | None = None  # the dtype its library dequantizes to when the file says (bitsandbytes 4-bit)


@dataclass
class Scheme:
    """How a file is quantized: `name` as `inspect` shows it, every quantized layer by its weight,
    and the tensors that are not weights (scales, markers, per-layer metadata)."""

    name: str  # "comfy-scaled-fp8" | "comfy-mixed" | "fp8-weight-scale" | "fp8-block-scale"
    layers: dict[str, QuantLayer] = field(default_factory=dict)
    aux: set[str] = field(default_factory=set)
    markers: set[str] = field(default_factory=set)  # the old format's `scaled_fp8` tensors

    def formats(self) -> Counter:
        return Counter(layer.format for layer in self.layers.values())

    def describe(self) -> str:
        kinds = ", ".join(f"{n} {f}" for f, n in sorted(self.formats().items()))
        return f"{self.name}: {len(self.layers)} quantized weights ({kinds}), {len(self.aux)} scale/metadata tensors"


def is_marker(name: str) -> bool:
    """ComfyUI's old-format marker tensor (`<model prefix>scaled_fp8`): its dtype says which fp8
    the weights are in, its values are never read (ComfyUI writes it empty)."""
    return name == "scaled_fp8" or name.endswith(".scaled_fp8")


def _prefix_of(name: str, suffix: str) -> str:
    return name[: -len(suffix)]


def _comfy_layers(ckpt: Checkpoint) -> dict[str, dict]:
    """Layer name -> its JSON config, from `.comfy_quant` tensors and the header's
    `_quantization_metadata` (ComfyUI reads either)."""
    layers: dict[str, dict] = {}
    meta = ckpt.metadata.get("_quantization_metadata") if ckpt.metadata else None
    if meta:
        try:
            data = json.loads(meta)
            entries = data["layers"]
            if not isinstance(entries, dict):
                raise TypeError("layers is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            raise CkptError(f"{ckpt.path}: _quantization_metadata is not ComfyUI's layout ({exc})") from None
        for layer, conf in entries.items():
            if not isinstance(conf, dict):  # upstream requires an object per layer
                raise CkptError(f"{ckpt.path}: _quantization_metadata entry {printable(layer)!r} is not an object")
            layers[layer] = conf
    for name in ckpt.tensors:
        if name.endswith(".comfy_quant"):
            raw = ckpt.load(name)
            try:
                conf = json.loads(bytes(raw.to(torch.uint8).reshape(-1).tolist()).decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise CkptError(f"{ckpt.path}: {printable(name)} is not the JSON ComfyUI writes ({exc})") from None
            if not isinstance(conf, dict):
                raise CkptError(f"{ckpt.path}: {printable(name)} is not a JSON object")
            layers[_prefix_of(name, ".comfy_quant")] = conf
    return layers


def _need(ckpt: Checkpoint, name: str, what: str) -> TensorInfo:
    info = ckpt.tensors.get(name)
    if info is None:
        raise CkptError(f"{ckpt.path}: {what} {printable(name)} is missing")
    return info


def _check_scale(ckpt: Checkpoint, scale: str, weight: TensorInfo, per_row: bool = True) -> None:
    info = _need(ckpt, scale, "scale")
    if info.dtype not in FLOAT_CODES:
        raise CkptError(f"{ckpt.path}: scale {printable(scale)} is stored as {info.dtype}, not a float")
    rows = weight.shape[0] if weight.shape else 1
    ok = info.numel == 1 or (per_row and info.numel == rows and len(info.shape) in (1, 2)
                             and (len(info.shape) == 1 or info.shape[1] == 1))
    if not ok:
        raise CkptError(f"{ckpt.path}: scale {printable(scale)} has shape {list(info.shape)} for a weight of "
                        f"{list(weight.shape)}: neither per-tensor nor per-row (a block-scaled layout this "
                        "reader does not know; refused rather than guessed)")


def detect_scheme(ckpt: Checkpoint) -> Scheme | None:
    """The quantization scheme of a safetensors-like checkpoint, or None when it holds none.
    Anything that looks quantized but is not a scheme known here is refused (CkptError)."""
    names = ckpt.tensors
    markers = {n for n in names if is_marker(n)}
    comfy = _comfy_layers(ckpt)
    scheme: Scheme | None = None
    if comfy:
        scheme = Scheme("comfy-mixed")
        for layer, conf in comfy.items():
            fmt = conf.get("format")
            weight = f"{layer}.weight"
            if fmt not in COMFY_FORMATS:
                raise CkptError(f"{ckpt.path}: layer {printable(layer)} is quantized as {printable(fmt)!r}, a "
                                f"ComfyUI format this reader does not dequantize (known: {', '.join(COMFY_FORMATS)})")
            if conf.get("convrot") or (conf.get("params") or {}).get("convrot"):
                raise CkptError(f"{ckpt.path}: layer {printable(layer)} is int8 with a Hadamard rotation (convrot), "
                                "which this reader does not undo; refused rather than read wrong")
            info = _need(ckpt, weight, "quantized weight")
            if info.dtype != COMFY_FORMATS[fmt] and not (fmt.startswith("float8") and info.dtype in FP8):
                raise CkptError(f"{ckpt.path}: {printable(weight)} is stored as {info.dtype}, its metadata says {fmt}")
            scale = f"{layer}.weight_scale"
            _check_scale(ckpt, scale, info)
            aux = tuple(n for n in (f"{layer}.input_scale", f"{layer}.comfy_quant") if n in names)
            if f"{layer}.pre_quant_scale" in names or f"{layer}.weight_scale_2" in names:
                raise CkptError(f"{ckpt.path}: layer {printable(layer)} has a pre-quantization or second-level scale, "
                                f"which {fmt} does not define; refused")
            scheme.layers[weight] = QuantLayer(weight, fmt, scale, aux)
        if markers:  # ComfyUI ignores the old marker once the new metadata is there
            scheme.aux |= markers
    elif markers or any(n.endswith(".scale_weight") for n in names):
        scheme = Scheme("comfy-scaled-fp8", markers=markers)
        for name in names:
            if not name.endswith(".scale_weight"):
                continue
            layer = _prefix_of(name, ".scale_weight")
            weight = f"{layer}.weight"
            info = _need(ckpt, weight, "weight of scale")
            if info.dtype not in FP8:
                raise CkptError(f"{ckpt.path}: {printable(name)} scales {printable(weight)}, stored as {info.dtype}: "
                                "ComfyUI's scaled fp8 scales fp8 weights only")
            if _need(ckpt, name, "scale").numel != 1:  # musubi-tuner's channel/block scales; ComfyUI cannot load them
                raise CkptError(f"{ckpt.path}: {printable(name)} has shape {list(names[name].shape)}: ComfyUI's scaled "
                                "fp8 has one scale per tensor; a channel- or block-scaled file is refused, not guessed")
            fmt = "float8_e4m3fn" if info.dtype == "F8_E4M3" else "float8_e5m2"
            aux = tuple(n for n in (f"{layer}.scale_input",) if n in names)
            scheme.layers[weight] = QuantLayer(weight, fmt, name, aux)
        scheme.aux |= markers
    else:
        block = [n for n in names if n.endswith(".weight_scale_inv")]
        plain = [n for n in names if n.endswith(".weight_scale")]
        if block:
            scheme = Scheme("fp8-block-scale")
            for name in block:
                weight = _prefix_of(name, "_scale_inv")
                info, sinfo = _need(ckpt, weight, "weight of scale"), _need(ckpt, name, "scale")
                want = tuple(math.ceil(d / DEEPSEEK_BLOCK) for d in info.shape)
                if info.dtype not in FP8 or len(info.shape) != 2 or tuple(sinfo.shape) != want:
                    raise CkptError(f"{ckpt.path}: {printable(name)} {list(sinfo.shape)} does not scale "
                                    f"{printable(weight)} {list(info.shape)} {info.dtype} in {DEEPSEEK_BLOCK}x"
                                    f"{DEEPSEEK_BLOCK} blocks; refused rather than guessed")
                scheme.layers[weight] = QuantLayer(weight, "fp8_block128", name)
        elif plain:
            scheme = Scheme("fp8-weight-scale")
            for name in plain:
                layer = _prefix_of(name, ".weight_scale")
                weight = f"{layer}.weight"
                info = _need(ckpt, weight, "weight of scale")
                if info.dtype not in FP8:
                    raise CkptError(f"{ckpt.path}: {printable(name)} scales {printable(weight)} stored as "
                                    f"{info.dtype}, without metadata saying how; refused rather than guessed")
                _check_scale(ckpt, name, info)
                fmt = "float8_e4m3fn" if info.dtype == "F8_E4M3" else "float8_e5m2"
                aux = tuple(n for n in (f"{layer}.input_scale",) if n in names)
                scheme.layers[weight] = QuantLayer(weight, fmt, name, aux)
    if scheme is None:
        scheme = _bnb(ckpt) or _quanto(ckpt)
    if scheme is None:
        _refuse_unknown(ckpt)
        return None
    for layer in scheme.layers.values():
        scheme.aux |= {layer.scale, *layer.aux} | ({layer.data} if layer.data else set())
    stray = [n for n in names if n.endswith(SCALE_SUFFIXES) and n not in scheme.aux]
    if stray:
        raise CkptError(f"{ckpt.path}: {printable(stray[0])} belongs to no quantized weight of its "
                        f"{scheme.name} scheme; refused rather than guessed")
    return scheme


BNB_STATE = ".weight.quant_state.bitsandbytes__"
TORCH_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def _bnb(ckpt: Checkpoint) -> Scheme | None:
    """bitsandbytes as transformers/diffusers save it (bitsandbytes nn/modules.py, functional.py
    QuantState.as_dict): 4-bit `W.weight` (packed, two values a byte, the first in the high nibble)
    with `.absmax`, `.quant_map`, optional nested double-quantization state and a
    `.quant_state.bitsandbytes__nf4|fp4` JSON tensor; LLM.int8 `W.weight` int8 with `W.SCB`."""
    names = ckpt.tensors
    states = [n for n in names if BNB_STATE in n]
    scb = [n for n in names if n.endswith(".SCB")]
    if not states and not scb:
        return None
    scheme = Scheme("bitsandbytes")
    for name in states:
        weight = name[: name.index(".quant_state.")]
        raw = ckpt.load(name)
        try:
            state = json.loads(bytes(raw.to(torch.uint8).reshape(-1).tolist()).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CkptError(f"{ckpt.path}: {printable(name)} is not bitsandbytes' JSON quant state ({exc})") from None
        fmt = state.get("quant_type")
        if fmt not in ("nf4", "fp4") or name.rsplit("__", 1)[-1] != fmt:
            raise CkptError(f"{ckpt.path}: {printable(name)}: 4-bit type {printable(fmt)!r} is not nf4 or fp4")
        nested = f"{weight}.nested_absmax" in names
        aux = [name, f"{weight}.quant_map"] + ([f"{weight}.nested_absmax", f"{weight}.nested_quant_map"] if nested else [])
        for n in aux + [weight, f"{weight}.absmax"]:
            _need(ckpt, n, "bitsandbytes tensor")
        try:
            shape, blocksize = tuple(int(d) for d in state["shape"]), int(state["blocksize"])
            params = {"blocksize": blocksize}
            if nested:
                params.update(nested_blocksize=int(state["nested_blocksize"]), nested_offset=float(state["nested_offset"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CkptError(f"{ckpt.path}: {printable(name)} lacks {exc} of bitsandbytes' quant state") from None
        n_values = math.prod(shape)
        if names[weight].numel * 2 < n_values or names[f"{weight}.absmax"].numel != -(-n_values // blocksize):
            raise CkptError(f"{ckpt.path}: {printable(weight)} does not hold {list(shape)} values in "
                            f"{blocksize}-value blocks")
        scheme.layers[weight] = QuantLayer(weight, fmt, f"{weight}.absmax", tuple(aux), shape=shape,
                                           params=tuple(sorted(params.items())),
                                           dtype=TORCH_DTYPES.get(str(state.get("dtype", "")).removeprefix("torch.")))
    for name in scb:
        layer = _prefix_of(name, ".SCB")
        weight = f"{layer}.weight"
        info = _need(ckpt, weight, "int8 weight")
        fmt_name = f"{layer}.weight_format"
        if info.dtype != "I8" or names[name].numel != info.shape[0]:
            raise CkptError(f"{ckpt.path}: {printable(name)} does not scale the rows of an int8 {printable(weight)}")
        if fmt_name in names and int(ckpt.load(fmt_name).reshape(-1)[0]) != 0:
            raise CkptError(f"{ckpt.path}: {printable(fmt_name)} is not bitsandbytes' row format (0); refused")
        scheme.layers[weight] = QuantLayer(weight, "llm_int8", name, tuple(n for n in (fmt_name,) if n in names))
    return scheme


def _quanto(ckpt: Checkpoint) -> Scheme | None:
    """optimum-quanto as diffusers/transformers save it (optimum/quanto nn/qmodule.py, tensor/
    weights/qbytes.py): `W.weight._data` (int8 or fp8) with a per-row `W.weight._scale`, and
    `W.input_scale` / `W.output_scale`. The packed 4- and 2-bit weights (`W.weight._data._data` with
    `_shift`) do not hold the layer's shape, so they are refused."""
    names = ckpt.tensors
    datas = [n for n in names if n.endswith(".weight._data")]
    if not datas and not any(n.endswith((".weight._scale", ".weight._data._data")) for n in names):
        return None
    scheme = Scheme("optimum-quanto")
    recorded = json.loads(ckpt.metadata.get("ckptkit.quanto_shapes", "{}")) if ckpt.metadata else {}
    for packed in [n for n in names if n.endswith(".weight._data._data")]:
        weight = _prefix_of(packed, "._data._data")
        layer = _prefix_of(weight, ".weight")
        scale, shift = f"{weight}._scale", f"{weight}._shift"
        p, rows = names[packed], _need(ckpt, scale, "quanto scale").shape[0]
        _need(ckpt, shift, "quanto shift")
        if p.dtype != "U8" or len(p.shape) != 2 or p.shape[0] != -(-rows // 2):
            raise CkptError(f"{ckpt.path}: {printable(packed)} {p.dtype} {list(p.shape)} is not quanto's 4-bit packing "
                            f"of {rows} rows (2-bit and other packings are refused)")
        cols = p.shape[1]
        shape = recorded.get(layer)
        if shape is None and f"{layer}.bias" in names:  # the output width; the input width follows
            out_f = names[f"{layer}.bias"].numel
            shape = [out_f, rows * cols // out_f] if rows * cols % out_f == 0 else None
        if shape is None or math.prod(shape) != rows * cols:
            raise CkptError(f"{ckpt.path}: {printable(packed)}: the layer's shape is not in the file (no bias, no "
                            "recorded shape); a packed quanto weight is refused rather than guessed")
        aux = tuple(n for n in (shift, f"{layer}.input_scale", f"{layer}.output_scale") if n in names)
        scheme.layers[weight] = QuantLayer(weight, "qint4", scale, aux, data=packed, shape=tuple(shape))
    for data in datas:
        weight = _prefix_of(data, "._data")
        layer = _prefix_of(weight, ".weight")
        info, scale = names[data], f"{weight}._scale"
        sinfo = _need(ckpt, scale, "quanto scale")
        fmt = "qint8" if info.dtype == "I8" else "qfloat8" if info.dtype in FP8 else None
        if fmt is None or len(info.shape) < 1 or sinfo.numel not in (1, info.shape[0]):
            raise CkptError(f"{ckpt.path}: {printable(data)} ({info.dtype} {list(info.shape)}) with scale "
                            f"{list(sinfo.shape)} is not a quanto 8-bit weight this reader knows")
        aux = tuple(n for n in (f"{layer}.input_scale", f"{layer}.output_scale") if n in names)
        scheme.layers[weight] = QuantLayer(weight, fmt, scale, aux, data=data)
    return scheme


def _refuse_unknown(ckpt: Checkpoint) -> None:
    """Anything that looks like a quantization scale of a scheme not known here is refused."""
    for name in ckpt.tensors:
        if name.endswith((".absmax", ".quant_map", ".SCB", "._scale", "._shift")):
            raise CkptError(f"{ckpt.path}: {printable(name)} is part of a bitsandbytes/quanto quantization state "
                            "whose other parts are missing; refused rather than read as plain weights")
        if name.endswith(SCALE_SUFFIXES):
            raise CkptError(f"{ckpt.path}: {printable(name)} looks like a quantization scale of a scheme this "
                            "reader does not know; refused rather than guessed")


def value_dtype(ckpt: Checkpoint, scheme: Scheme) -> str:
    """The dtype a file keeps its unquantized float weights in (ComfyUI computes in it): the most
    common one among them, else F32."""
    counts = Counter(info.dtype for name, info in ckpt.tensors.items()
                     if name not in scheme.layers and name not in scheme.aux and info.dtype in FLOAT_CODES
                     and info.dtype not in FP8 and len(info.shape) >= 1)
    return counts.most_common(1)[0][0] if counts else "F32"


class Dequantized(Checkpoint):
    """`ckpt` seen as values: every quantized weight is weight x scale in `dtype`, its scales and
    markers are gone; every other tensor is as stored."""

    def __init__(self, ckpt: Checkpoint, scheme: Scheme, dtype: str | None = None):
        dtype = dtype or value_dtype(ckpt, scheme)
        tensors = {}
        by_data = {la.data: la for la in scheme.layers.values() if la.data}
        for name, info in ckpt.tensors.items():
            if name in scheme.aux:
                layer = by_data.get(name)
                if layer is None:
                    continue
                name = layer.weight  # quanto: the weight's values under the weight's own name
            layer = scheme.layers.get(name)
            if layer is not None:
                shape = layer.shape or info.shape
                out = layer.dtype or dtype
                info = TensorInfo(name, shape, out, math.prod(shape) * DTYPES[out][1])
            tensors[name] = info
        super().__init__(paths=list(ckpt.paths), format=ckpt.format, tensors=tensors, metadata=dict(ckpt.metadata),
                         config=ckpt.config, user_config=ckpt.user_config, family_override=ckpt.family_override,
                         original_config=ckpt.original_config, original_config_path=ckpt.original_config_path)
        self.inner, self.scheme, self.dtype = ckpt, scheme, dtype
        self.metadata.pop("_quantization_metadata", None)

    def _load(self, name: str) -> torch.Tensor:
        layer = self.scheme.layers.get(name)
        if layer is None:
            return self.inner.load(name)
        return dequantize_layer(layer, self.inner.load, DTYPES[self.tensors[name].dtype][0])

    def stored_layout(self, name: str):
        return None if name in self.scheme.layers else self.inner.stored_layout(name)

    def stored_bytes(self, name: str):
        return self.inner.stored_bytes(name)

    def position(self, name: str):
        return self.inner.position(name)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, key):  # reader extras (raw_span, release_hooks, ...) of the file underneath
        if key == "inner":
            raise AttributeError(key)
        return getattr(self.inner, key)


# the quantized type of a scaled weight, as verify's thresholds name it (thresholds.DEFAULTS)
STORED_TYPE = {"float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "int8_tensorwise": "INT8",
               "fp8_block128": "F8_E4M3", "llm_int8": "INT8", "qint8": "INT8", "qfloat8": "F8_E4M3",
               "nf4": "Q4_0", "fp4": "Q4_0",  # 4-bit, blocks of 64 with an absmax: Q4_0's error class
               "qint4": "Q4_1"}  # 4-bit with a scale and a shift: Q4_1's class


def stored_type(ckpt: Checkpoint, name: str) -> str:
    """The type a tensor is stored in: for a weight read through Dequantized, its quantized type
    (F8_E4M3, F8_E5M2, INT8), which verify's limits go by; else its dtype."""
    layer = ckpt.scheme.layers.get(name) if isinstance(ckpt, Dequantized) else None
    return STORED_TYPE[layer.format] if layer is not None else ckpt.tensors[name].dtype


def dequantize_layer(layer: QuantLayer, fetch, dtype: torch.dtype) -> torch.Tensor:
    """One layer's weight as values in `dtype`, its tensors read with `fetch(name)`."""
    if layer.format in ("nf4", "fp4"):
        return bnb_4bit(layer, fetch, dtype)
    if layer.format == "llm_int8":  # bitsandbytes _ops.py int8_vectorwise_dequant: float32 math
        w, scb = fetch(layer.weight), fetch(layer.scale)
        return (w.float() * scb.float().view(-1, 1) * 7.874015718698502e-3).to(dtype)
    if layer.format in ("qint8", "qfloat8"):  # quanto tensor/qbytes.py: _scale * _data in the scale's dtype
        data, scale = fetch(layer.data), fetch(layer.scale)
        return (scale * data.to(scale.dtype)).to(dtype)
    if layer.format == "qint4":  # quanto tensor/qbits.py QBitsDequantizer, packing from tensor/packed.py
        packed, scale = fetch(layer.data).view(torch.uint8), fetch(layer.scale)
        shift = fetch(f"{layer.weight}._shift")
        rows = scale.shape[0]
        values = torch.cat([(packed >> (4 * i)) & 0x0F for i in range(2)], dim=0)[:rows]
        if shift.dtype.is_floating_point:
            w = scale * values - shift
        else:
            w = scale * (values.to(torch.int8) - shift.to(torch.int8))
        return w.reshape(layer.shape).to(dtype)
    return dequantize(fetch(layer.data or layer.weight), fetch(layer.scale), layer.format, dtype)


def bnb_4bit(layer: QuantLayer, fetch, dtype: torch.dtype) -> torch.Tensor:
    """bitsandbytes' 4-bit dequantization (its default torch backend, backends/default/ops.py): the
    nested absmax first (8-bit blockwise, blocks of 256, plus the offset), then code[q] x block
    absmax in float32, then the cast."""
    params = dict(layer.params)
    n = math.prod(layer.shape)
    absmax = fetch(layer.scale)
    if "nested_offset" in params:
        prefix = layer.weight
        nested = fetch(f"{prefix}.nested_absmax").float()
        code8 = fetch(f"{prefix}.nested_quant_map").float()
        a = code8[absmax.reshape(-1).long()]
        a = a * nested.repeat_interleave(params["nested_blocksize"])[: a.numel()]
        absmax = a + params["nested_offset"]
    absmax = absmax.float().reshape(-1)
    packed = fetch(layer.weight).reshape(-1).view(torch.uint8)
    q = torch.stack([packed >> 4, packed & 0x0F], dim=-1).reshape(-1)[:n].long()
    code = fetch(f"{layer.weight}.quant_map").float()
    values = code[q] * absmax.repeat_interleave(params["blocksize"])[:n]
    return values.reshape(layer.shape).to(dtype)


def dequantize(weight: torch.Tensor, scale: torch.Tensor, fmt: str, dtype: torch.dtype) -> torch.Tensor:
    """One weight's values, as its library computes them (see the module doc)."""
    if fmt.startswith("float8"):  # comfy/ops.py, comfy_kitchen eager: cast first, multiply in the compute dtype
        s = scale.reshape(-1, *([1] * (weight.ndim - 1))) if scale.numel() > 1 else scale.reshape(())
        return weight.to(dtype) * s.to(dtype)
    if fmt == "int8_tensorwise":  # comfy_kitchen tensor/int8.py: float32 math, then the cast
        s = scale.float().reshape(-1, *([1] * (weight.ndim - 1))) if scale.numel() > 1 else scale.float().reshape(())
        return (weight.float() * s).to(dtype)
    if fmt == "fp8_block128":  # DeepSeek-V3 inference/kernel.py weight_dequant: float32 x the block's scale
        b = DEEPSEEK_BLOCK
        s = scale.float().repeat_interleave(b, 0).repeat_interleave(b, 1)[: weight.shape[0], : weight.shape[1]]
        return (weight.float() * s).to(dtype)
    raise CkptError(f"no dequantization for {fmt}")


def dequantizing(ckpt: Checkpoint, dtype: str | None = None) -> Checkpoint:
    """`ckpt` as values (Dequantized) when it holds a quantization scheme, else itself. `dtype`:
    the compute dtype code ("BF16", ...) to dequantize in; default the file's own."""
    if isinstance(ckpt, Dequantized) or ckpt.format == "gguf":  # GGUF's types dequantize in its reader
        return ckpt
    scheme = detect_scheme(ckpt)
    return ckpt if scheme is None else Dequantized(ckpt, scheme, dtype)


def carried_metadata(ckpt: Checkpoint, ops: dict) -> dict[str, str]:
    """For a byte-preserving copy of some of `ckpt`'s tensors (output name -> Expr): the header's
    `_quantization_metadata` restricted to the layers copied, under their output names, so that
    ComfyUI still finds it ({} when the source has none)."""
    meta = ckpt.metadata.get("_quantization_metadata") if ckpt.metadata else None
    if not meta:
        return {}
    layers = json.loads(meta).get("layers", {})
    renamed = {}
    for out, e in ops.items():
        if e.op == "src" and out.endswith(".weight") and e.args[0].endswith(".weight"):
            layer = e.args[0][: -len(".weight")]
            if layer in layers:
                renamed[out[: -len(".weight")]] = layers[layer]
    if not renamed:
        return {}
    return {"_quantization_metadata": json.dumps({**json.loads(meta), "layers": renamed})}
