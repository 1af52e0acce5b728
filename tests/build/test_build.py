"""`ckptkit build RECIPE.toml`: a 2-source x 2-variant recipe of synthetic bundles in real layouts,
split once, quantized, verified; re-runs skip what is current and redo what is broken,
interrupted or changed; a variant that fails verify exits 1 and leaves the others."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.cli import ok, refused, run

RECIPE = """
out = "dist"
license = "openrail++"
sources = ["sd1.safetensors"]

[[source]]
path = "tuned.safetensors"
name = "second"

[[variant]]
name = "Q8_0"
type = "q8_0"

[[variant]]
name = "Q4_0"
type = "q4_0"
components = {{ clip_l = "q8_0" }}
{extra}
[verify]
onestep = {onestep}
resolution = 32
"""


def write_recipe(folder: Path, extra: str = "", text: str | None = None, onestep: bool = False) -> Path:
    """The recipe; the 1-step check only where a test looks at it (it is most of a variant's time)."""
    path = folder / "recipe.toml"
    path.write_text(text if text is not None else RECIPE.format(extra=extra, onestep=str(onestep).lower()))
    return path


@contextlib.contextmanager
def killing_a_running_variant(dist: Path):
    """While the block runs, SIGKILL the first variant job seen in progress (its folder claimed by a
    process, no build record yet); yields the list of (folder, pid) killed."""
    from ckptkit.build.plan import BUILD_RECORD, LOCK

    killed: list = []
    stop = threading.Event()

    def watch():
        while not stop.is_set() and not killed:
            for lock in dist.glob(f"*/*/{LOCK}"):
                if lock.parent.name == "split" or (lock.parent / BUILD_RECORD).exists():
                    continue
                try:
                    pid = int(lock.read_text().strip() or 0)
                except (OSError, ValueError):
                    continue
                if pid and pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    killed.append((lock.parent, pid))
                    return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield killed
    finally:
        stop.set()
        watcher.join()


def set_bytes(root: Path) -> dict[str, bytes]:
    """Every component file and manifest under `root` (not reports, records or locks), by path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and (p.suffix in (".gguf", ".safetensors") or p.name == "ckptkit.json")}


@pytest.fixture(scope="module")
def built(sources):
    """The recipe built once (sequentially, with the 1-step check): (folder, CLI result)."""
    recipe = write_recipe(sources, onestep=True)
    result = run("build", recipe, "-q")
    return sources, result


def _copy_sources(sources: Path, to: Path) -> Path:
    to.mkdir(parents=True, exist_ok=True)
    for name in ("sd1.safetensors", "tuned.safetensors"):
        os.link(sources / name, to / name)
    return to


def test_every_variant_of_every_source_is_built_and_verified(built):
    folder, result = built
    ok(result)
    dist = folder / "dist"
    assert sorted(p.name for p in dist.iterdir()) == ["sd1", "second"]
    for src in ("sd1", "second"):
        assert sorted(p.name for p in (dist / src).iterdir()) == ["Q4_0", "Q8_0", "split"]
        for variant in ("Q8_0", "Q4_0"):
            d = dist / src / variant
            record = json.loads((d / "build.json").read_text())
            assert record["verify"]["passed"] is True and record["verify"]["status"] == "done"
            report = json.loads((d / "verify" / "report.json").read_text())
            assert report["passed"] is True
            assert any(r["check"] == "onestep" and r["metric"] == "psnr_db" and r["passed"] for r in report["results"])
            assert (d / "verify" / "onestep.png").stat().st_size > 10_000
            manifest = json.loads((d / "ckptkit.json").read_text())
            assert manifest["source"]["path"] == "../split"  # where the set came from, wherever `out` is
            types = manifest["components"]["diffusion_model"]["dtypes"]
            assert ("Q8_0" if variant == "Q8_0" else "Q4_0") in types
            assert set(record["files"]) == {c["file"] for c in manifest["components"].values()}
        split = json.loads((dist / src / "split" / "ckptkit.json").read_text())
        assert split["source"]["path"] == ("sd1.safetensors" if src == "sd1" else "tuned.safetensors")
        assert list(split["source"]["files"]) == [split["source"]["path"]]
    assert "PASS" in result.stdout and "build: OK" in result.stdout
    # the recipe's per-component request: clip_l asked q8_0 in Q4_0 (ComfyUI-GGUF takes no CLIP GGUF: kept, said so)
    record = json.loads((dist / "sd1" / "Q4_0" / "build.json").read_text())
    assert any("clip_l" in n and "safetensors" in n for n in record["notes"])


def test_a_second_run_skips_what_is_current(built):
    folder, _ = built
    dist = folder / "dist"
    before = {p: p.stat().st_mtime_ns for p in dist.rglob("*") if p.is_file()}
    result = ok(run("build", folder / "recipe.toml", "--json"))
    data = json.loads(result.stdout)
    assert data["results"] == {} and data["exit_code"] == 0
    assert {v["status"] for v in data["plan"]["variants"]} == {"done"}
    assert {s["status"] for s in data["plan"]["splits"]} == {"unneeded"}  # no source read again
    after = {p: p.stat().st_mtime_ns for p in dist.rglob("*") if p.is_file()}
    assert before == after


def test_broken_interrupted_and_changed_sets_are_made_again(sources, tmp_path):
    folder = _copy_sources(sources, tmp_path / "work")
    recipe = write_recipe(folder)
    ok(run("build", recipe, "-q"))
    dist = folder / "dist"
    good = set_bytes(dist)
    # broken: a byte of a file flipped; interrupted: the build record missing; a changed recipe entry
    gguf = dist / "sd1" / "Q8_0" / "diffusion_model.gguf"
    data = bytearray(gguf.read_bytes())
    data[-7] ^= 0x10
    gguf.write_bytes(bytes(data))
    (dist / "second" / "Q4_0" / "build.json").unlink()
    plan = json.loads(ok(run("build", recipe, "--dry-run", "--json")).stdout)
    status = {v["key"]: (v["status"], v["reason"]) for v in plan["variants"]}
    assert status["sd1/Q8_0"][0] == "run" and "changed" in status["sd1/Q8_0"][1]
    assert status["second/Q4_0"][0] == "run" and "no build record" in status["second/Q4_0"][1]
    assert status["sd1/Q4_0"] == ("done", "current") and status["second/Q8_0"] == ("done", "current")
    assert all(v["planned_bytes"] > 0 and v["memory"] > 0 for v in plan["variants"] if v["status"] == "run")
    result = json.loads(ok(run("build", recipe, "--json")).stdout)
    assert sorted(result["results"]) == ["sd1/Q8_0", "second/Q4_0"]
    assert set_bytes(dist) == good  # made again, the same bytes
    # the recipe entry of one variant changes: that variant only
    recipe.write_text(RECIPE.format(extra="", onestep="false").replace('type = "q4_0"', 'type = "q5_0"'))
    plan = json.loads(ok(run("build", recipe, "--dry-run", "--json")).stdout)
    status = {v["key"]: (v["status"], v["reason"]) for v in plan["variants"]}
    assert status["sd1/Q4_0"] == ("run", "recipe changed") and status["second/Q4_0"] == ("run", "recipe changed")
    assert status["sd1/Q8_0"][0] == "done"


def test_a_failing_variant_exits_1_and_leaves_the_others(sources, tmp_path):
    folder = _copy_sources(sources, tmp_path / "work")
    strict = "[variant.thresholds.default]\nmax_rel_rms = 0.001\n"  # no 4-bit weight is that close
    recipe = write_recipe(folder, extra=strict)
    result = run("build", recipe)
    assert result.exit_code == 1, result.output
    dist = folder / "dist"
    for src in ("sd1", "second"):
        assert json.loads((dist / src / "Q8_0" / "build.json").read_text())["verify"]["passed"] is True
        failed = json.loads((dist / src / "Q4_0" / "build.json").read_text())["verify"]
        assert failed["passed"] is False and any("max_rel_rms" in f for f in failed["failed"])
    assert "FAIL" in result.stdout and "build: FAILED" in result.stdout
    # it is current (same inputs, same entry): not redone, still exit 1
    again = run("build", recipe, "--json")
    assert again.exit_code == 1 and json.loads(again.stdout)["results"] == {}


def test_dry_run_writes_nothing(sources, tmp_path):
    folder = _copy_sources(sources, tmp_path / "work")
    recipe = write_recipe(folder)
    result = ok(run("build", recipe, "--dry-run"))
    assert not (folder / "dist").exists()
    assert "sd1: split run (not built)" in result.stdout
    assert "sd1/Q8_0" in result.stdout and "planned peak" in result.stdout and "memory budget" in result.stdout


def test_parallel_jobs_give_the_same_bytes_within_the_memory_budget(built, sources, tmp_path):
    folder = _copy_sources(sources, tmp_path / "work")
    recipe = write_recipe(folder, onestep=True)  # the recipe `built` ran one job at a time
    result = run("build", recipe, "--jobs", "2")
    ok(result)
    assert set_bytes(folder / "dist") == set_bytes(built[0] / "dist")
    lines = result.stderr.splitlines()
    started = [i for i, ln in enumerate(lines) if ln.endswith(")") and ": started (" in ln]
    assert len(started) == 4
    assert started[1] < min(i for i, ln in enumerate(lines) if ln.startswith("[1/4]"))  # two at once
    # a budget that holds one job at a time (one source's two variants): each starts after the one before ended
    shutil.rmtree(folder / "dist")
    recipe = write_recipe(folder, text=RECIPE.format(extra="", onestep="false").split("[[source]]")[0]
                          + "[[variant]]" + RECIPE.split("[[variant]]", 1)[1].format(extra="", onestep="false"))
    plan = json.loads(ok(run("build", recipe, "--dry-run", "--json")).stdout)
    assert len(plan["variants"]) == 2
    one = max(v["memory"] for v in plan["variants"])
    result = ok(run("build", recipe, "--jobs", "2", "--memory-limit", str(one + 1)))
    lines = result.stderr.splitlines()
    order = [ln.split(":")[0].split("] ")[-1] for ln in lines if ": started (" in ln or ln.startswith("[")]
    assert len(order) == 4 and order[0] == order[1] and order[2] == order[3], lines


def test_a_folder_another_build_holds_is_refused(built):
    from ckptkit.build.jobs import claimed
    from ckptkit.errors import CkptError

    folder = built[0] / "dist" / "sd1" / "Q8_0"
    with claimed(folder):
        pid = os.fork()
        if pid == 0:  # another process trying to claim it
            try:
                with claimed(folder):
                    os._exit(0)
            except CkptError as exc:
                os._exit(3 if f"pid {os.getppid()}" in str(exc) else 4)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3


@pytest.mark.parametrize("text, message", [
    ('sources = ["sd1.safetensors"]\n', "field 'variant' is missing"),
    ('sources = ["sd1.safetensors"]\n[[variant]]\nname = "a/b"\ntype = "q8_0"\n', "is not a folder name"),
    ('sources = ["sd1.safetensors"]\n[[variant]]\nname = "A"\ntype = "q8_0"\n[[variant]]\nname = "A"\ntype = "q4_0"\n',
     "variant names repeat: A"),
    ('sources = ["nope.safetensors"]\n[[variant]]\nname = "A"\ntype = "q8_0"\n', "does not exist"),
    ('sources = ["sd1.safetensors"]\n[[variant]]\nname = "A"\n', "quantizes nothing"),
    ('sources = ["sd1.safetensors"]\n[[variant]]\nname = "A"\ntype = "q8_0"\nto = "onnx"\n', "to = 'onnx'"),
    ('sources = ["sd1.safetensors"]\nsurprise = 1\n[[variant]]\nname = "A"\ntype = "q8_0"\n', "unknown field"),
    ('sources = ["sd1.safetensors"]\n[[variant]]\nname = "A"\ntype = "q8_0"\n[verify.thresholds.Q9]\nmin_psnr = 1\n',
     "unknown section [Q9]"),
    ('sources = ["sd1.safetensors"]\n[[variant]]\nname = "A"\ntype = "q8_0"\n[verify]\ndtype = "int8"\n',
     "dtype = 'int8'"),
    ('sources = ["sd1.safetensors"]\nout = "."\n[[variant]]\nname = "A"\ntype = "q8_0"\n', "overlap"),
    ('sources = [\n', "build recipe"),
])
def test_a_bad_recipe_is_one_line(sources, tmp_path, text, message):
    folder = _copy_sources(sources, tmp_path / "work")
    recipe = write_recipe(folder, text=text)
    line = refused(run("build", recipe))
    assert message in line, line
    assert not (folder / "dist").exists()


def test_an_unknown_type_is_refused_before_anything_runs(sources, tmp_path):
    folder = _copy_sources(sources, tmp_path / "work")
    recipe = write_recipe(folder, text='sources = ["sd1.safetensors"]\n[[variant]]\nname = "A"\ntype = "q9_9"\n')
    line = refused(run("build", recipe))
    assert "q9_9" in line
    assert not (folder / "dist" / "sd1" / "split").exists()


def test_a_folder_source_is_recorded_file_by_file(tmp_path):
    """A diffusers folder as a source: split and quantized like a bundle, recorded under the recipe's
    name for it, every file of it in the fingerprint; current on a second run, not after a file changed."""
    from ckptkit.fixtures.factory import write_diffusers

    write_diffusers("sd1", tmp_path / "sd1-diffusers")
    recipe = write_recipe(tmp_path, text='out = "dist"\nsources = ["sd1-diffusers"]\n'
                                         '[[variant]]\nname = "Q8_0"\ntype = "q8_0"\n[verify]\nonestep = false\n')
    ok(run("build", recipe, "-q"))
    split = json.loads((tmp_path / "dist" / "sd1-diffusers" / "split" / "ckptkit.json").read_text())
    assert split["source"]["path"] == "sd1-diffusers"
    record = json.loads((tmp_path / "dist" / "sd1-diffusers" / "Q8_0" / "build.json").read_text())
    assert {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"} <= set(
        record["fingerprint"]["inputs"])
    again = json.loads(ok(run("build", recipe, "--json")).stdout)
    assert again["results"] == {} and again["plan"]["variants"][0]["status"] == "done"
    (tmp_path / "sd1-diffusers" / "unet" / "config.json").write_text(
        (tmp_path / "sd1-diffusers" / "unet" / "config.json").read_text() + " ")  # a source file changed
    plan = json.loads(ok(run("build", recipe, "--dry-run", "--json")).stdout)
    assert plan["variants"][0]["status"] == "run" and "inputs changed" in plan["variants"][0]["reason"]


def test_a_killed_worker_fails_its_own_job_only(sources, tmp_path):
    """--jobs 2: the process of one variant is SIGKILLed midway; that variant is an error (exit 2),
    the others are made and verified, and the next build makes the killed one (no build record)."""
    folder = _copy_sources(sources, tmp_path / "work")
    recipe = write_recipe(folder)
    with killing_a_running_variant(folder / "dist") as killed:
        result = run("build", recipe, "--jobs", "2", "--json")
    assert killed and result.exit_code == 2, result.output
    data = json.loads(result.stdout)
    victim = f"{killed[0][0].parent.name}/{killed[0][0].name}"
    assert "process ended without a result" in data["results"][victim]["error"]
    others = {k: r for k, r in data["results"].items() if k != victim}
    assert len(others) == 3 and all(r["verify"]["passed"] for r in others.values())
    again = json.loads(ok(run("build", recipe, "--json")).stdout)
    assert list(again["results"]) == [victim] and again["results"][victim]["verify"]["passed"]
