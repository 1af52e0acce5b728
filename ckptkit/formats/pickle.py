"""Pickle checkpoints (.ckpt/.pt/.pth/.bin): only ever through torch.load(weights_only=True).

A pickle that needs code execution to load is refused; there is no unsafe fallback.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from ckptkit.errors import CkptError
from ckptkit.formats.base import Checkpoint, TensorInfo
from ckptkit.formats.dtypes import TORCH_TO_CODE

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


class PickleCheckpoint(Checkpoint):
    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        super().__init__(paths=[path], format="pickle")
        if path.stat().st_size == 0:
            raise CkptError(f"{path}: empty file")
        try:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc) and "zipfile" not in str(exc):
                    raise
                # legacy (pre-zipfile) torch.save format cannot be mmapped; still weights_only
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()
            detail = next((ln for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else "")
            raise CkptError(f"{path}: refused: this pickle needs code execution to load, which ckptkit never allows "
                            f"({detail.strip()[:160]})") from None
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CkptError(f"{path}: not a readable torch checkpoint: {msg[:200]}") from None
        self._tensors = _unwrap(obj, path)
        for name, t in self._tensors.items():
            code = TORCH_TO_CODE.get(t.dtype)
            if code is None:
                raise CkptError(f"{path}: tensor {name!r} has unsupported dtype {t.dtype}")
            self.tensors[name] = TensorInfo(name, tuple(t.shape), code, t.numel() * t.element_size())

    def _load(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def close(self) -> None:
        self._tensors = {}
