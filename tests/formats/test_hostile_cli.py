"""Every command on every bad input: exit 2 (verify: 1 or 2), one `ckptkit: ` line on stderr, no
traceback, nothing created in the sandbox (OUT included), the input unchanged, under 10 s and 1 GB.

The matrix (corpus x command forms, ~900 runs) runs once per session in its own process
(`python -m tests.formats.cli_harness`, a fork-based runner: see its docstring for why a separate
process); each test below reports one command's failures across all entries in one message.
Run it alone: `python -m pytest -q tests/formats/test_hostile_cli.py` (about a minute), or
`python -m tests.formats.cli_harness -v` for the table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.formats import cli_harness, corpus

ROOT = Path(__file__).resolve().parents[2]
MATRIX_TIMEOUT_S = 1200


def _driver(args: list[str], tmp: Path, timeout: float = MATRIX_TIMEOUT_S) -> dict:
    """Run `python -m tests.formats.cli_harness ARGS --json FILE`; the JSON it wrote."""
    out = tmp / "results.json"
    cmd = [sys.executable, "-m", "tests.formats.cli_harness", *args, "--json", str(out), "--root", str(tmp / "work")]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the harness ran past {timeout} s: {' '.join(cmd)}\n{(exc.stdout or '')[-3000:]}")
    if not out.exists():
        pytest.fail(f"the harness wrote no results (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(out.read_text())


def _selected(session) -> tuple[list[str], bool]:
    """The command forms (and whether the extra cases) that this session's selected tests need."""
    forms, extras = [], False
    for item in session.items:
        if item.module is not sys.modules[__name__]:
            continue
        if item.originalname == "test_every_corpus_entry_is_refused_cleanly":
            forms.append(item.callspec.params["command"])
        elif item.originalname == "test_wrong_kind_of_input_is_refused":
            extras = True
    return forms, extras


@pytest.fixture(scope="session")
def matrix(request, tmp_path_factory) -> dict[str, list[cli_harness.Result]]:
    forms, extras = _selected(request.session)
    if not forms:
        forms = ["inspect"]  # the extra cases alone: one cheap form to carry them
    args = ["--commands", ",".join(forms)] + ([] if extras else ["--no-extras"])
    data = _driver(args, tmp_path_factory.mktemp("session-hostile-cli"))
    by_command: dict[str, list[cli_harness.Result]] = {}
    for r in cli_harness.results_of(data):
        by_command.setdefault(r.command, []).append(r)
    print(f"\nhostile CLI matrix: {data['cases']} cases in {data['timings']['matrix_s']} s "
          f"(total {data['timings']['total_s']} s, mode {data['mode']}, {data['jobs']} jobs), {data['failed']} failing")
    return by_command


def _report(results: list[cli_harness.Result], what: str) -> str:
    failing = [r for r in results if not r.ok]
    lines = [f"{len(failing)} of {len(results)} cases fail {what}:"]
    for r in failing:
        text = cli_harness.describe(r)
        lines.append(text.replace(r.sandbox, "<sandbox>") if r.sandbox else text)
    lines.append("by kind of failure:")
    lines.append(cli_harness.summary(failing))
    return "\n".join(lines)


def test_the_corpus_and_the_expectations_agree():
    assert len(corpus.CORPUS) >= 65
    assert set(cli_harness.MAY_SUCCEED) <= corpus.OPEN_OK, "only entries that open by design may succeed"
    assert not set(corpus.VALID_TRICKY) & set(corpus.CORPUS)


def test_the_harness_catches_every_misbehaviour(tmp_path):
    """Stand-in commands that print a traceback, block on a FIFO, sleep, leave a thread running, leave
    or briefly create OUT, modify the input, use 1.2 GB or crash are each reported as such."""
    report = _driver(["--self-test"], tmp_path, timeout=120)
    bad = {name: info for name, info in report.items() if not info["ok"]}
    assert not bad, json.dumps(bad, indent=1)
    assert report["blocked on a FIFO"]["wall_s"] < cli_harness.SELF_TEST_TIME_LIMIT_S + 1


@pytest.mark.parametrize("command", list(cli_harness.COMMANDS))
def test_every_corpus_entry_is_refused_cleanly(matrix, command):
    results = matrix.get(command, [])
    assert results, f"the harness ran no case for {command!r}"
    if any(not r.ok for r in results):
        pytest.fail(_report(results, f"`ckptkit {command}`"), pytrace=False)


def test_wrong_kind_of_input_is_refused(matrix):
    """A whole bundle where one component file is expected (quantize to one .gguf, convert to
    original, trigflow, sample, merge), and a reference of another family (verify --against)."""
    results = matrix.get("extra", [])
    assert len(results) == len(cli_harness.EXTRA_CASES)
    if any(not r.ok for r in results):
        pytest.fail(_report(results, "(wrong kind of input)"), pytrace=False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fork runner is Linux-only")
def test_the_fork_runner_agrees_with_a_real_process(tmp_path):
    """The same cases through `python -m ckptkit.cli` subprocesses give the same exit codes and stderr."""
    args = ["--entries", "truncated_in_data,gguf_q8_1_tensor", "--commands", "inspect,verify"]
    forked = cli_harness.results_of(_driver([*args, "--mode", "fork"], tmp_path / "fork", timeout=300))
    # "subp": as long as "fork", since messages shorten long paths to fit
    real = cli_harness.results_of(_driver([*args, "--mode", "subprocess"], tmp_path / "subp", timeout=300))

    def outcome(r):
        return r.id, r.exit, r.stderr.replace(r.sandbox, "<sandbox>")

    assert len(forked) == len(real) == 4
    differ = [f"{a[0]}:\n  fork:       exit {a[1]}, stderr {a[2]!r}\n  subprocess: exit {b[1]}, stderr {b[2]!r}"
              for a, b in zip(map(outcome, forked), map(outcome, real)) if a != b]
    assert not differ, "\n".join(differ)
