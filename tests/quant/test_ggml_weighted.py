"""ggml's weighted quantizers (the path stable-diffusion.cpp's convert takes: it always passes an
importance matrix, all ones without --imatrix), byte-exact with ggml.

Always: against the vectors in tests/quant/data (made by ggml 0.9.8's own ggml_quantize_chunk,
`python -m tests.quant.ggml_reference vectors`). With a C toolchain and the package registry: against
a live build of that ggml too, on fresh random rows; without them that test skips, saying why."""

from __future__ import annotations

import numpy as np
import pytest

from ckptkit.quant import ggml
from tests.quant import ggml_reference as ref

VECTORS = np.load(ref.VECTORS)
CASES = sorted({k.split("/")[1] for k in VECTORS.files if k.startswith("x/")})


@pytest.mark.parametrize("type_name", list(ref.TYPES))
@pytest.mark.parametrize("case", CASES)
def test_weighted_bytes_equal_ggml(type_name, case):
    x, w = VECTORS[f"x/{case}"], VECTORS[f"w/{case}"]
    want = VECTORS[f"q/{type_name}/{case}"]
    assert np.array_equal(ggml.quantize(x, type_name, weights=w), want)
    if type_name != "Q8_0":  # the weighted search is another algorithm: it must not be the reference path
        assert not np.array_equal(ggml.quantize(x, type_name), want)


def test_weighted_is_at_least_as_accurate_on_average():
    x = VECTORS["x/1024_ones"]
    for name in ("Q4_K", "Q4_0", "Q3_K"):
        err = lambda q: np.linalg.norm(ggml.dequantize(q, name, x.shape) - x)  # noqa: E731
        assert err(ggml.quantize(x, name, weights=np.ones(x.shape[1], np.float32))) <= err(ggml.quantize(x, name)) * 1.01


def test_weights_are_checked():
    x = VECTORS["x/256_ones"]
    with pytest.raises(ValueError, match="weights: 3 values for rows of 256"):
        ggml.quantize(x, "Q4_K", weights=np.ones(3))
    with pytest.raises(ValueError, match="finite and non-negative"):
        ggml.quantize(x, "Q4_K", weights=np.full(256, np.nan))


@pytest.fixture(scope="module")
def live_ggml():
    try:
        return ref.quantize_chunk(ref.build())
    except Exception as exc:  # no compiler / cmake / registry here: say so
        pytest.skip(f"no live ggml 0.9.8 build ({ref.SDIST} sdist + cmake): {exc}")


@pytest.mark.parametrize("type_name", list(ref.TYPES))
def test_weighted_and_reference_bytes_equal_a_live_ggml(live_ggml, type_name):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((32, 512)) * rng.choice([1e-4, 1, 100], size=(32, 1))).astype(np.float32)
    for w in (np.ones(512, np.float32), (rng.random(512) * 10).astype(np.float32), None):
        want = live_ggml(type_name, x, w, ggml.row_bytes(type_name, 512))
        assert np.array_equal(ggml.quantize(x, type_name, weights=w, threads=3), want), (type_name, w is None)
