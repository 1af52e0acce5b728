"""Running the CLI in tests: `run` (click's runner), `ok` (exit 0, else the output), `refused`
(exit 2 with exactly one `ckptkit: error:` line and no traceback; returns that line)."""

from __future__ import annotations

from click.testing import CliRunner

from ckptkit.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def refused(result) -> str:
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ckptkit: error: ") and "Traceback" not in result.output, lines
    return lines[0]
