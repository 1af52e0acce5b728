"""Every CLI command on every bad input (tests/formats/corpus.py), fast.

A fresh `python -m ckptkit.cli` costs seconds of imports, and the matrix is ~1000 runs. So a parent
process imports ckptkit and the heavy modules its commands import lazily (torch, diffusers model
classes, transformers, gguf, ...) once, then per case builds the input in a fresh sandbox and
forks; the child points fds 0/1/2 at /dev/null and two files, resets signal handlers and runs
`ckptkit.cli.cli.main(args, prog_name="ckptkit", standalone_mode=True)` as `ckptkit` would. The
parent polls `os.wait4` (exit status and the child's peak RSS), kills a child after the time limit,
and compares the sandbox before and after.

The parent must never have started a thread, nor run torch compute: GNU OpenMP (torch's CPU thread
pool) does not survive fork, and a child of a parent that used it hangs in its first parallel op.
That is why this runs as its own process (`python -m tests.formats.cli_harness`; the pytest test
does so), why the fixture models are built in a child and handed over as bytes, and why every fork
is preceded by a check that the parent still has a single OS thread (/proc/self/task).

Without fork (not Linux) the same cases run as `python -m ckptkit.cli` subprocesses (slower).

    python -m tests.formats.cli_harness [--commands inspect,split] [--entries a,b] [--json OUT]
                                        [--jobs 2] [--mode fork|subprocess] [--root DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

TIME_LIMIT_S = 10.0
RSS_LIMIT_KB = 1024 * 1024  # 1 GiB
RSS_KILL_KB = 3 * 1024 * 1024  # a child above this is killed (protects the machine)
FILE_SIZE_CAP = 2 * 1024**3  # RLIMIT_FSIZE of a child: a 4 GB write fails instead of filling the disk
FIFO_BLOCK_S = 1.5  # a child blocked this long opening/reading a FIFO is hung for good (nobody writes it)
FIFO_WCHANS = {"wait_for_partner", "fifo_open", "pipe_read", "pipe_wait", "pipe_wait_readable"}
CHILD_CRASH = 99  # a child whose command raised out of click

# command form -> argv from (input path P, output path OUT). OUT never exists before the run.
COMMANDS: dict[str, Callable[[str, str], list[str]]] = {
    "inspect": lambda p, out: ["inspect", p],
    "inspect --scan": lambda p, out: ["inspect", p, "--scan"],
    "split": lambda p, out: ["split", p, "-o", out],
    "merge": lambda p, out: ["merge", p, "-o", os.path.join(out, "x.safetensors")],
    "convert": lambda p, out: ["convert", p, "-o", out, "--layout", "diffusers"],
    "quantize": lambda p, out: ["quantize", p, "-o", out, "--type", "q8_0"],
    "verify": lambda p, out: ["verify", p],
    "verify --against": lambda p, out: ["verify", p, "--against", p],
    "trigflow": lambda p, out: ["trigflow", p, "-o", out],
    "sample": lambda p, out: ["sample", p, "-o", os.path.join(out, "x.png")],
}

# Refusal exit codes: 2, and for verify 1 (a failed check) or 2 (unreadable).
REFUSED = frozenset({2})
VERIFY_REFUSED = frozenset({1, 2})

# Corpus entries that may succeed (exit 0) for some command forms, by design:
#  * gguf_q8_1_tensor opens fine (a Q8_1 tensor ckptkit cannot dequantize): only `inspect` without
#    --scan may succeed; everything that needs its values must refuse;
#  * int64_weights_known_layout (an SD1 UNet stored as I64): commands that only read, copy or
#    re-lay-out may succeed; those that compute (quantize, verify, trigflow, sample) must refuse;
#  * zero_dims_known_layout (an SD1 UNet whose every first dim is 0): only the read-only inspect
#    forms may succeed; writing out a model with no weights is refused.
MAY_SUCCEED: dict[str, frozenset[str]] = {
    "gguf_q8_1_tensor": frozenset({"inspect"}),
    "int64_weights_known_layout": frozenset({"inspect", "inspect --scan", "split", "convert"}),
    "zero_dims_known_layout": frozenset({"inspect", "inspect --scan"}),
    # inspect describes a folder; it does not build its model, so it does not judge the config's values
    "diffusers_config_value_wrong_type": frozenset({"inspect", "inspect --scan"}),
}


def expected_exits(entry: str, command: str) -> frozenset[int]:
    base = VERIFY_REFUSED if command.startswith("verify") else REFUSED
    return base | {0} if command in MAY_SUCCEED.get(entry, ()) else base


@dataclass
class Case:
    id: str
    entry: str  # corpus entry, VALID_TRICKY entry, or extra case name
    command: str  # a COMMANDS key, or "extra: ..." for EXTRA_CASES
    build: Callable[[Path], Path] = field(repr=False)
    args: Callable[[str, str], list[str]] = field(repr=False)
    exits: frozenset[int] = REFUSED
    kind: str = "corpus"  # corpus | valid | extra | self-test
    target: Callable[[list[str]], None] | None = field(default=None, repr=False)  # None: the ckptkit CLI
    time_limit: float | None = None  # None: the runner's


# Inputs of the wrong kind for the command (a whole bundle where one component file is expected, and
# the reverse): name -> (fixture used, argv from (P, OUT), allowed exits). P is the fixture's path.
def _sd1_bundle(d: Path) -> Path:
    from tests.formats import corpus

    return corpus.write_fixture("sd1_bundle", d)


def _sd1_component(d: Path) -> Path:
    """The SD1 fixture's diffusion model as one comfy component file (from `ckptkit split`)."""
    from tests.formats import corpus

    path = d / "diffusion_model.safetensors"
    path.write_bytes(corpus.fixture_tree("sd1_component_set")["diffusion_model.safetensors"])
    return path


