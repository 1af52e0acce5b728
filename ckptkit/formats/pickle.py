"""Pickle checkpoints (.ckpt/.pt/.pth/.bin): only ever through torch.load(weights_only=True).

A pickle that needs code execution to load is refused; there is no unsafe fallback.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from pathlib import Path

import torch

from ckptkit.errors import CkptError
from ckptkit.formats.base import Checkpoint, TensorInfo
from ckptkit.formats.dtypes import TORCH_TO_CODE
from ckptkit.formats.files import printable, require_regular

WRAPPERS = ("state_dict", "module", "model")


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # e.g. {"state_dict": {"module": {...}}}
        if isinstance(obj, dict):
            inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
            if inner is not None and not any(isinstance(v, torch.Tensor) for v in obj.values()):
                obj = inner
                continue
        break
    if not isinstance(obj, dict):
        raise CkptError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CkptError(f"{path}: holds no tensors")
    return tensors


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _checked_info(path: Path, name: str, t: torch.Tensor) -> TensorInfo:
    """A tensor's info, refusing what cannot be streamed honestly: non-strided layouts (sparse,
    mkldnn, nested), and views whose logical bytes exceed the bytes stored for them (a stride-0
    `expand` of one float claiming gigabytes would make every reader write or scan gigabytes)."""
    pname = printable(repr(name))
    if t.layout != torch.strided:
        kind = str(t.layout).removeprefix("torch.").replace("_", " ")
        raise CkptError(f"{path}: tensor {pname} has a {kind} layout; only dense (strided) tensors are supported")
    if t.device.type != "cpu":
        raise CkptError(f"{path}: tensor {pname} is on the {t.device.type} device and holds no data")
    code = TORCH_TO_CODE.get(t.dtype)
    if code is None:
        raise CkptError(f"{path}: tensor {pname} has unsupported dtype {t.dtype}")
    if any(d < 0 for d in t.shape) or any(s < 0 for s in t.stride()) or t.storage_offset() < 0:
        # torch's rebuild accepts these when the tensor is empty; any later copy of it raises
        raise CkptError(f"{path}: tensor {pname} has a negative size or stride "
                        f"(shape {list(t.shape)}, strides {list(t.stride())}); refused")
    nbytes = t.numel() * t.element_size()
    stored = t.untyped_storage().nbytes()
    if nbytes > stored:
        raise CkptError(f"{path}: tensor {pname} claims {nbytes} bytes but stores {stored} "
                        f"(an expanded view with strides {tuple(t.stride())}); refused")
    return TensorInfo(name, tuple(t.shape), code, nbytes)


class _Bounded(io.RawIOBase):
    """A file whose read(n) never asks for more than the bytes left: a pickle string that claims
    4 GB would otherwise make `read` allocate 4 GB before finding the file short."""

    def __init__(self, fh):
        self._fh = fh
        self._size = os.fstat(fh.fileno()).st_size

    def readable(self):
        return True

    def seekable(self):
        return True

    def read(self, n=-1):
        left = max(0, self._size - self._fh.tell())
        return self._fh.read(left if n is None or n < 0 else min(n, left))

    def readinto(self, buf):
        return self._fh.readinto(buf)

    def readline(self, limit=-1):
        return self._fh.readline(limit)

    def seek(self, offset, whence=0):
        return self._fh.seek(offset, whence)

    def tell(self):
        return self._fh.tell()

    def fileno(self):
        return self._fh.fileno()


class PickleCheckpoint(Checkpoint):
    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        super().__init__(paths=[path], format="pickle")
        if require_regular(path).st_size == 0:
            raise CkptError(f"{path}: empty file")
        try:
            with warnings.catch_warnings():  # torch's warnings must not precede our one line
                warnings.simplefilter("ignore")
                try:
                    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as exc:
                    if "mmap" not in str(exc) and "zipfile" not in str(exc):
                        raise
                    # legacy (pre-zipfile) torch.save format cannot be mmapped; still weights_only
                    with open(path, "rb") as raw:
                        obj = torch.load(_Bounded(raw), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "global" not in str(exc).lower():  # noise, not a pickle that asks to import and call something
                raise CkptError(f"{path}: not a readable torch checkpoint: {printable(_first(exc))}") from None
            first = str(exc).strip().splitlines()
            detail = next((ln for ln in first if "GLOBAL" in ln), next((ln for ln in first if "global" in ln.lower()), ""))
            raise CkptError(f"{path}: refused: this pickle needs code execution to load, which ckptkit never allows "
                            f"({printable(detail.strip()[:160])})") from None
        except Exception as exc:  # torch raises RuntimeError, ValueError, KeyError, EOFError, ... on bad archives
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CkptError(f"{path}: not a readable torch checkpoint: {printable(msg[:200])}") from None
        self._tensors = _unwrap(obj, path)
        for name, t in self._tensors.items():
            self.tensors[name] = _checked_info(path, name, t)

    def _load(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def close(self) -> None:
        self._tensors = {}
