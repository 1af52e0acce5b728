"""What a file is, from its content (never from its name alone), and the reader that opens it.
Single files only: folders are opened by ckptkit.formats.open_checkpoint."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from ckptkit.errors import CkptError, printable
from ckptkit.formats.base import Checkpoint
from ckptkit.formats.files import open_regular, require_regular

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024


def sniff(head: bytes, size: int) -> str | None:
    """What a file is, from what it is, never from one byte: "gguf" (magic), "safetensors" (an
    8-byte little-endian header length that fits the file, then a JSON object), "pickle" (a torch
    zip archive, or a raw pickle stream: PROTO opcode and a known protocol), or None."""
    if head[:4] == b"GGUF":
        return "gguf"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= min(size - 8, SAFETENSORS_MAX_HEADER) and head[8:9] == b"{":
            return "safetensors"
    if head[:4] == b"PK\x03\x04":
        return "pickle"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return None


def open_file(path: str | os.PathLike) -> Checkpoint:
    """Open one checkpoint file (or a sharded index) lazily, by what its first bytes say it is."""
    path = Path(path)
    if path.name.endswith(".safetensors.index.json"):
        from ckptkit.formats.sharded import open_sharded_safetensors

        return open_sharded_safetensors(path)
    st = require_regular(path)
    if st.st_size == 0:
        raise CkptError(f"{path}: empty file")
    with open_regular(path) as fh:
        try:
            head = fh.read(16)
        except OSError as exc:
            raise CkptError(f"{path}: cannot read ({exc.strerror})") from None
    kind = sniff(head, st.st_size)
    if kind is None:  # unrecognised content: the reader its name asks for says precisely what is wrong
        suffix = path.suffix.lower()
        kind = {".gguf": "gguf", ".safetensors": "safetensors"}.get(suffix)
        if kind is None and suffix in PICKLE_SUFFIXES:
            kind = "pickle"
        if kind is None:
            raise CkptError(f"{path}: not a safetensors, GGUF or torch checkpoint (starts with "
                            f"{printable(repr(head[:8]))})")
    if kind == "gguf":
        from ckptkit.formats.gguf import GGUFCheckpoint

        return GGUFCheckpoint(path)
    if kind == "pickle":
        from ckptkit.formats.pickle import PickleCheckpoint

        return PickleCheckpoint(path)
    from ckptkit.formats.safetensors import SafetensorsCheckpoint

    return SafetensorsCheckpoint(path)