def _sana_component_and_sd1_bundle(d: Path) -> Path:
    """The Sana fixture's transformer (TrigFlow form, one file) beside an SD1 bundle; returns the former."""
    from tests.formats import corpus

    _sd1_bundle(d)
    path = d / "sana_transformer.safetensors"
    path.write_bytes(corpus.fixture_tree("sana_trigflow_set")["diffusion_model.safetensors"])
    return path


EXTRA_CASES: dict[str, tuple[Callable[[Path], Path], Callable[[str, str], list[str]], frozenset[int]]] = {
    # a bundle where one component file is expected
    "quantize bundle -o x.gguf": (_sd1_bundle, lambda p, out: ["quantize", p, "-o", os.path.join(out, "x.gguf"),
                                                                "--type", "q8_0"], REFUSED),
    "convert bundle --layout original": (_sd1_bundle, lambda p, out: ["convert", p, "-o", out, "--layout", "original"],
                                         REFUSED),
    "trigflow sd1 bundle": (_sd1_bundle, lambda p, out: ["trigflow", p, "-o", out], REFUSED),
    "sample sd1 bundle": (_sd1_bundle, lambda p, out: ["sample", p, "-o", os.path.join(out, "x.png")], REFUSED),
    "merge bundle file": (_sd1_bundle, lambda p, out: ["merge", p, "-o", os.path.join(out, "x.safetensors")], REFUSED),
    # a reference of another family: a Sana transformer checked against an SD1 bundle
    "verify sana component --against sd1 bundle": (
        _sana_component_and_sd1_bundle,
        lambda p, out: ["verify", p, "--against", os.path.join(os.path.dirname(p), "sd1.safetensors")],
        VERIFY_REFUSED),
}


def build_cases(commands: list[str] | None = None, entries: list[str] | None = None,
                extras: bool = True) -> list[Case]:
    from tests.formats import corpus

    commands = list(COMMANDS) if commands is None else commands
    unknown = [c for c in commands if c not in COMMANDS]
    if unknown:
        raise SystemExit(f"unknown command forms {unknown}; known: {list(COMMANDS)}")
    cases: list[Case] = []
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    for entry, build in corpus.CORPUS.items():
        if (entries is not None and entry not in entries) or (is_root and entry in corpus.SKIP_AS_ROOT):
            continue
        for command in commands:
            cases.append(Case(f"{entry} | {command}", entry, command, build, COMMANDS[command],
                              expected_exits(entry, command)))
    for entry, build in corpus.VALID_TRICKY.items():  # valid: the read-only forms must succeed
        if entries is not None and entry not in entries:
            continue
        for command in ("inspect", "inspect --scan"):
            if command in commands:
                cases.append(Case(f"{entry} | {command}", entry, command, build, COMMANDS[command],
                                  frozenset({0}), kind="valid"))
    if extras and entries is None:
        for name, (build, args, exits) in EXTRA_CASES.items():
            cases.append(Case(f"extra | {name}", name, "extra", build, args, exits, kind="extra"))
    return cases


