"""Several files read as one Checkpoint: safetensors shards (`*.safetensors.index.json`) and
diffusers folders (one sub-checkpoint per component, names joined as `folder/name`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ckptkit.errors import CkptError
from ckptkit.formats.base import Checkpoint, TensorInfo


class CompositeCheckpoint(Checkpoint):
    """Tensors gathered from member checkpoints; `route[name] = (member, member's own name)`."""

    def __init__(self, paths: list[Path], format: str):
        super().__init__(paths=paths, format=format)
        self.members: dict[str, Checkpoint] = {}
        self._route: dict[str, tuple[Checkpoint, str]] = {}

    def add(self, key: str, member: Checkpoint, prefix: str = "", only: set[str] | None = None) -> None:
        self.members[key] = member
        for name, info in member.tensors.items():
            if only is not None and name not in only:
                continue
            full = prefix + name
            if full in self.tensors:
                raise CkptError(f"{member.path}: tensor {name!r} is also in another shard")
            self.tensors[full] = TensorInfo(full, info.shape, info.dtype, info.nbytes)
            self._route[full] = (member, name)

    def source_of(self, name: str) -> tuple[Checkpoint, str]:
        return self._route[name]

    def _load(self, name: str) -> torch.Tensor:
        member, inner = self._route[name]
        return member.load(inner)

    def position(self, name: str) -> tuple[int, ...]:
        member, inner = self._route[name]
        return (list(self.members.values()).index(member), *member.position(inner))

    def close(self) -> None:
        for member in self.members.values():
            member.close()


def open_sharded_safetensors(index_path: Path) -> CompositeCheckpoint:
    from ckptkit.formats.safetensors import SafetensorsCheckpoint

    try:
        index = json.loads(index_path.read_text("utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise CkptError(f"{index_path}: not a valid safetensors index (needs a JSON object with 'weight_map')") from None
    shards = sorted(set(weight_map.values()))
    ckpt = CompositeCheckpoint([index_path], "safetensors-sharded")
    for shard in shards:
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise CkptError(f"{index_path}: shard {shard} is missing")
        member = SafetensorsCheckpoint(shard_path)
        listed = {n for n, f in weight_map.items() if f == shard}
        missing = listed - set(member.tensors)
        if missing:
            raise CkptError(f"{shard_path}: index lists {len(missing)} tensors the shard lacks, e.g. {sorted(missing)[0]!r}")
        ckpt.paths.append(shard_path)
        ckpt.add(shard, member, only=listed)
    ckpt.metadata = dict(index.get("metadata") or {})
    return ckpt
