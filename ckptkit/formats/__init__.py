"""open_checkpoint(path) -> Checkpoint, for every format ckptkit reads."""

from __future__ import annotations

import os
from pathlib import Path

from ckptkit.errors import CkptError
from ckptkit.formats.base import Checkpoint, TensorInfo
from ckptkit.formats.sniff import open_file, sniff

__all__ = ["Checkpoint", "TensorInfo", "open_checkpoint", "sniff"]


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open any supported source lazily. Raises CkptError with a one-line reason on bad input."""
    path = Path(path)
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as exc:  # a symlink loop, a name too long
        raise CkptError(f"{path}: cannot read ({exc.strerror})") from None
    if not exists:
        if os.path.lexists(path):
            raise CkptError(f"{path}: a symbolic link that cannot be resolved (dangling, or a loop)")
        raise CkptError(f"{path}: no such file or directory")
    if is_dir:
        from ckptkit.formats.diffusers_dir import open_diffusers_dir

        index = sorted(path.glob("*.safetensors.index.json"))
        if not (path / "config.json").exists() and not (path / "model_index.json").exists() and len(index) == 1:
            from ckptkit.formats.sharded import open_sharded_safetensors

            return open_sharded_safetensors(index[0])
        return open_diffusers_dir(path)
    ckpt = open_file(path)
    beside = path.with_suffix(".yaml")  # ComfyUI and A1111 read `<stem>.yaml` beside a checkpoint too
    if beside.is_file():
        from ckptkit.formats.files import read_yaml_file

        try:
            data = read_yaml_file(beside, "model yaml")
        except BaseException:
            ckpt.close()
            raise
        if isinstance(data, dict):
            ckpt.original_config, ckpt.original_config_path = data, beside
    return ckpt