# --- sandbox snapshots ---------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, tuple]:
    """rel path -> (type, size, mtime_ns, mode) of everything under root, symlinks not followed."""
    out: dict[str, tuple] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            st = e.stat(follow_symlinks=False)
            rel = os.path.relpath(e.path, root)
            out[rel] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
            if stat.S_ISDIR(st.st_mode):
                stack.append(Path(e.path))
    st = os.stat(root)
    out["."] = (stat.S_IFMT(st.st_mode), 0, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return out


def content_hashes(root: Path, snap: dict[str, tuple]) -> dict[str, str]:
    """sha256 of every regular file we can read (a FIFO is never opened)."""
    out = {}
    for rel, (kind, *_rest) in snap.items():
        if kind != stat.S_IFREG:
            continue
        path = root / rel
        if not os.access(path, os.R_OK):
            out[rel] = "unreadable"
            continue
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        out[rel] = h.hexdigest()
    return out


def compare(before: dict, after: dict, hashes_before: dict, hashes_after: dict, allow_out: bool) -> list[str]:
    """Problems, each "<kind>: <detail>": anything created, removed or changed in the sandbox (`out`
    and the sandbox's own mtime may change when the command may succeed)."""
    problems = []

    def under_out(p: str) -> bool:
        return p == "out" or p.startswith("out" + os.sep)

    created = sorted(set(after) - set(before))
    if "out" in after and not allow_out:
        problems.append("files left behind: OUT was created")
    created = [p for p in created if not under_out(p)]
    if created:
        problems.append(f"files left behind: created {len(created)} entries: {', '.join(created[:4])}")
    removed = sorted(set(before) - set(after))
    if removed:
        problems.append(f"input modified: removed {', '.join(removed[:4])}")
    transient, changed = [], []
    root_written = allow_out or any(os.sep not in p for p in set(after) - set(before))  # reported above
    for p in sorted(set(before) & set(after)):
        if before[p] == after[p] or (root_written and p == "."):
            continue
        only_mtime = before[p][0] == stat.S_IFDIR and before[p][:2] == after[p][:2] and before[p][3] == after[p][3]
        (transient if only_mtime else changed).append("OUT's parent (the sandbox)" if p == "." else p)
    if transient:
        problems.append(f"transient files: something was created and removed in {', '.join(transient[:4])}")
    if changed:
        problems.append(f"input modified: changed metadata of {', '.join(changed[:4])}")
    modified = [p for p in hashes_before if p in hashes_after and hashes_before[p] != hashes_after[p]]
    if modified:
        problems.append(f"input modified: content of {', '.join(modified[:4])}")
    return problems


# --- results -------------------------------------------------------------------------------------

@dataclass
class Result:
    id: str
    entry: str
    command: str
    kind: str
    argv: list[str]
    exit: int | None  # None: killed
    signal: int | None
    stderr: str
    stdout_tail: str
    wall_s: float
    maxrss_kb: int | None
    failures: list[str] = field(default_factory=list)  # "<kind>: detail"
    sandbox: str = ""

    @property
    def ok(self) -> bool:
        return not self.failures


def judge(case: Case, r: Result, problems: list[str], hung: str | None, time_limit: float = TIME_LIMIT_S) -> list[str]:
    out = []
    if r.exit == CHILD_CRASH and "Traceback" in r.stderr:
        out.append("traceback: uncaught exception")
    elif "Traceback" in r.stderr or "Traceback" in r.stdout_tail:
        out.append("traceback: printed")
    if hung:
        out.append(f"hang: {hung}")
    elif r.signal is not None:
        out.append(f"signal: killed by signal {r.signal}")
    elif r.exit not in case.exits:
        out.append(f"exit code: {r.exit}, expected {'/'.join(map(str, sorted(case.exits)))}")
    lines = r.stderr.splitlines()
    if r.exit not in (0, None) or 0 not in case.exits:
        if len(lines) != 1:
            out.append(f"stderr lines: {len(lines)} lines on stderr")
        if lines and not lines[0].startswith("ckptkit: "):
            out.append(f"stderr prefix: first line {lines[0][:80]!r}")
    else:  # an allowed success: warnings only, each a ckptkit line
        bad = [ln for ln in lines if not ln.startswith("ckptkit: ")]
        if bad:
            out.append(f"stderr lines: {len(bad)} stderr lines not from ckptkit, e.g. {bad[0][:80]!r}")
    if "File too large" in r.stderr:
        out.append(f"huge output: hit the {FILE_SIZE_CAP >> 30} GiB file-size cap")
    out.extend(problems)
    if r.wall_s > time_limit and not hung:
        out.append(f"slow: {r.wall_s:.1f} s")
    if r.maxrss_kb is not None and r.maxrss_kb > RSS_LIMIT_KB:
        out.append(f"memory: peak RSS {r.maxrss_kb / 1024:.0f} MiB")
    return out


# --- the parent ----------------------------------------------------------------------------------

def _os_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def assert_single_threaded(when: str) -> None:
    assert threading.active_count() == 1, (
        f"{when}: the harness parent runs {threading.active_count()} Python threads "
        f"({[t.name for t in threading.enumerate()]}); forking it would copy their locks in a held state")
    tasks = _os_threads()
    assert tasks == 1, (
        f"{when}: the harness parent has {tasks} OS threads (threading.active_count() == 1, so native: most "
        "likely torch's OpenMP pool after a torch op in the parent); its children would hang in their first "
        "parallel op. Build inputs without torch compute in the parent (corpus.warm_fixtures runs in a child).")


def prepare_parent() -> dict:
    """Import what the commands import lazily, so that children do not pay for it. Returns timings."""
    import importlib
    import pkgutil

    t0 = time.perf_counter()
    import numpy  # noqa: F401
    import torch  # noqa: F401

    import ckptkit
    import ckptkit.cli  # noqa: F401

    for mod in pkgutil.walk_packages(ckptkit.__path__, "ckptkit."):
        importlib.import_module(mod.name)
    import accelerate  # noqa: F401
    import diffusers
    import diffusers.loaders.single_file_utils  # noqa: F401
    import gguf  # noqa: F401
    import PIL.Image  # noqa: F401
    import safetensors  # noqa: F401
    import tqdm  # noqa: F401
    import transformers

    from ckptkit.families import FAMILIES
    from ckptkit.convert.models import TRANSFORMERS_CONFIGS

    for fam in FAMILIES:  # model classes (not pipelines: no command builds a pipeline)
        for comp in fam.components:
            for module in (diffusers, transformers):
                if hasattr(module, comp.diffusers_class):
                    getattr(module, comp.diffusers_class)
                    break
    for name in TRANSFORMERS_CONFIGS.values():
        getattr(transformers, name)
    for name in ("SCMScheduler", "FlowMatchEulerDiscreteScheduler", "EulerDiscreteScheduler", "DDIMScheduler"):
        getattr(diffusers, name, None)

    from tests.formats import corpus  # noqa: F401

    assert_single_threaded("after imports")
    return {"import_s": round(time.perf_counter() - t0, 2)}


def _fork_call(fn: Callable[[], None], timeout: float, err_path: Path) -> int:
    """Run fn() in a forked child (stdin/stdout to /dev/null, stderr to err_path); its exit status."""
    assert_single_threaded("before a helper fork")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1):
                os.dup2(null, fd)
            err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(err, 2)
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", line_buffering=True)
            fn()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -9
        time.sleep(0.02)


