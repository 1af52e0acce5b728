"""Several files read as one Checkpoint: safetensors shards (`*.safetensors.index.json`) and
diffusers folders (one sub-checkpoint per component, names joined as `folder/name`)."""

from __future__ import annotations

from pathlib import Path

import torch

from ckptkit.errors import CkptError
from ckptkit.formats.base import Checkpoint, TensorInfo
from ckptkit.formats.files import inside, printable, read_json_file
from ckptkit.formats.schema import AnyValue, Map, Obj, Str

# `*.safetensors.index.json` as transformers/diffusers write it.
INDEX_SCHEMA = Obj({"weight_map": Map(Str()), "metadata": Map(AnyValue())}, required=("weight_map",))


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
                raise CkptError(f"{member.path}: tensor {printable(repr(name))} is also in another shard")
            self.tensors[full] = TensorInfo(full, info.shape, info.dtype, info.nbytes)
            self._route[full] = (member, name)

    def source_of(self, name: str) -> tuple[Checkpoint, str]:
        return self._route[name]

    def _load(self, name: str) -> torch.Tensor:
        member, inner = self._route[name]
        return member.load(inner)

    def stored_layout(self, name: str) -> tuple[str, tuple[int, ...]] | None:
        member, inner = self._route[name]
        return member.stored_layout(inner)

    def stored_bytes(self, name: str):
        member, inner = self._route[name]
        return member.stored_bytes(inner)

    def position(self, name: str) -> tuple[int, ...]:
        member, inner = self._route[name]
        return (list(self.members.values()).index(member), *member.position(inner))

    def close(self) -> None:
        for member in self.members.values():
            member.close()


def open_sharded_safetensors(index_path: Path) -> CompositeCheckpoint:
    from ckptkit.formats.safetensors import SafetensorsCheckpoint

    index = read_json_file(index_path, INDEX_SCHEMA, "safetensors index")
    weight_map = index["weight_map"]
    shards = sorted(set(weight_map.values()))
    ckpt = CompositeCheckpoint([index_path], "safetensors-sharded")
    try:
        for shard in shards:
            shard_path = inside(index_path.parent, shard, str(index_path), "shard")
            if not shard_path.exists():
                raise CkptError(f"{index_path}: shard {printable(shard)} is missing")
            if not shard_path.is_file():
                raise CkptError(f"{index_path}: shard {printable(shard)} is not a regular file")
            member = SafetensorsCheckpoint(shard_path)
            listed = {n for n, f in weight_map.items() if f == shard}
            missing = listed - set(member.tensors)
            if missing:
                member.close()
                raise CkptError(f"{shard_path}: index lists {len(missing)} tensors the shard lacks, "
                                f"e.g. {printable(repr(sorted(missing)[0]))}")
            ckpt.paths.append(shard_path)
            ckpt.add(shard, member, only=listed)
    except BaseException:
        ckpt.close()
        raise
    ckpt.metadata = {str(k): v if isinstance(v, str) else str(v) for k, v in (index.get("metadata") or {}).items()}
    return ckpt
