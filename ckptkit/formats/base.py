"""The one interface every source format is read through.

A Checkpoint knows its tensor names, shapes, dtypes and byte sizes without reading any data;
`load(name)` reads one tensor (lazily, from an mmap where the format allows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from ckptkit.errors import CkptError, printable


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors code ("F16", "I64", ...) or a ggml type name for quantized data ("Q4_K")
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Checkpoint:
    """Base class: subclasses fill `tensors` and implement `_load`."""

    paths: list[Path]
    format: str
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    config: dict | None = None  # a diffusers/transformers config.json when the source has one
    user_config: object = None  # convert.configs.UserConfig from --config, attached by the command
    family_override: str | None = None  # --family NAME, attached by the command (families/detect.py)
    original_config: dict | None = None  # an LDM model yaml beside the file (<stem>.yaml), as read
    original_config_path: Path | None = None

    @property
    def path(self) -> Path:
        return self.paths[0]

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def load(self, name: str) -> torch.Tensor:
        """One tensor, in its stored dtype (quantized data comes back dequantized to float32)."""
        if name not in self.tensors:
            raise KeyError(name)
        return self._load(name)

    def _load(self, name: str) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def stored_layout(self, name: str) -> tuple[str, tuple[int, ...]] | None:
        """(ggml type, shape as stored) of a tensor kept in a GGUF file, whose bytes
        `stored_bytes` gives; None for other formats."""
        return None

    def stored_bytes(self, name: str):
        raise CkptError(f"{self.path}: {printable(name)} has no stored ggml bytes ({self.format} file)")

    def position(self, name: str) -> tuple[int, ...]:
        """Where a tensor's data sits (sortable: file, offset), so a reader of many tensors can
        go through the file(s) in order; () where the format does not say."""
        return ()

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def close(self) -> None:
        pass

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