def warm_fixtures_in_child(root: Path) -> float:
    """corpus.warm_fixtures() (torch compute, CLI runs) in a child; the trees come back as bytes."""
    import pickle

    from tests.formats import corpus

    t0 = time.perf_counter()
    dump = root / "fixtures.pickle"

    def work():
        trees = corpus.warm_fixtures()
        with open(dump, "wb") as fh:
            pickle.dump(trees, fh)

    if hasattr(os, "fork") and sys.platform.startswith("linux"):
        err = root / "fixtures.stderr"
        status = _fork_call(work, 300, err)
        if status != 0:
            tail = err.read_text("utf-8", "replace")[-3000:] if err.exists() else ""
            raise RuntimeError(f"building the fixture models failed in a child (status {status}):\n{tail}")
        with open(dump, "rb") as fh:
            corpus.load_fixtures(pickle.load(fh))  # our own file, written a moment ago
    else:
        corpus.warm_fixtures()
    return time.perf_counter() - t0


def _child_streams() -> None:
    """Fresh sys.std* on fds 0/1/2 (whatever the parent's sys.std* were), and logging handlers that
    wrote to the old ones pointed at the new ones."""
    import logging

    old = {id(s) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__) if s is not None}
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                if id(handler.stream) in old:
                    handler.setStream(sys.stderr)


