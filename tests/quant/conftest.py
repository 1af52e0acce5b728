"""Fixtures shared by the quantization tests."""

from __future__ import annotations

import pytest

from tests.quant import sdcpp_reference as ref


@pytest.fixture(scope="session")
def sd_convert():
    """stable-diffusion.cpp's own convert (`sd -M convert`), built once into the test cache; the
    tests that need it skip, saying why, where it cannot be built (no compiler, no registry)."""
    try:
        return ref.converter()
    except Exception as exc:
        pytest.skip(f"no stable-diffusion.cpp build ({ref.SDIST} sdist + cmake): {exc}")
