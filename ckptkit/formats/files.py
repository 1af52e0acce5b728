"""Opening what a user points at, safely: regular files only, JSON side files with a depth limit
and one schema check each, and relative names from files that stay inside their folder.

Every reader of a file named by a user or by another file (index, manifest, config) goes through
here, so a FIFO never blocks an `open()`, a `"../x"` never leaves its folder and a 100,000-deep
JSON never reaches a recursive consumer.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import BinaryIO

from ckptkit.errors import CkptError, printable  # noqa: F401 (printable: re-exported)

MAX_JSON_BYTES = 64 << 20  # index, manifest and config files are kilobytes; a header is at most 100 MB
MAX_JSON_DEPTH = 64


def require_regular(path: str | os.PathLike) -> os.stat_result:
    """stat() a path that must be a regular file (following symlinks); one-line CkptError otherwise."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise CkptError(f"{path}: a symbolic link that cannot be resolved (dangling, or a loop)") from None
        raise CkptError(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise CkptError(f"{path}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CkptError(f"{path}: not a regular file ({_kind(st.st_mode)})")
    return st


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open a regular file for reading. Opened with O_NONBLOCK and checked with fstat, so a FIFO or
    device swapped in after a stat() still cannot block the open; refused with one line otherwise."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CkptError(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise CkptError(f"{path}: cannot open ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CkptError(f"{path}: not a regular file ({_kind(st.st_mode)})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)  # fdopen failed (or was never reached): the fd is still ours to close
        raise
    return fh


def json_depth_ok(value, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when no list/dict in `value` is nested deeper than `limit` (iterative: never recurses)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return True


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_json(text: bytes | str, where: str, what: str = "JSON", duplicates: bool = True):
    """Parse JSON with the failures a file can cause (bad UTF-8, syntax, nesting) as one CkptError."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        hook = None if duplicates else _no_duplicates
        value = json.loads(text, object_pairs_hook=hook)
    except UnicodeDecodeError:
        raise CkptError(f"{where}: {what} is not valid UTF-8") from None
    except RecursionError:
        raise CkptError(f"{where}: {what} is nested too deeply") from None
    except ValueError as exc:
        raise CkptError(f"{where}: {what} is not valid JSON ({_first_line(exc)})") from None
    if not json_depth_ok(value):
        raise CkptError(f"{where}: {what} is nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    return value


def read_json_file(path: str | os.PathLike, schema=None, what: str = "JSON"):
    """A JSON side file (index, manifest, config): regular, bounded in size and depth, and checked
    against `schema` (ckptkit.formats.schema) when given."""
    path = Path(path)
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > MAX_JSON_BYTES:
            raise CkptError(f"{path}: {size} bytes is too large for a {what} file (limit {MAX_JSON_BYTES})")
        try:
            raw = fh.read(MAX_JSON_BYTES + 1)
        except OSError as exc:
            raise CkptError(f"{path}: cannot read ({exc.strerror})") from None
    value = parse_json(raw, str(path), what)
    if schema is not None:
        from ckptkit.formats.schema import check

        check(value, schema, str(path))
    return value


MAX_YAML_BYTES = 1 << 20  # an LDM model yaml is a few kilobytes


def _read_text_file(path: Path, what: str, limit: int, parse, syntax_error: type):
    """A small text side file parsed by `parse(text)`: regular, bounded in size and depth; bad
    encoding, nesting or syntax (`syntax_error`) as one line."""
    with open_regular(path) as fh:
        raw = fh.read(limit + 1)
    if len(raw) > limit:
        raise CkptError(f"{path}: too large for a {what} file")
    try:
        value = parse(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise CkptError(f"{path}: {what} is not valid UTF-8") from None
    except RecursionError:
        raise CkptError(f"{path}: {what} is nested too deeply") from None
    except syntax_error as exc:
        raise CkptError(f"{path}: not a readable {what} ({_first_line(exc)})") from None
    if not json_depth_ok(value):
        raise CkptError(f"{path}: {what} is nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    return value


def read_yaml_file(path: str | os.PathLike, what: str = "YAML"):
    """A YAML side file (an original LDM model config beside a checkpoint): safe (no tags that build
    objects) and without aliases (an alias bomb expands exponentially when walked)."""
    import yaml

    path = Path(path)

    def parse(text: str):
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise CkptError(f"{path}: {what} uses aliases (*name); write the values out")
        return yaml.safe_load(text)

    return _read_text_file(path, what, MAX_YAML_BYTES, parse, yaml.YAMLError)


def read_toml_file(path: str | os.PathLike, schema=None, what: str = "TOML"):
    """A TOML options file (policy, thresholds): regular, bounded, parsed and checked like JSON."""
    import tomllib

    path = Path(path)
    value = _read_text_file(path, what, MAX_JSON_BYTES, tomllib.loads, tomllib.TOMLDecodeError)
    if schema is not None:
        from ckptkit.formats.schema import check

        check(value, schema, str(path))
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def inside(folder: str | os.PathLike, name: object, where: str, what: str = "file") -> Path:
    """`folder/name` for a relative name read from a file (index weight_map, manifest `file`,
    model_index subfolder): refused unless it is a non-empty relative path without `..`, so what a
    file names stays inside its folder. (Symlinks the user placed are followed: a Hugging Face cache
    snapshot links every file to a blob outside its folder.)"""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise CkptError(f"{where}: {what} {printable(repr(name))} is not a file name")
    rel = Path(name)
    if rel.is_absolute() or name.startswith(("/", "\\")) or ".." in rel.parts or ".." in Path(name.replace("\\", "/")).parts \
            or (len(name) > 1 and name[1] == ":"):
        raise CkptError(f"{where}: {what} {printable(repr(name))} points outside {folder}")
    if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in rel.parts) or len(name) > 4000:
        raise CkptError(f"{where}: {what} {printable(repr(name[:60]))}... is too long for a file name")
    return Path(folder) / rel