def _child_signals() -> None:
    """A fresh Python's dispositions: SIGINT raises KeyboardInterrupt, SIGPIPE/SIGXFSZ ignored, the rest default."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _run_child(argv: list[str], cwd: str, out_path: str, err_path: str,
               target: Callable[[list[str]], None] | None = None) -> None:
    """In the forked child: never returns."""
    code = CHILD_CRASH
    try:
        os.setpgid(0, 0)
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        for fd in (null, out, err):
            os.close(fd)
        _child_signals()
        _child_streams()
        import faulthandler
        import resource

        faulthandler.enable(file=sys.stderr)
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_CAP, FILE_SIZE_CAP))
        os.chdir(cwd)
        sys.argv = ["ckptkit", *argv]
        try:
            if target is None:
                from ckptkit.cli import cli

                cli.main(args=argv, prog_name="ckptkit", standalone_mode=True)
            else:
                target(argv)
            code = 0
        except SystemExit as exc:  # what the interpreter would make of it
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code & 0xFF
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        threading._shutdown()  # join non-daemon threads (pools), as interpreter exit does
    except BaseException:
        try:
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:
            pass
        code = CHILD_CRASH
    os._exit(code)


def _vm_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _fifo_wait(pid: int) -> str | None:
    """The wchan of a thread of `pid` waiting on a FIFO/pipe, if any."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/wchan") as fh:
                wchan = fh.read().strip()
        except OSError:
            continue
        if wchan in FIFO_WCHANS:
            return wchan
    return None


@dataclass
class _Running:
    case: Case
    pid: int
    proc: object  # subprocess.Popen in subprocess mode
    argv: list[str]
    sandbox: Path
    out_path: Path
    err_path: Path
    before: dict
    hashes: dict
    start: float
    peak_kb: int = 0
    hung: str | None = None
    fifo_since: float | None = None


class Runner:
    def __init__(self, root: Path, jobs: int = 2, mode: str = "fork", keep: bool = False,
                 time_limit: float = TIME_LIMIT_S):
        self.root = Path(root)
        self.time_limit = time_limit
        self.jobs = jobs
        self.mode = mode
        self.keep = keep
        (self.root / "cases").mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)

    def run(self, cases: list[Case], progress: Callable[[Result], None] | None = None) -> list[Result]:
        pending = deque(cases)
        running: list[_Running] = []
        results: list[Result] = []
        n = 0
        while pending or running:
            while pending and len(running) < self.jobs:
                case = pending.popleft()
                started = self._start(case, n)
                n += 1
                if isinstance(started, Result):
                    results.append(started)
                else:
                    running.append(started)
            busy = False
            for job in list(running):
                result = self._poll(job)
                if result is not None:
                    running.remove(job)
                    results.append(result)
                    busy = True
                    if progress:
                        progress(result)
            if not busy:
                time.sleep(0.005)
        order = {case.id: i for i, case in enumerate(cases)}
        return sorted(results, key=lambda r: order[r.id])  # case order, not completion order

    def _start(self, case: Case, n: int):
        sandbox = self.root / "cases" / f"{n:05d}"
        inputs = sandbox / "in"
        inputs.mkdir(parents=True)
        try:
            path = case.build(inputs)
        except Exception as exc:
            return Result(case.id, case.entry, case.command, case.kind, [], None, None, "", "", 0.0, None,
                          [f"harness: building the input failed: {type(exc).__name__}: {exc}"], str(sandbox))
        argv = [str(a) for a in case.args(str(path), str(sandbox / "out"))]
        before = snapshot(sandbox)
        hashes = content_hashes(sandbox, before)
        out_path, err_path = self.root / "logs" / f"{n:05d}.out", self.root / "logs" / f"{n:05d}.err"
        if self.mode == "fork":
            assert_single_threaded(f"before forking for {case.id}")
            sys.stdout.flush()
            sys.stderr.flush()
            start = time.monotonic()
            pid = os.fork()
            if pid == 0:
                _run_child(argv, str(sandbox), str(out_path), str(err_path), case.target)
            proc = None
        else:
            import subprocess

            start = time.monotonic()
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                proc = subprocess.Popen([sys.executable, "-m", "ckptkit.cli", *argv], cwd=sandbox,
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        start_new_session=hasattr(os, "setsid"))
            pid = proc.pid
        return _Running(case, pid, proc, argv, sandbox, out_path, err_path, before, hashes, start)

    def _kill(self, job: _Running) -> None:
        try:
            if hasattr(os, "killpg"):
                os.killpg(job.pid, signal.SIGKILL)
            else:
                job.proc.kill()
        except (ProcessLookupError, PermissionError):
            pass

    def _poll(self, job: _Running) -> Result | None:
        now = time.monotonic()
        status = rusage = None
        if hasattr(os, "wait4"):
            pid, status, rusage = os.wait4(job.pid, os.WNOHANG)
            if pid == 0:
                status = None
            elif job.proc is not None:
                job.proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        else:
            code = job.proc.poll()
            status = None if code is None else code
        if status is None:
            rss = _vm_rss_kb(job.pid)
            if rss:
                job.peak_kb = max(job.peak_kb, rss)
            if rss and rss > RSS_KILL_KB:
                job.hung = f"RSS above {RSS_KILL_KB >> 20} GiB; killed"
                self._kill(job)
            elif now - job.start > (job.case.time_limit or self.time_limit):
                job.hung = f"still running after {job.case.time_limit or self.time_limit:g} s; killed"
                self._kill(job)
            else:
                wchan = _fifo_wait(job.pid)
                if wchan is None:
                    job.fifo_since = None
                elif job.fifo_since is None:
                    job.fifo_since = now
                elif now - job.fifo_since > FIFO_BLOCK_S and not job.hung:
                    job.hung = (f"blocked in {wchan} (a FIFO nobody writes) for {FIFO_BLOCK_S} s after "
                                f"{now - job.start:.1f} s; killed (it would wait forever)")
                    self._kill(job)
            return None
        wall = now - job.start
        if isinstance(status, int) and hasattr(os, "wait4"):
            exit_code = os.waitstatus_to_exitcode(status)
        else:
            exit_code = status
        sig = -exit_code if exit_code is not None and exit_code < 0 else None
        maxrss = rusage.ru_maxrss if rusage is not None else (job.peak_kb or None)
        if rusage is not None and sys.platform == "darwin":
            maxrss //= 1024  # bytes there
        stderr = job.err_path.read_bytes()[:20000].decode("utf-8", "replace")
        out_bytes = job.out_path.read_bytes()
        stdout_tail = out_bytes[-2000:].decode("utf-8", "replace")
        after = snapshot(job.sandbox)
        hashes_after = content_hashes(job.sandbox, {k: v for k, v in after.items() if k in job.hashes})
        problems = compare(job.before, after, job.hashes, hashes_after, allow_out=0 in job.case.exits)
        r = Result(job.case.id, job.case.entry, job.case.command, job.case.kind, job.argv,
                   None if sig else exit_code, sig, stderr, stdout_tail, round(wall, 3), maxrss, [], str(job.sandbox))
        r.failures = judge(job.case, r, problems, job.hung, job.case.time_limit or self.time_limit)
        if not self.keep:
            _remove(job.sandbox)
            job.out_path.unlink(missing_ok=True)
            job.err_path.unlink(missing_ok=True)
        return r


