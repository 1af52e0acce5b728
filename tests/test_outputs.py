"""Outputs: never outside -o, never over an input, never half-written under a final name, and
leftovers of killed runs cleaned up (ckptkit/outputs.py, formats/atomic.py)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckptkit.cli import cli
from ckptkit.fixtures.factory import write_bundle

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def tree(root: Path) -> dict[str, str]:
    """Every path under root with its content hash (directories as 'dir')."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1 and lines[0].startswith("ckptkit: error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def sd1(tmp_path_factory) -> Path:
    return write_bundle("sd1", tmp_path_factory.mktemp("outputs") / "sd1.safetensors")


@pytest.fixture()
def work(tmp_path, sd1) -> Path:
    """A sandbox holding a copy of the bundle and its comfy split."""
    bundle = tmp_path / "in" / "sd1.safetensors"
    bundle.parent.mkdir()
    bundle.write_bytes(sd1.read_bytes())
    assert run("split", bundle, "-o", tmp_path / "set").exit_code == 0
    return tmp_path


# --- names never leave -o ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../escaped", "/tmp/abs", "a/b", ".hidden", "x\ny", ""])
def test_prefix_names_are_plain_file_names(work, name):
    before = tree(work)
    result = run("split", work / "in" / "sd1.safetensors", "-o", work / "out", "--layout", "original",
                 "--prefix", f"{name}=model.diffusion_model.")
    line = one_error_line(result)
    assert ("not a plain file name" if name else "takes NAME=PREFIX") in line
    assert tree(work) == before


# --- never over an input -------------------------------------------------------------------------

def _cases(w: Path):
    bundle, comp_set = w / "in" / "sd1.safetensors", w / "set"
    return {
        "convert Y -o Y": ["convert", comp_set / "vae.safetensors", "-o", comp_set / "vae.safetensors",
                           "--layout", "original", "--force"],
        "quantize a.gguf -o a.gguf": ["quantize", w / "q.gguf", "-o", w / "q.gguf", "--type", "q8_0", "--force"],
        "merge SET -o SET/vae": ["merge", comp_set, "-o", comp_set / "vae.safetensors", "--force"],
        "merge SET -o SET/new": ["merge", comp_set, "-o", comp_set / "new.safetensors", "--force"],
        "quantize SET -o SET": ["quantize", comp_set, "-o", comp_set, "--type", "q8_0", "--force"],
        "split B -o folder of B": ["split", bundle, "-o", bundle.parent, "--force"],
        "split B -o B": ["split", bundle, "-o", bundle, "--force"],
        "split B -o parent of B": ["split", bundle, "-o", w, "--force"],
        "merge -o /dev/null": ["merge", comp_set, "-o", "/dev/null", "--force"],
        "convert -o /dev/null": ["convert", comp_set / "vae.safetensors", "-o", "/dev/null", "--layout", "original",
                                 "--force"],
        "sample -o its model": ["sample", bundle, "-o", bundle, "--force"],
        "verify --report into input": ["verify", comp_set, "--report", comp_set / "report", "--no-onestep"],
    }


@pytest.mark.parametrize("case", sorted(_cases(Path("/x"))))
def test_output_that_is_or_holds_an_input_is_refused(work, case):
    assert run("quantize", work / "set" / "diffusion_model.safetensors", "-o", work / "q.gguf",
               "--type", "q8_0").exit_code == 0
    before = tree(work)
    null_before = os.stat("/dev/null")
    line = one_error_line(run(*_cases(work)[case]))
    assert any(word in line for word in ("is the input", "contains the input", "lies inside the input",
                                         "not a regular file")), line
    assert tree(work) == before
    after = os.stat("/dev/null")
    assert (after.st_mode, after.st_rdev) == (null_before.st_mode, null_before.st_rdev)


def test_a_hardlink_of_the_input_is_the_input(work):
    src = work / "set" / "vae.safetensors"
    link = work / "link.safetensors"
    os.link(src, link)
    before = tree(work)
    line = one_error_line(run("convert", src, "-o", link, "--layout", "original", "--force"))
    assert "is the input" in line
    assert tree(work) == before


# --- failures leave nothing under a final name ---------------------------------------------------

