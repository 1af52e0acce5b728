"""Atomic output: write to a temporary file beside the target, fsync, rename into place.

Nothing is ever left under a final name if writing fails half-way; the temporary file is removed.
The temporary file is `.<name>.ckptkit-<pid>.<random>.partial` and its writer holds a `flock` on it
while writing, so a later run can tell the leftover of a killed process (no lock held) from a write
in progress (outputs.py remove_stale). A write error names the file it was writing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from ckptkit.errors import CkptError

PARTIAL_MARK = ".ckptkit-"
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str, path: Path) -> None:
    """Give the temp file normal permissions (mkstemp makes it 0600) and rename it into place."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _temp_beside(path: Path) -> tuple[int, str]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{PARTIAL_MARK}{os.getpid()}.", suffix=".partial",
                                   dir=path.parent)
    except OSError as exc:
        raise CkptError(f"{path}: cannot write ({exc.strerror})") from None
    fcntl.flock(fd, fcntl.LOCK_EX)  # held until the fd closes: "a live process owns this file"
    return fd, tmp


def owned_by_live_process(partial: Path) -> bool:
    """True while the process writing `partial` is alive (it holds the file's lock)."""
    try:
        fd = os.open(partial, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _write_error(path: Path, exc: OSError) -> CkptError:
    return CkptError(f"{path}: cannot write ({exc.strerror or exc})")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a binary file object; on success it becomes `path`, on any error it vanishes."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        _publish(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:  # disk full, file too large: say which file
            raise _write_error(path, exc) from None
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Like atomic_write, for writers that open the file themselves: yields the temporary path."""
    path = Path(path)
    fd, tmp = _temp_beside(path)  # the fd stays open (and locked) until the end
    try:
        yield Path(tmp)
        os.fsync(fd)
        _publish(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            raise _write_error(path, exc) from None
        raise
    finally:
        os.close(fd)