def _remove(path: Path) -> None:
    def fix(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o600)
        except OSError:
            pass
        func(p)

    shutil.rmtree(path, onerror=fix)


def baseline_rss_kb(root: Path) -> int | None:
    """ru_maxrss of a child that does nothing: what every child starts with (the parent's pages)."""
    if not hasattr(os, "fork") or not sys.platform.startswith("linux"):
        return None
    assert_single_threaded("before the baseline fork")
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    _, _, rusage = os.wait4(pid, 0)
    return rusage.ru_maxrss


# --- reporting -----------------------------------------------------------------------------------

def failure_kind(failure: str) -> str:
    return failure.split(":", 1)[0]


def summary(results: list[Result], top: int = 4) -> str:
    """A table of failures by (command, kind), a few entries each."""
    groups: dict[tuple[str, str], list[str]] = {}
    for r in results:
        for f in r.failures:
            groups.setdefault((r.command, failure_kind(f)), []).append(r.entry)
    lines = [f"{'command':<18} {'failure':<18} {'count':>5}  examples"]
    for (command, kind), entries in sorted(groups.items(), key=lambda kv: (kv[0][0], -len(kv[1]))):
        lines.append(f"{command:<18} {kind:<18} {len(entries):>5}  {', '.join(entries[:top])}")
    return "\n".join(lines)


def describe(r: Result) -> str:
    """One failing case, compactly: entry, command, exit code, failures, stderr lines."""
    lines = r.stderr.splitlines()
    shown = lines[-3:] if len(lines) > 3 else lines
    head = f"- {r.entry} | {r.command} -> exit {r.exit if r.signal is None else f'signal {r.signal}'} " \
           f"({r.wall_s:.1f} s, {(r.maxrss_kb or 0) / 1024:.0f} MiB): {'; '.join(r.failures)}"
    body = [f"    stderr[{len(lines)} lines]{' (last 3)' if len(lines) > 3 else ''}: {ln[:200]!r}" for ln in shown]
    return "\n".join([head, *body])


