"""sha256 of a whole file, read in 16 MB pieces (hashlib releases the GIL, so it can run on a
thread beside the executor)."""

from __future__ import annotations

import hashlib
import os

CHUNK = 16 << 20


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
