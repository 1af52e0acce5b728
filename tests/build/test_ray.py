"""`ckptkit build --ray`: the same recipe as Ray tasks on a local Ray instance (started here, as CI
does: `ray.init(num_cpus=2)`), the same bytes as the local run; a variant task whose worker is
killed midway is retried by Ray and the set is complete and verified."""

from __future__ import annotations

import json

import pytest

from tests.build.test_build import _copy_sources, killing_a_running_variant, set_bytes, write_recipe
from tests.cli import ok, run

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[test]' installs it")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_gives_the_local_bytes_and_retries_a_killed_task(sources, tmp_path, local_ray):
    from ckptkit.build.recipe import load_recipe
    from ckptkit.build.run import run_build

    here = _copy_sources(sources, tmp_path / "here")
    ok(run("build", write_recipe(here), "-q"))
    there = _copy_sources(sources, tmp_path / "ray")
    recipe = load_recipe(write_recipe(there))
    with killing_a_running_variant(there / "dist") as killed:
        result = run_build(recipe, ray="")
    assert killed, "no variant job was seen running"
    assert result.exit_code == 0, result.results
    assert set(result.results) == {"sd1/Q8_0", "sd1/Q4_0", "second/Q8_0", "second/Q4_0"}
    assert all(r["verify"]["passed"] for r in result.results.values())
    folder, pid = killed[0]
    record = json.loads((folder / "build.json").read_text())
    assert record["verify"]["passed"] and record["worker"]["pid"] != pid  # made again by another worker
    assert set_bytes(there / "dist") == set_bytes(here / "dist")
    # and current afterwards: a second Ray build runs nothing
    assert run_build(load_recipe(there / "recipe.toml"), ray="").results == {}


def test_ray_missing_is_one_line(sources, tmp_path):
    import subprocess
    import sys

    folder = _copy_sources(sources, tmp_path / "work")
    recipe = write_recipe(folder)
    code = ("import sys; sys.modules['ray'] = None; from ckptkit.cli import main; "
            "sys.argv = ['ckptkit'] + sys.argv[1:]; main()")
    proc = subprocess.run([sys.executable, "-c", code, "build", str(recipe), "--ray"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("ckptkit: error: --ray needs Ray") and "pip install 'ckptkit[ray]'" in lines[-1]
    assert "Traceback" not in proc.stderr