# --- the harness checks itself -------------------------------------------------------------------
# Stand-in commands that misbehave in each way the matrix must catch (run in place of the CLI in the
# forked child); `--self-test` runs them and reports which failure kinds each produced.

def _st_input(d: Path) -> Path:
    (d / "input.bin").write_bytes(b"input")
    os.mkfifo(d / "pipe")
    return d / "input.bin"


def _refuse(message: str = "refused") -> None:
    print(f"ckptkit: error: {message}", file=sys.stderr)
    sys.exit(2)


def _st_ok(argv):
    print("fine")


def _st_refuse(argv):
    _refuse()


def _st_two_lines(argv):
    print("SomeWarning: from a library", file=sys.stderr)
    _refuse()


def _st_traceback(argv):
    raise ValueError("boom")


def _st_fifo(argv):
    with open(Path(argv[0]).parent / "pipe", "rb") as fh:
        fh.read()


def _st_sleep(argv):
    time.sleep(60)


def _st_thread(argv):
    threading.Thread(target=time.sleep, args=(60,)).start()  # not a daemon: exit waits for it
    _refuse()


def _st_litter(argv):
    os.mkdir("out")
    _refuse()


def _st_transient(argv):
    os.mkdir("out")
    os.rmdir("out")
    _refuse()


def _st_modify(argv):
    with open(argv[0], "ab") as fh:
        fh.write(b"!")
    _refuse()


def _st_memory(argv):
    block = b"\1" * (1200 << 20)  # touched pages: 1.2 GB of RSS
    _refuse(str(len(block)))


def _st_segfault(argv):
    os.kill(os.getpid(), signal.SIGSEGV)


def _st_logging(argv):
    import logging

    logging.getLogger("some.library").warning("a library logs on stderr")
    _refuse()


# name -> (stand-in, allowed exits, failure kinds it must produce (exactly, when empty))
SELF_TEST: dict[str, tuple[Callable[[list[str]], None], frozenset[int], frozenset[str]]] = {
    "ok": (_st_ok, frozenset({0}), frozenset()),
    "refuse": (_st_refuse, REFUSED, frozenset()),
    "two stderr lines": (_st_two_lines, REFUSED, frozenset({"stderr lines", "stderr prefix"})),
    "logging line": (_st_logging, REFUSED, frozenset({"stderr lines", "stderr prefix"})),
    "traceback": (_st_traceback, REFUSED, frozenset({"traceback", "exit code"})),
    "blocked on a FIFO": (_st_fifo, REFUSED, frozenset({"hang"})),
    "sleeps": (_st_sleep, REFUSED, frozenset({"hang"})),
    "non-daemon thread": (_st_thread, REFUSED, frozenset({"hang"})),
    "leaves OUT": (_st_litter, REFUSED, frozenset({"files left behind"})),
    "creates and removes OUT": (_st_transient, REFUSED, frozenset({"transient files"})),
    "modifies its input": (_st_modify, REFUSED, frozenset({"input modified"})),
    "uses 1.2 GB": (_st_memory, REFUSED, frozenset({"memory"})),
    "segfaults": (_st_segfault, REFUSED, frozenset({"signal"})),
}
SELF_TEST_TIME_LIMIT_S = 2.0
# Touching 1.2 GB takes more than 2 s on a loaded 2-core CI runner: this stand-in must finish, not hang.
SELF_TEST_SLOW = {"uses 1.2 GB": 60.0}


def self_test(root: Path, jobs: int = 2) -> dict:
    """Run the stand-ins; returns {name: {"kinds": [...], "ok": bool, "wall_s": ...}}."""
    cases = [Case(f"self-test | {name}", name, "self-test", _st_input, lambda p, out: [p, out], exits,
                  kind="self-test", target=target, time_limit=SELF_TEST_SLOW.get(name)) for name, (target, exits, _) in SELF_TEST.items()]
    results = Runner(root, jobs=jobs, time_limit=SELF_TEST_TIME_LIMIT_S).run(cases)
    report = {}
    for r in results:
        kinds = {failure_kind(f) for f in r.failures}
        want = SELF_TEST[r.entry][2]
        ok = kinds == set() if not want else want <= kinds
        report[r.entry] = {"ok": ok, "kinds": sorted(kinds), "want": sorted(want), "failures": r.failures,
                           "wall_s": r.wall_s, "stderr": r.stderr[-500:]}
    return report



