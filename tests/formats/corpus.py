"""A corpus of broken inputs. Each builder takes a directory, writes one bad input there and
returns its path; `open_checkpoint` must refuse every one with a one-line CkptError naming it.

Kept free of pytest so that CLI tests can reuse it (`ckptkit inspect <path>` -> exit 2, one line).
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

# The file the malicious pickle would create (beside itself) if it were ever executed.
MALICIOUS_MARKER = "PWNED_MARKER"


# --- safetensors made by hand --------------------------------------------------------------------

def safetensors_bytes(header: dict | bytes, data: bytes, length: int | None = None) -> bytes:
    """A safetensors file from a header (dict, or raw header bytes) and a data area; `length`
    overrides the 8-byte header-length field."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    return struct.pack("<Q", len(blob) if length is None else length) + blob + data


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def valid_safetensors_bytes() -> bytes:
    """Two F32 tensors of 4 values each: a 16-byte `a` then a 16-byte `b`."""
    header = {"__metadata__": {"format": "pt"}, "a": entry("F32", [2, 2], 0, 16), "b": entry("F32", [4], 16, 32)}
    return safetensors_bytes(header, np.arange(8, dtype=np.float32).tobytes())


def _write(directory: Path, name: str, content: bytes) -> Path:
    path = Path(directory) / name
    path.write_bytes(content)
    return path


def truncated_in_length(d: Path) -> Path:
    return _write(d, "cut_in_length.safetensors", valid_safetensors_bytes()[:5])


def truncated_in_header(d: Path) -> Path:
    good = valid_safetensors_bytes()
    (n,) = struct.unpack("<Q", good[:8])
    return _write(d, "cut_in_header.safetensors", good[: 8 + n // 2])


def truncated_in_data(d: Path) -> Path:
    return _write(d, "cut_in_data.safetensors", valid_safetensors_bytes()[:-6])


def header_length_past_end(d: Path) -> Path:
    good = valid_safetensors_bytes()
    return _write(d, "header_past_end.safetensors", struct.pack("<Q", len(good)) + good[8:])


def header_length_huge(d: Path) -> Path:
    good = valid_safetensors_bytes()
    return _write(d, "header_2pow63.safetensors", struct.pack("<Q", 2**63) + good[8:])


def overlapping_offsets(d: Path) -> Path:
    header = {"a": entry("F32", [4], 0, 16), "b": entry("F32", [4], 8, 24)}
    return _write(d, "overlap.safetensors", safetensors_bytes(header, bytes(24)))


def gap_between_tensors(d: Path) -> Path:
    header = {"a": entry("F32", [4], 0, 16), "b": entry("F32", [4], 20, 36)}
    return _write(d, "gap.safetensors", safetensors_bytes(header, bytes(36)))


def dtype_shape_mismatch(d: Path) -> Path:
    header = {"a": entry("F32", [3, 3], 0, 16)}  # 9 floats need 36 bytes
    return _write(d, "shape_mismatch.safetensors", safetensors_bytes(header, bytes(16)))


def unknown_dtype(d: Path) -> Path:
    header = {"a": entry("F13", [4], 0, 16)}
    return _write(d, "unknown_dtype.safetensors", safetensors_bytes(header, bytes(16)))


def invalid_utf8(d: Path) -> Path:
    blob = b'{"a\xff\xfe": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}'
    return _write(d, "bad_utf8.safetensors", safetensors_bytes(blob, bytes(16)))


def invalid_json(d: Path) -> Path:
    blob = b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]'
    return _write(d, "bad_json.safetensors", safetensors_bytes(blob, bytes(16)))


def duplicate_tensor_names(d: Path) -> Path:
    blob = (b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},'
            b' "a": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}}')
    return _write(d, "duplicate_names.safetensors", safetensors_bytes(blob, bytes(32)))


def metadata_not_dict(d: Path) -> Path:
    header = {"__metadata__": ["format", "pt"], "a": entry("F32", [4], 0, 16)}
    return _write(d, "metadata_list.safetensors", safetensors_bytes(header, bytes(16)))


