"""Where a run writes: checked before anything is written, staged while writing, and cleaned up
after a crash.

Every command that writes model files goes through `output_dir` (a folder of files) or
`output_file` (one file):
- the output is refused when it is, contains or lies inside an input, or exists and is neither a
  regular file nor a directory (a device node, a FIFO);
- stale leftovers of an earlier run on the same output that no live process owns (a staging
  folder, a `.partial` file) are removed first, and the run says so;
- a folder output is written into a hidden staging folder and moved into place at the end; a
  failure (an error, Ctrl-C, SIGTERM) removes the staging folder and any folder the run created,
  so nothing is left under a final name and no new folder stays behind.

Ownership is a `flock` held for the whole run on the staging folder's `.lock` (and on each
`.partial` file, formats/atomic.py): a crashed or killed process drops its locks, so a later run
can tell a leftover from a run still in progress, also when a pid was reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from ckptkit.errors import CkptError
from ckptkit.formats.atomic import PARTIAL_MARK, owned_by_live_process

STAGING_PREFIX = ".ckptkit-staging-"
LOCK_NAME = ".lock"


def _real(path: Path) -> Path:
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        return Path(os.path.abspath(path))


def check_output(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], kind: str) -> Path:
    """Refuse an output (`kind` "dir" or "file") that is, contains or lies inside an input, or that
    exists and is not a regular file (file) / directory (dir)."""
    out = Path(out)
    try:
        st = os.stat(out)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise CkptError(f"{out}: cannot use as output ({exc.strerror})") from None
    real_out = _real(out)
    for inp in inputs:
        inp = Path(inp)
        real_in = _real(inp)
        same = real_out == real_in
        if not same and st is not None and inp.exists():
            with contextlib.suppress(OSError):
                same = os.path.samefile(out, inp)  # a hardlink of the input
        if same:
            raise CkptError(f"{out}: is the input {inp}; write somewhere else")
        if real_out in real_in.parents:
            raise CkptError(f"{out}: contains the input {inp}; write somewhere else")
        if real_in in real_out.parents:
            raise CkptError(f"{out}: lies inside the input {inp}; write somewhere else")
    if st is not None:
        if kind == "file" and stat.S_ISDIR(st.st_mode):
            raise CkptError(f"{out}: is a directory")
        if kind == "dir" and not stat.S_ISDIR(st.st_mode):
            raise CkptError(f"{out}: exists and is not a directory")
        if kind == "file" and not stat.S_ISREG(st.st_mode):
            raise CkptError(f"{out}: exists and is not a regular file; refusing to replace it")
    return out


def remove_stale(folder: Path, names: Iterable[str] | None = None) -> list[str]:
    """Remove staging folders and partial files in `folder` that no live process owns (only
    partial files of `names` when given); returns a note per removal."""
    notes = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return notes
    except OSError as exc:
        raise CkptError(f"{folder}: cannot list ({exc.strerror})") from None
    for entry in entries:
        if entry.name.startswith(STAGING_PREFIX) and entry.is_dir(follow_symlinks=False):
            if not _staging_in_use(Path(entry.path)):
                shutil.rmtree(entry.path, ignore_errors=True)
                notes.append(f"removed stale staging folder {entry.path} left by an interrupted run")
        elif PARTIAL_MARK in entry.name and entry.name.endswith(".partial") and entry.is_file(follow_symlinks=False):
            if names is not None and not any(entry.name.startswith(f".{n}.") for n in names):
                continue
            if not owned_by_live_process(Path(entry.path)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                notes.append(f"removed stale partial file {entry.path} left by an interrupted run")
    return notes


def _staging_in_use(stage: Path) -> bool:
    lock = stage / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        # created and not locked yet (a run that is just starting), or a pre-lock leftover: the pid
        # in the folder's name decides
        return _pid_alive(_pid_of(stage.name))
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True  # its owner holds the lock
    finally:
        os.close(fd)
    return False


def _pid_of(name: str) -> int | None:
    part = name[len(STAGING_PREFIX):].split("-", 1)[0]
    return int(part) if part.isdigit() else None


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _created_dirs(path: Path) -> Iterator[list[Path]]:
    """mkdir -p `path`, remembering what was created; on failure remove those again (if empty)."""
    created: list[Path] = []
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            for made in reversed(created):
                with contextlib.suppress(OSError):
                    made.rmdir()
            raise CkptError(f"{folder}: cannot create ({exc.strerror})") from None
        created.append(folder)
    try:
        yield created
    except BaseException:
        for made in reversed(created):
            with contextlib.suppress(OSError):
                made.rmdir()
        raise


@contextlib.contextmanager
def output_dir(out_dir: str | os.PathLike, inputs: Iterable, force: bool = False,
               notes: list[str] | None = None) -> Iterator[Path]:
    """Check and prepare a folder output, yield a staging folder inside it; on success every file
    is moved into place (`ckptkit.json` last), on failure nothing stays (see module doc)."""
    out_dir = check_output(out_dir, inputs, "dir")
    removed = remove_stale(out_dir) if out_dir.is_dir() else []
    if notes is not None:
        notes.extend(removed)
    if out_dir.is_dir() and any(p.name != LOCK_NAME for p in out_dir.iterdir()) and not force:
        raise CkptError(f"{out_dir}: output directory is not empty (use --force to write into it)")
    with _created_dirs(out_dir), staging(out_dir) as stage:
        yield stage


@contextlib.contextmanager
def staging(out_dir: Path) -> Iterator[Path]:
    """A locked hidden folder inside `out_dir`; its files move into `out_dir` when the block ends
    without error (the manifest last: it only ever describes files already in place); the folder
    is removed either way."""
    stage = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out_dir))
    lock_fd = os.open(stage / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        os.write(lock_fd, f"{os.getpid()}\n".encode())
        yield stage
        files = sorted((p for p in stage.rglob("*") if p.is_file() and p != stage / LOCK_NAME),
                       key=lambda p: (p.name == "ckptkit.json", p))
        for path in files:
            target = out_dir / path.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        os.close(lock_fd)
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def output_file(out: str | os.PathLike, inputs: Iterable, force: bool = False,
                notes: list[str] | None = None) -> Iterator[Path]:
    """Check and prepare a one-file output; yields its folder (created if needed and removed again
    on failure). The file itself is written atomically by the writers (formats/atomic.py)."""
    out = check_output(out, inputs, "file")
    if out.exists() and not force:
        raise CkptError(f"{out}: exists (use --force to replace it)")
    removed = remove_stale(out.parent, [out.name]) if out.parent.is_dir() else []
    if notes is not None:
        notes.extend(removed)
    with _created_dirs(out.parent):
        yield out.parent


def plain_name(name: object, what: str) -> str:
    """A name that becomes part of a file name (a component name from `--prefix`, a manifest):
    letters, digits, '.', '_', '+', '-', not starting with '.', at most 100 characters."""
    import re

    from ckptkit.formats.files import printable

    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}", name):
        raise CkptError(f"{what} {printable(repr(name))} is not a plain file name "
                        "(letters, digits, '.', '_', '+', '-'; no path)")
    return name
