"""GGUF: reading through gguf-py's GGUFReader, writing through its GGUFWriter in streaming order.

Logical shapes are numpy order (ggml dims reversed); a `comfy.gguf.orig_shape.<name>` KV
(ComfyUI-GGUF's convention for reshaped conv weights) overrides the stored shape.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ckptkit.errors import CkptError
from ckptkit.formats.atomic import atomic_path
from ckptkit.formats.base import Checkpoint, TensorInfo

ORIG_SHAPE_KEY = "comfy.gguf.orig_shape."
# ggml types that are plain arrays, as safetensors dtype codes.
PLAIN = {"F32": "F32", "F16": "F16", "BF16": "BF16", "F64": "F64",
         "I8": "I8", "I16": "I16", "I32": "I32", "I64": "I64"}


def _field_value(field):
    import gguf

    types = field.types
    if not types:
        return None
    if types[0] == gguf.GGUFValueType.ARRAY:
        return [field.contents(i) for i in range(len(field.data))]
    return field.contents()


class GGUFCheckpoint(Checkpoint):
    def __init__(self, path: str | os.PathLike):
        import gguf

        path = Path(path)
        super().__init__(paths=[path], format="gguf")
        try:
            if path.stat().st_size < 24:
                raise ValueError("file too short for a GGUF header")
            self.reader = gguf.GGUFReader(path, "r")
        except OSError as exc:
            raise CkptError(f"{path}: cannot open ({exc.strerror})") from None
        except Exception as exc:  # gguf-py raises ValueError, struct/numpy errors, KeyError on bad files
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CkptError(f"{path}: not a valid GGUF file: {msg}") from None
        self.kv: dict[str, object] = {}
        for key, fld in self.reader.fields.items():
            if key.startswith("GGUF."):
                continue
            try:
                self.kv[key] = _field_value(fld)
            except Exception:  # a value gguf-py cannot decode is still not fatal for reading tensors
                self.kv[key] = None
        self.metadata = {k: str(v) for k, v in self.kv.items() if not k.startswith(ORIG_SHAPE_KEY)}
        self._raw: dict[str, object] = {}
        # llama.cpp names T5 tensors its own way; read them as transformers names, as ComfyUI-GGUF does
        rename = _t5_to_hf if self.architecture in ("t5", "t5encoder") else (lambda n: n)
        file_size = path.stat().st_size
        for t in self.reader.tensors:
            type_name = t.tensor_type.name
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            orig = self.kv.get(ORIG_SHAPE_KEY + t.name)
            if orig:
                orig = tuple(int(d) for d in orig)
                if int(np.prod(orig)) != int(np.prod(shape)):
                    raise CkptError(f"{path}: {ORIG_SHAPE_KEY}{t.name} {list(orig)} does not match {list(shape)}")
                shape = orig
            if t.data_offset + t.n_bytes > file_size:
                raise CkptError(f"{path}: tensor {t.name!r} runs past the end of the file (truncated?)")
            name = rename(t.name)
            self.tensors[name] = TensorInfo(name, shape, PLAIN.get(type_name, type_name), int(t.n_bytes))
            self._raw[name] = t

    @property
    def architecture(self) -> str | None:
        arch = self.kv.get("general.architecture")
        return str(arch) if arch is not None else None

    def ggml_type(self, name: str):
        return self._raw[name].tensor_type

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of a tensor (quantized blocks for quantized types), as uint8."""
        data = self._raw[name].data
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)

    def _load(self, name: str) -> torch.Tensor:
        import gguf

        t = self._raw[name]
        info = self.tensors[name]
        if info.dtype in ("F32", "F16", "F64", "I8", "I16", "I32", "I64"):
            arr = np.asarray(t.data)
            return torch.from_numpy(arr.copy()).reshape(info.shape)
        if info.dtype == "BF16":
            raw = self.raw(name).copy()
            return torch.from_numpy(raw).view(torch.bfloat16).reshape(info.shape)
        from ckptkit.quant import ggml

        if info.dtype in ggml.KERNEL_TYPES:  # our C kernels (ggml's dequantize_row_*), multithreaded
            stored = tuple(int(d) for d in reversed(t.shape.tolist()))
            return torch.from_numpy(ggml.dequantize(self.raw(name), info.dtype, stored)).reshape(info.shape)
        arr = gguf.quants.dequantize(t.data, t.tensor_type)  # other ggml types (IQ*, TQ*, ...): gguf-py
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).reshape(info.shape)

    def close(self) -> None:
        self.reader = None


def _t5_to_hf(name: str) -> str:
    from ckptkit.quant.t5_names import to_hf

    return to_hf(name)


class GGUFStreamWriter:
    """Streaming GGUF writer (gguf-py's GGUFWriter in streaming order: infos, header, KV, tensor
    infos, then tensor data one at a time), with atomic rename. `specs` gives, per tensor in
    write order: (name, stored numpy shape, ggml type name, nbytes)."""

    def __init__(self, path: str | os.PathLike, arch: str, specs: Iterable[tuple[str, tuple[int, ...], str, int]],
                 kv: dict[str, object] | None = None):
        self.path = Path(path)
        self.arch = arch
        self.specs = list(specs)
        self.kv = dict(kv or {})
        for name, *_ in self.specs:
            if len(name.encode("utf-8")) > 127:
                raise CkptError(f"{self.path}: tensor name {name!r} is over 127 bytes, which ggml cannot load")
        self._next = 0

    def __enter__(self) -> "GGUFStreamWriter":
        import gguf

        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        w = gguf.GGUFWriter(tmp, self.arch)
        for key, value in self.kv.items():
            _add_kv(w, key, value)
        for name, shape, type_name, nbytes in self.specs:
            # A float32 "tensor dtype" with raw_dtype keeps our logical shape as given (gguf-py
            # would otherwise reinterpret it as a byte shape).
            w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=gguf.GGMLQuantizationType[type_name])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        self._writer = w
        return self

    def write(self, name: str, data: np.ndarray) -> None:
        want, _, _, nbytes = self.specs[self._next]
        if name != want or data.nbytes != nbytes:
            raise ValueError(f"expected {nbytes} bytes of {want!r}, got {data.nbytes} of {name!r}")
        self._writer.write_tensor_data(np.ascontiguousarray(data))
        self._next += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self._next != len(self.specs):
                exc_type = ValueError
                exc = ValueError(f"{self.path}: {len(self.specs) - self._next} planned tensors were never written")
            self._writer.close()
        finally:
            self._ctx.__exit__(exc_type, exc, tb)
        if exc_type is not None and exc is not None and tb is None:
            raise exc


def _add_kv(writer, key: str, value) -> None:
    import gguf

    if key == "general.architecture":
        return
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value) if 0 <= value < 2**32 else writer.add_int64(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, (list, tuple)):
        if value and all(isinstance(v, int) for v in value):
            writer.add_key_value(key, list(value), gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.INT32)
        else:
            writer.add_array(key, list(value))
    else:
        raise TypeError(f"cannot store {type(value).__name__} in GGUF key {key}")


def torch_to_plain(tensor: torch.Tensor) -> tuple[np.ndarray, str]:
    """A float tensor as the numpy array and ggml type name GGUF stores it with."""
    if tensor.dtype == torch.bfloat16:
        return tensor.contiguous().view(torch.int16).numpy().view(np.uint8).reshape(-1), "BF16"
    if tensor.dtype == torch.float16:
        return tensor.contiguous().numpy(), "F16"
    return tensor.contiguous().to(torch.float32).numpy(), "F32"
