"""Fuzz the readers: any bytes in, a result or one CkptError line out.

For ANY input, open_checkpoint, detect, Checkpoint.load, inspect_checkpoint, verify.sets.open_set
and convert.manifest.read_manifest either succeed or raise `CkptError` with a one-line message:
never another exception, never a hang (over 5 s), never a large allocation (each case runs under
RLIMIT_DATA = current + 1 GiB), never a change to the input files. One test per input format; the
generators and mutators (and the harness that runs a case) are in tests/fuzz/mutators.py, shared with
bench/fuzz.py, which runs 100,000 cases per format.

Why Hypothesis as the engine:
  * pure Python and pip-installable (`hypothesis` in the `test` extra): no compiler, no libFuzzer
    build, runs wherever the test suite runs;
  * structure-aware generation is ordinary code: `st.randoms(use_true_random=False)` hands the
    mutators a Random whose every choice Hypothesis records, so the same mutators serve the seeded
    bench and these tests;
  * deterministic: `derandomize=True` and `database=None` make every run try the same examples, so a
    failure here is reproducible by rerunning the test;
  * shrinking: a failing case is reduced to fewer and simpler mutations and to the smallest seed
    input before it is reported (with a repro.py folder, path in the failure message).
atheris would need a libFuzzer-enabled Python/clang build, and its coverage guidance buys little
for parsers whose input structure we generate ourselves field by field.

Sized so the five tests take about a minute on a 2-core machine; CKPTKIT_FUZZ_SCALE=10 runs ten times
as many examples.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.fuzz.mutators import FORMATS, build_case, name_tables, run_case, save_reproducer, scratch_dir  # noqa: E402

SCALE = float(os.environ.get("CKPTKIT_FUZZ_SCALE", "1"))
# examples per format: about 12 s each on a 2-core machine
EXAMPLES = {"safetensors": 4000, "gguf": 4000, "pickle": 2000, "json": 2400, "detect": 2400}
REPRO = Path(tempfile.gettempdir()) / "ckptkit-fuzz-repro"


def fuzz_settings(fmt: str):
    return settings(max_examples=max(1, int(EXAMPLES[fmt] * SCALE)), deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                           HealthCheck.large_base_example])


@st.composite
def cases(draw, fmt: str):
    r = draw(st.randoms(use_true_random=False, note_method_calls=False))
    return build_case(fmt, r)


@pytest.fixture(scope="module")
def fuzz_dir():
    name_tables()  # read ../shared/manifests once, outside the examples
    path = scratch_dir("pytest")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def check(case, fuzz_dir: Path) -> None:
    note(f"{case.fmt} case: {case.note}; entry {case.entry}; {case.size()} bytes")
    out = run_case(case, fuzz_dir)
    if out.failed:
        key = out.key(case.fmt)
        folder = save_reproducer(case, out, REPRO / case.fmt / hashlib.sha1(key.encode()).hexdigest()[:10])
        pytest.fail(f"{out.summary()}\nreproducer: {folder}/repro.py\n{out.tb}", pytrace=False)
    assert out.status in ("ok", "refused")


@fuzz_settings("safetensors")
@given(case=cases("safetensors"))
def test_fuzz_safetensors(case, fuzz_dir):
    check(case, fuzz_dir)


@fuzz_settings("gguf")
@given(case=cases("gguf"))
def test_fuzz_gguf(case, fuzz_dir):
    check(case, fuzz_dir)


@fuzz_settings("pickle")
@given(case=cases("pickle"))
def test_fuzz_pickle(case, fuzz_dir):
    check(case, fuzz_dir)


@fuzz_settings("json")
@given(case=cases("json"))
def test_fuzz_json_side_files(case, fuzz_dir):
    check(case, fuzz_dir)


@fuzz_settings("detect")
@given(case=cases("detect"))
def test_fuzz_detect(case, fuzz_dir):
    check(case, fuzz_dir)


def test_generators_make_valid_inputs_too(fuzz_dir):
    """The fuzzers must not only produce garbage: a good share of cases is read without complaint."""
    import random

    for fmt, make in FORMATS.items():
        outcomes = [run_case(make(random.Random(f"valid:{fmt}:{i}")), fuzz_dir).status for i in range(40)]
        assert outcomes.count("ok") >= 2, f"{fmt}: {outcomes}"