def _fail_on(monkeypatch, name: str):
    """Make the atomic writer fail with 'No space left on device' when it writes `name`."""
    import errno

    from ckptkit.formats import atomic

    real = atomic._temp_beside

    def failing(path):
        if Path(path).name == name:
            raise atomic._write_error(Path(path), OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        return real(path)

    monkeypatch.setattr(atomic, "_temp_beside", failing)


@pytest.mark.parametrize("command, failing", [
    (["convert", "{set}/diffusion_model.safetensors", "-o", "{out}", "--layout", "diffusers"], "config.json"),
    (["split", "{bundle}", "-o", "{out}", "--layout", "diffusers"], "model_index.json"),
    (["split", "{bundle}", "-o", "{out}"], "ckptkit.json"),
])
def test_a_full_disk_leaves_no_final_name_and_says_which_file(work, monkeypatch, command, failing):
    _fail_on(monkeypatch, failing)
    args = [a.format(set=work / "set", bundle=work / "in" / "sd1.safetensors", out=work / "out") for a in command]
    before = tree(work)
    line = one_error_line(run(*args))
    assert failing in line and "No space left on device" in line
    assert tree(work) == before  # not even the output folder the run created


def test_a_full_disk_in_a_subprocess_names_the_path(work):
    """A real write error (RLIMIT_FSIZE: EFBIG) from the CLI process, not a monkeypatch."""
    out = work / "q.gguf"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    proc = subprocess.run([sys.executable, "-m", "ckptkit.cli", "quantize", str(work / "set" / "diffusion_model.safetensors"),
                           "-o", str(out), "--type", "q8_0"], capture_output=True, text=True, preexec_fn=limit,
                          timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and str(out) in lines[0] and "too large" in lines[0].lower(), lines
    assert not out.exists() and not list(work.glob(".q.gguf*"))


# --- SIGTERM and SIGKILL --------------------------------------------------------------------------

SLOW_SPLIT = textwrap.dedent("""
    import sys, time
    import ckptkit.pipeline as pipeline
    real = pipeline.execute
    def slow(*args, **kwargs):
        written = real(*args, **kwargs)
        print("READY", flush=True)
        time.sleep(60)
        return written
    pipeline.execute = slow
    from ckptkit.cli import main
    sys.argv = ["ckptkit", "split", sys.argv[1], "-o", sys.argv[2]]
    main()
""")


def _start_slow_split(work: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SPLIT, str(work / "in" / "sd1.safetensors"), str(work / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.strip() == "READY":
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"the split never got going: {proc.stderr.read()}")


def test_sigterm_cleans_up_like_ctrl_c(work):
    before = tree(work)
    proc = _start_slow_split(work)
    assert any(p.name.startswith(".ckptkit-staging-") for p in (work / "out").iterdir())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == ["ckptkit: terminated"]
    assert tree(work) == before  # staging folder and the created output folder are gone


def test_sigkill_leftovers_are_removed_by_the_next_run(work):
    proc = _start_slow_split(work)
    proc.kill()
    proc.communicate(timeout=60)
    stale = [p for p in (work / "out").iterdir() if p.name.startswith(".ckptkit-staging-")]
    assert len(stale) == 1 and any(stale[0].rglob("*.safetensors"))
    result = run("split", work / "in" / "sd1.safetensors", "-o", work / "out")
    assert result.exit_code == 0, result.output
    assert f"removed stale staging folder {stale[0]}" in result.stderr
    assert not stale[0].exists()
    assert sorted(p.name for p in (work / "out").iterdir()) == sorted(p.name for p in (work / "set").iterdir())


def test_stale_partial_files_go_and_live_ones_stay(work):
    out = work / "q.gguf"
    stale = work / f".q.gguf.ckptkit-{2**22 + 12345}.abcd.partial"
    stale.write_bytes(b"x" * 1000)
    live = work / f".q.gguf.ckptkit-{os.getpid()}.efgh.partial"
    live.write_bytes(b"y" * 10)
    other = work / ".other.gguf.ckptkit-1.ijkl.partial"  # another output's leftover: not ours to judge
    other.write_bytes(b"z")
    with open(live, "rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # a write in progress
        result = run("quantize", work / "set" / "diffusion_model.safetensors", "-o", out, "--type", "q8_0")
    assert result.exit_code == 0, result.output
    assert f"removed stale partial file {stale}" in result.stderr
    assert not stale.exists() and live.exists() and other.exists() and out.exists()


def test_a_live_staging_folder_is_left_alone(work):
    from ckptkit.outputs import remove_stale, staging

    (work / "out").mkdir()
    with staging(work / "out") as stage:
        assert remove_stale(work / "out") == []
        assert stage.exists()
    assert not stage.exists()
