"""open_checkpoint(path) -> Checkpoint, for every format ckptkit reads."""

from __future__ import annotations

import os
from pathlib import Path

from ckptkit.errors import CkptError
from ckptkit.formats.base import Checkpoint, TensorInfo

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}

__all__ = ["Checkpoint", "TensorInfo", "open_checkpoint"]


def _sniff(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "pickle"
    return "safetensors"


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open any supported source lazily. Raises CkptError with a one-line reason on bad input."""
    path = Path(path)
    if not path.exists():
        raise CkptError(f"{path}: no such file or directory")
    if path.is_dir():
        from ckptkit.formats.diffusers_dir import open_diffusers_dir

        index = sorted(path.glob("*.safetensors.index.json"))
        if not (path / "config.json").exists() and not (path / "model_index.json").exists() and len(index) == 1:
            from ckptkit.formats.sharded import open_sharded_safetensors

            return open_sharded_safetensors(index[0])
        return open_diffusers_dir(path)
    if path.name.endswith(".safetensors.index.json"):
        from ckptkit.formats.sharded import open_sharded_safetensors

        return open_sharded_safetensors(path)
    try:
        kind = _sniff(path)
    except OSError as exc:
        raise CkptError(f"{path}: cannot read ({exc.strerror})") from None
    if path.stat().st_size == 0:
        raise CkptError(f"{path}: empty file")
    if kind == "gguf" or path.suffix == ".gguf":
        from ckptkit.formats.gguf import GGUFCheckpoint

        return GGUFCheckpoint(path)
    if kind == "pickle" or path.suffix in PICKLE_SUFFIXES:
        from ckptkit.formats.pickle import PickleCheckpoint

        return PickleCheckpoint(path)
    from ckptkit.formats.safetensors import SafetensorsCheckpoint

    return SafetensorsCheckpoint(path)