# --- other inputs --------------------------------------------------------------------------------

def empty_file(d: Path) -> Path:
    return _write(d, "empty.safetensors", b"")


def directory_without_model(d: Path) -> Path:
    folder = Path(d) / "no_model_here"
    folder.mkdir()
    (folder / "README.md").write_text("nothing to load\n")
    return folder


def nonexistent_path(d: Path) -> Path:
    return Path(d) / "does_not_exist.safetensors"


def _valid_gguf_bytes() -> bytes:
    """A small valid GGUF (one KV, one 16x16 F32 tensor), as bytes."""
    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ok.gguf"
        writer = gguf.GGUFWriter(out, "test")
        writer.add_string("general.name", "corpus")
        writer.add_tensor("w", np.arange(256, dtype=np.float32).reshape(16, 16))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return out.read_bytes()


def truncated_gguf_in_data(d: Path) -> Path:
    return _write(d, "cut_in_data.gguf", _valid_gguf_bytes()[:-100])


def truncated_gguf_in_header(d: Path) -> Path:
    return _write(d, "cut_in_header.gguf", _valid_gguf_bytes()[:40])


def gguf_magic_garbage(d: Path) -> Path:
    rng = np.random.default_rng(0)
    return _write(d, "garbage.gguf", b"GGUF" + struct.pack("<I", 3) + rng.bytes(300))


def gguf_huge_counts(d: Path) -> Path:
    """Version 3 with 2**62 tensors and 2**62 KV pairs claimed: must fail fast, not allocate."""
    return _write(d, "huge_counts.gguf", b"GGUF" + struct.pack("<IQQ", 3, 2**62, 2**62) + bytes(64))


class _RunsShell:
    """Unpickling this would call os.system(command)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def malicious_pickle(d: Path) -> Path:
    """A torch.save'd checkpoint whose unpickling would run `touch <dir>/PWNED_MARKER`."""
    marker = Path(d) / MALICIOUS_MARKER
    path = Path(d) / "malicious.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": _RunsShell(f"touch {marker}")}, path)
    return path


def malicious_raw_pickle(d: Path) -> Path:
    """The same payload as a bare pickle stream (what a legacy .pt starts with)."""
    marker = Path(d) / MALICIOUS_MARKER
    return _write(d, "malicious_raw.pt", pickle.dumps(_RunsShell(f"touch {marker}"), protocol=2))


def pickle_without_tensors(d: Path) -> Path:
    path = Path(d) / "no_tensors.ckpt"
    torch.save({"state_dict": {"epoch": 3, "lr": 0.1}, "global_step": 10}, path)
    return path


def truncated_pickle(d: Path) -> Path:
    path = Path(d) / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.arange(1000, dtype=torch.float32)}}, path)
    path.write_bytes(path.read_bytes()[:1500])
    return path


def index_with_missing_shard(d: Path) -> Path:
    path = Path(d) / "model.safetensors.index.json"
    path.write_text(json.dumps({"metadata": {}, "weight_map": {"w": "model-00001-of-00002.safetensors"}}))
    return path


# name -> builder; a test can parametrize over this.
CORPUS: dict[str, Callable[[Path], Path]] = {
    fn.__name__: fn
    for fn in (
        truncated_in_length, truncated_in_header, truncated_in_data, header_length_past_end,
        header_length_huge, overlapping_offsets, gap_between_tensors, dtype_shape_mismatch,
        unknown_dtype, invalid_utf8, invalid_json, duplicate_tensor_names, metadata_not_dict,
        empty_file, directory_without_model, nonexistent_path,
        truncated_gguf_in_data, truncated_gguf_in_header, gguf_magic_garbage, gguf_huge_counts,
        malicious_pickle, malicious_raw_pickle, pickle_without_tensors, truncated_pickle,
        index_with_missing_shard,
    )
}
