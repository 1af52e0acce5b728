"""sha256 of whole files, and a cache of the sha256 of files we did not change since.

`file_sha256` always reads the file (integrity checks use it: they must see the bytes).
`source_sha256` is for provenance (the source hash in a component-set manifest): a 24 GB download
that is split, then quantized to four types, is hashed once, not five times. The cache is one small
JSON file per path under `$CKPTKIT_CACHE_DIR` (default `$XDG_CACHE_HOME/ckptkit` or
`~/.cache/ckptkit`; `CKPTKIT_CACHE_DIR=off` disables it), keyed by what `stat` says of the file:
device, inode, size, mtime and ctime in nanoseconds. Any write to the file changes its mtime/ctime,
so a changed file is hashed again. As with git's index, a file whose mtime is within two seconds of
the moment it was hashed is not cached (a write in the same clock tick could go unseen). A cache that
cannot be read or written is ignored: it never makes an operation fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

CHUNK = 16 << 20
RACY_SECONDS = 2.0


def file_sha256(path: str | os.PathLike, progress=None) -> str:
    """Read the whole file, 16 MB at a time into one reused buffer (hashlib releases the GIL, so
    this can run on a thread beside the executor). `progress(n)` is told of every n bytes read."""
    h = hashlib.sha256()
    buf = memoryview(bytearray(CHUNK))
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(buf[:n])
            if progress is not None:
                progress(n)
    return h.hexdigest()


def cache_dir() -> Path | None:
    env = os.environ.get("CKPTKIT_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ckptkit"


def stat_key(st: os.stat_result) -> dict:
    return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns}


def _entry_path(path: Path) -> Path | None:
    folder = cache_dir()
    if folder is None:
        return None
    real = os.path.realpath(path)
    return folder / "sha256" / (hashlib.sha1(real.encode("utf-8", "surrogateescape")).hexdigest() + ".json")


def cached_sha256(path: str | os.PathLike) -> str | None:
    """The cached sha256 of `path` if the file is unchanged since it was hashed, else None."""
    entry = _entry_path(Path(path))
    if entry is None:
        return None
    try:
        data = json.loads(entry.read_text("utf-8"))
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != stat_key(st) or data.get("path") != os.path.realpath(path):
        return None
    digest = data.get("sha256")
    return digest if isinstance(digest, str) and len(digest) == 64 else None


def remember_sha256(path: str | os.PathLike, digest: str, st: os.stat_result | None = None,
                    hashed_at: float | None = None) -> None:
    """Record `digest` for `path` as it is now (or as `st` saw it when the hashing started). Skipped
    when the file was modified within RACY_SECONDS of `hashed_at` (see the module doc)."""
    entry = _entry_path(Path(path))
    if entry is None:
        return
    try:
        st = st or os.stat(path)
        if hashed_at is not None and hashed_at - st.st_mtime_ns / 1e9 < RACY_SECONDS:
            return
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"path": os.path.realpath(path), "key": stat_key(st), "sha256": digest}), "utf-8")
        os.replace(tmp, entry)
    except OSError:
        return


def source_sha256(path: str | os.PathLike, hash_file=None) -> str | None:
    """sha256 of a source file, served from the cache when the file is unchanged since it was hashed;
    else computed by `hash_file(path)` (default `file_sha256`) and remembered if the file did not
    change while it was read. None when `hash_file` gave up (returned None)."""
    digest = cached_sha256(path)
    if digest is not None:
        return digest
    st, started = os.stat(path), time.time()
    digest = (hash_file or file_sha256)(path)
    if digest is not None and stat_key(os.stat(path)) == stat_key(st):  # unchanged while we read it
        remember_sha256(path, digest, st, hashed_at=started)
    return digest
