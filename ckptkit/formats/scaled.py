"""Quantized safetensors read as values: ComfyUI's scaled fp8 (old `scaled_fp8` marker with
`.scale_weight`; new mixed precision with `.comfy_quant` / `_quantization_metadata` and
`.weight_scale`), plain fp8 + `.weight_scale` files, and DeepSeek-style block fp8
(`.weight_scale_inv`). Read as if the stored values were the weights, such files give silently
wrong models (fp8 values off by their scale, ~1e-3: stable-diffusion.cpp's white images).

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
    format: str  # "float8_e4m3fn" | "float8_e5m2" | "int8_tensorwise" | "fp8_block128"
    scale: str  # the multiply-to-dequantize tensor
    aux: tuple[str, ...] = ()  # every other tensor of the layer (input scale, comfy_quant)


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
        _refuse_unknown(ckpt)
        return None
    for layer in scheme.layers.values():
        scheme.aux |= {layer.scale, *layer.aux}
    stray = [n for n in names if n.endswith(SCALE_SUFFIXES) and n not in scheme.aux]
    if stray:
        raise CkptError(f"{ckpt.path}: {printable(stray[0])} belongs to no quantized weight of its "
                        f"{scheme.name} scheme; refused rather than guessed")
    return scheme


def _refuse_unknown(ckpt: Checkpoint) -> None:
    """Other quantized serializations (bitsandbytes, optimum-quanto, ...) must not be read as values."""
    for name in ckpt.tensors:
        if ".quant_state.bitsandbytes__" in name or name.endswith((".weight.absmax", ".SCB")):
            raise CkptError(f"{ckpt.path}: a bitsandbytes-quantized file ({printable(name)}); reading its values "
                            "is not supported yet (refused rather than read as plain weights)")
        if name.endswith((".weight._data", ".weight._scale", ".weight._data._data")):
            raise CkptError(f"{ckpt.path}: an optimum-quanto-quantized file ({printable(name)}); reading its values "
                            "is not supported yet (refused rather than read as plain weights)")
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
        for name, info in ckpt.tensors.items():
            if name in scheme.aux:
                continue
            if name in scheme.layers:
                info = TensorInfo(name, info.shape, dtype, info.numel * DTYPES[dtype][1])
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
        return dequantize(self.inner.load(name), self.inner.load(layer.scale), layer.format, DTYPES[self.dtype][0])

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
               "fp8_block128": "F8_E4M3"}


def stored_type(ckpt: Checkpoint, name: str) -> str:
    """The type a tensor is stored in: for a weight read through Dequantized, its quantized type
    (F8_E4M3, F8_E5M2, INT8), which verify's limits go by; else its dtype."""
    layer = ckpt.scheme.layers.get(name) if isinstance(ckpt, Dequantized) else None
    return STORED_TYPE[layer.format] if layer is not None else ckpt.tensors[name].dtype


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
