"""The one exception type users can cause. The CLI prints its message on one line and exits 2."""


class CkptError(Exception):
    """A problem with the user's input (a file, a path, an option), phrased for a person."""

    exit_code = 2


class ResourceError(CkptError):
    """The machine cannot do what was asked (e.g. not enough memory for a model): never a verdict
    on the user's files, so `verify` does not report it as a failed check."""
