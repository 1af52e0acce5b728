"""The one exception type users can cause. The CLI prints its message on one line and exits 2."""


class CkptError(Exception):
    """A problem with the user's input (a file, a path, an option), phrased for a person."""

    exit_code = 2


class ResourceError(CkptError):
    """The machine cannot do what was asked (e.g. not enough memory for a model): never a verdict
    on the user's files, so `verify` does not report it as a failed check."""


class Unscanned(CkptError):
    """A tensor that cannot be stored as planned (non-finite values, an fp16 overflow), met while
    writing: with `--no-scan` the message is the answer; when the scan was only deferred, the
    planner scans and plans again (pipeline.quantize)."""


_CONTROL = {i: f"\\x{i:02x}" for i in [*range(0x20), 0x7f]}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
_CONTROL.update({c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029, *range(0x80, 0xa0))})


def printable(text: object) -> str:
    """`text` with control characters (and Unicode line breaks) escaped, so a name read from a file
    can never start a new line of output or forge an `error:` line."""
    return str(text).translate(_CONTROL)