def run_matrix(root: Path, commands: list[str] | None = None, entries: list[str] | None = None, jobs: int = 2,
               mode: str | None = None, keep: bool = False, verbose: bool = False, extras: bool = True) -> dict:
    mode = mode or ("fork" if hasattr(os, "fork") and sys.platform.startswith("linux") else "subprocess")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings = prepare_parent() if mode == "fork" else {}
    timings["fixtures_s"] = round(warm_fixtures_in_child(root), 2)
    base = baseline_rss_kb(root) if mode == "fork" else None
    cases = build_cases(commands, entries, extras=extras)
    t1 = time.perf_counter()

    def show(r: Result) -> None:
        if verbose:
            print(("ok   " if r.ok else "FAIL ") + f"{r.wall_s:5.2f}s {r.id}", flush=True)

    results = Runner(root / "run", jobs=jobs, mode=mode, keep=keep).run(cases, show)
    timings["matrix_s"] = round(time.perf_counter() - t1, 1)
    timings["total_s"] = round(time.perf_counter() - t0, 1)
    walls = sorted(r.wall_s for r in results)
    return {
        "mode": mode, "jobs": jobs, "cases": len(results), "timings": timings,
        "baseline_rss_kb": base, "max_wall_s": walls[-1] if walls else 0,
        "mean_wall_s": round(sum(walls) / len(walls), 3) if walls else 0,
        "failed": sum(not r.ok for r in results),
        "results": [asdict(r) for r in results],
    }


def results_of(data: dict) -> list[Result]:
    return [Result(**r) for r in data["results"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.formats.cli_harness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", help=f"comma-separated forms (default all): {', '.join(COMMANDS)}")
    parser.add_argument("--entries", help="comma-separated corpus entries (default all; no extra cases then)")
    parser.add_argument("--no-extras", action="store_true", help="Leave out the wrong-kind-of-input cases.")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--mode", choices=["fork", "subprocess"])
    parser.add_argument("--root", help="Work folder (default: a temporary one, removed afterwards).")
    parser.add_argument("--json", help="Write every result here.")
    parser.add_argument("--keep", action="store_true", help="Keep sandboxes and logs.")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--self-test", action="store_true",
                        help="Check the runner itself with stand-in commands that misbehave in every way it must catch.")
    args = parser.parse_args(argv)
    commands = [c.strip() for c in args.commands.split(",")] if args.commands else None
    entries = [e.strip() for e in args.entries.split(",")] if args.entries else None
    tmp = None
    root = Path(args.root) if args.root else Path(tmp := tempfile.mkdtemp(prefix="ckptkit-harness-"))
    _setup_environment(root)
    if args.self_test:
        try:
            report = self_test(root / "self-test", args.jobs)
        finally:
            if tmp and not args.keep:
                _remove(Path(tmp))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        for name, info in report.items():
            print(f"{'ok  ' if info['ok'] else 'FAIL'} {name:<24} {info['wall_s']:5.2f} s  {info['kinds']}")
        return 0 if all(info["ok"] for info in report.values()) else 1
    try:
        data = run_matrix(root, commands, entries, args.jobs, args.mode, args.keep, args.verbose,
                          extras=not args.no_extras)
    finally:
        if tmp and not args.keep:
            _remove(Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))
    results = results_of(data)
    counts = Counter(r.command for r in results if not r.ok)
    print(f"{data['cases']} cases, {data['failed']} failing, mode {data['mode']}, jobs {data['jobs']}; "
          f"timings {data['timings']}; baseline child RSS {(data['baseline_rss_kb'] or 0) / 1024:.0f} MiB; "
          f"slowest case {data['max_wall_s']:.2f} s, mean {data['mean_wall_s']:.3f} s")
    print("failing cases per command:", dict(counts))
    print(summary(results))
    return 1 if data["failed"] else 0


def _setup_environment(root: Path) -> None:
    """Before torch or huggingface libraries are imported: no network, private caches (outside the
    sandboxes), one OpenMP thread per child (jobs run side by side on a small machine)."""
    cache = Path(root) / "env-cache"
    os.environ.setdefault("CKPTKIT_CACHE_DIR", str(cache / "ckptkit"))
    os.environ.setdefault("HF_HOME", str(cache / "hf"))
    os.environ.setdefault("XDG_CACHE_HOME", str(cache / "xdg"))
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


if __name__ == "__main__":
    sys.exit(main())
