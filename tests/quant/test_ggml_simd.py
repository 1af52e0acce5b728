"""The SIMD quantizers of `_kernels` (Q8_0, Q5_0, F16) give the same bytes as the scalar reference port.

The scalar code is checked against ggml's own output in test_ggml_kernels.py; here every SIMD path
the CPU has is compared with it, byte for byte, on inputs built to hit the places where a vector
version could differ: exact .5 ties after scaling (ggml's own SIMD code rounds those to even),
Q5_0 values that land on integer boundaries and blocks whose largest magnitude appears with both
signs, zero and subnormal blocks, scales that overflow fp16 or make 1/d infinite, NaN/inf, many
magnitudes, odd numbers of blocks and unaligned buffers. Q8_0 is also checked against an
independent numpy model of the reference (exact roundf in float64). On a CPU without the SIMD
paths only the scalar code runs, and the comparisons are trivially true.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from ckptkit.quant import ggml as gg
from ckptkit.quant.ggml import _kernels

LEVELS = list(_kernels.SIMD_AVAILABLE)  # "scalar" first, then what the CPU supports
SIMD = [lv for lv in LEVELS if lv != "scalar"]
SIMD_TYPES = ["Q8_0", "Q5_0", "F16"]
F32 = np.float32


@pytest.fixture(autouse=True)
def _restore_simd():
    old = _kernels.get_simd()
    yield
    _kernels.set_simd(old)


def quantize_with(level: str, x: np.ndarray, qtype: str) -> np.ndarray:
    old = _kernels.set_simd(level)
    try:
        return gg.quantize(x, qtype, threads=1)
    finally:
        _kernels.set_simd(old)


def assert_paths_agree(x: np.ndarray, qtype: str) -> np.ndarray:
    """Quantize x with every SIMD path and the scalar one; assert identical bytes; return them."""
    ref = quantize_with("scalar", x, qtype)
    ts = gg.type_size(qtype)
    for level in SIMD:
        got = quantize_with(level, x, qtype)
        bad = np.flatnonzero((got.reshape(-1, ts) != ref.reshape(-1, ts)).any(axis=1))
        if bad.size:
            b = int(bad[0])
            bs = gg.block_size(qtype)
            pytest.fail(f"{qtype} {level}: {bad.size} blocks differ from the scalar reference; first block {b}: "
                        f"input {x.reshape(-1)[b * bs:(b + 1) * bs].view(np.uint32).tolist()} "
                        f"scalar {ref.reshape(-1, ts)[b].tolist()} {level} {got.reshape(-1, ts)[b].tolist()}")
    return ref


def q8_0_model(x: np.ndarray) -> np.ndarray | None:
    """quantize_row_q8_0_ref in numpy: float32 ops as in C, roundf done exactly in float64 (|y| + 0.5
    is exact there), the fp16 scale by numpy's round-to-nearest-even. None where it does not apply
    (non-finite input, or 1/d overflowing to inf: the C code's float->int8 conversion decides)."""
    b = x.reshape(-1, 32).astype(F32)
    amax = np.abs(b).max(axis=1, keepdims=True)
    d = amax / F32(127)
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
    if not (np.isfinite(b).all() and np.isfinite(inv).all()):
        return None
    y = (b * inv).astype(np.float64)
    q = np.sign(y) * np.floor(np.abs(y) + 0.5)
    assert np.abs(q).max(initial=0) <= 127
    out = np.empty((b.shape[0], 34), np.uint8)
    with np.errstate(over="ignore"):  # d beyond fp16's range is inf, as in ggml
        out[:, :2] = d.astype(np.float16).view(np.uint8)
    out[:, 2:] = q.astype(np.int8).view(np.uint8)
    return out.reshape(x.shape[0], -1)


def check(x: np.ndarray, types: list[str] = SIMD_TYPES) -> None:
    """Every SIMD path agrees with the scalar code on x; Q8_0 also with the model where it applies."""
    x = np.ascontiguousarray(x, dtype=F32)
    for qtype in types:
        got = assert_paths_agree(x, qtype)
        model = q8_0_model(x) if qtype == "Q8_0" else None
        if model is not None:
            bad = np.flatnonzero((got.reshape(-1, 34) != model.reshape(-1, 34)).any(axis=1))
            assert not bad.size, f"Q8_0 differs from the numpy model in blocks {bad[:10]}"


def on_target(inv: np.float32, target: np.float32, bias: np.float32 = F32(0)) -> list[np.float32]:
    """x values (and their float neighbours) with float32(float32(x * inv) + bias) == target exactly."""
    x0 = F32((target - bias) / inv)
    for cand in (x0, np.nextafter(x0, F32(np.inf)), np.nextafter(x0, F32(-np.inf))):
        if F32(F32(cand * inv) + bias) == target:
            return [cand, np.nextafter(cand, F32(np.inf)), np.nextafter(cand, F32(-np.inf))]
    return []


def tie_blocks(rng: np.random.Generator, n_blocks: int, exact_scale: bool) -> np.ndarray:
    """Q8_0 blocks whose values scale to exactly k + 0.5 (and their float neighbours) under the block's id."""
    blocks = []
    while len(blocks) < n_blocks:
        if exact_scale:  # amax = 127 * 2**e: d = 2**e and id = 2**-e exactly
            amax = F32(127) * F32(2.0) ** F32(rng.integers(-60, 60))
        else:
            amax = F32(rng.uniform(0.5, 2.0) * 10.0 ** rng.uniform(-30, 30))
        inv = F32(1) / (amax / F32(127))
        vals = [amax if rng.random() < 0.5 else -amax]
        for k in rng.integers(-127, 127, size=40):
            vals += [v for v in on_target(inv, F32(k + 0.5)) if abs(v) <= amax]
        if len(vals) >= 32:
            block = np.array(vals[:32], F32)
            rng.shuffle(block)
            blocks.append(block)
    return np.stack(blocks)


def q5_0_boundary_blocks(rng: np.random.Generator, n_blocks: int) -> np.ndarray:
    """Q5_0 blocks whose x*id + 16.5 land exactly on integers (and next to them), the block's max
    first, so the reference's max is known; positions shuffled after it would change the max."""
    blocks = []
    while len(blocks) < n_blocks:
        m = F32(rng.choice([-1, 1]) * rng.uniform(0.5, 2.0) * 10.0 ** rng.uniform(-30, 30))
        inv = F32(1) / (m / F32(-16))
        vals = [m]
        for k in rng.integers(0, 33, size=40):
            vals += [v for v in on_target(inv, F32(k), F32(16.5)) if abs(v) < abs(m)]
        if len(vals) >= 32:
            blocks.append(np.array(vals[:32], F32))
    return np.stack(blocks)


# --- API -------------------------------------------------------------------------------------------


def test_simd_switch():
    assert LEVELS[0] == "scalar" and _kernels.get_simd() in LEVELS
    assert _kernels.set_simd("scalar") in LEVELS
    assert _kernels.get_simd() == "scalar"
    with pytest.raises(ValueError):
        _kernels.set_simd("sse9")
    with pytest.raises(TypeError):
        _kernels.set_simd(2)


def test_env_var_forces_scalar():
    code = "from ckptkit.quant.ggml import _kernels; print(_kernels.get_simd())"
    env = dict(os.environ, CKPTKIT_GGML_SCALAR="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "scalar"
    env["CKPTKIT_GGML_SCALAR"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == LEVELS[-1]


# --- rounding and boundaries ------------------------------------------------------------------------


@pytest.mark.parametrize("exact_scale", [True, False])
def test_q8_0_ties_round_half_away_from_zero(exact_scale):
    x = tie_blocks(np.random.default_rng(11 + exact_scale), 256, exact_scale).reshape(8, -1)
    check(x)


def test_q8_0_exact_ties_by_hand():
    # amax 127 -> d = 1, id = 1: every value is its own scaled value
    vals = np.concatenate([np.arange(-127, 127, dtype=F32) + F32(0.5), [0.5, -0.5, 2.5, -2.5]]).astype(F32)
    blocks = np.zeros((len(vals), 32), F32)
    blocks[:, 0] = F32(127)
    blocks[:, 1:] = vals[:, None]
    for level in LEVELS:
        q = quantize_with(level, blocks.reshape(1, -1), "Q8_0").reshape(-1, 34)[:, 3].view(np.int8)
        assert np.array_equal(q, (np.sign(vals) * np.floor(np.abs(vals) + 0.5)).astype(np.int8)), level
        assert q[-4:].tolist() == [1, -1, 3, -3]  # half away from zero, not to even
    check(blocks.reshape(1, -1))


def test_q5_0_integer_boundaries_and_signed_max():
    rng = np.random.default_rng(12)
    check(q5_0_boundary_blocks(rng, 256).reshape(8, -1))
    # the largest magnitude with both signs: the reference keeps the first one (strict <)
    x = rng.uniform(-1, 1, (512, 32)).astype(F32)
    for i, block in enumerate(x):
        pos = rng.choice(32, size=rng.integers(2, 6), replace=False)
        block[pos] = F32(1.5) * rng.choice([F32(-1), F32(1)], size=pos.size)
        block[pos[0]] = -block[pos[1]]
    check(x.reshape(16, -1))


# --- magnitudes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_per_row", [32, 64, 96, 160, 4096, 32 * 33])
def test_row_lengths_and_many_magnitudes(n_per_row):
    rng = np.random.default_rng(n_per_row)
    rows = max(1, 8192 // n_per_row)
    x = rng.standard_normal((rows, n_per_row)).astype(F32)
    scale = (10.0 ** rng.uniform(-35, 36, size=(rows, n_per_row // 32, 1))).astype(F32)
    x = (x.reshape(rows, -1, 32) * scale).reshape(rows, n_per_row).astype(F32)
    x[:, ::37] *= F32(40)  # outliers
    check(x)


def test_zero_and_signed_zero_blocks():
    x = np.zeros((4, 128), F32)
    x[1] = -0.0  # Q5_0: the reference's max stays +0.0, so d = 0.0 / -16 = -0.0
    x[2, 32:64] = np.linspace(-1, 1, 32, dtype=F32)
    x[2, 64:96] = -0.0
    x[2, 70] = 1e-45  # smallest subnormal among -0.0: d underflows to 0 (id = 0)
    x[3, 96:] = -1e-45
    check(x)


def test_subnormal_and_tiny_scales():
    # max from subnormal up to where 1/d becomes finite (|d| >= ~2**-128): both sides of the switch
    rng = np.random.default_rng(3)
    amax_bits = np.unique(np.concatenate([
        rng.integers(1, 0x0A000000, 3000, dtype=np.uint32),  # 1.4e-45 .. ~6e-33
        np.arange(0x03F00000, 0x04100000, 0x100, dtype=np.uint32),  # ~127 * 2**-128: Q8_0's id overflows
        np.arange(0x03700000, 0x03900000, 0x100, dtype=np.uint32),  # ~16 * 2**-128: Q5_0's
        np.arange(1, 600, dtype=np.uint32),
    ]))
    amax = amax_bits.view(F32)
    x = (rng.uniform(-1, 1, (amax.size, 32)).astype(F32) * amax[:, None]).astype(F32)
    x[:, 5] = amax * rng.choice([F32(-1), F32(1)], size=amax.size)
    n = amax.size - amax.size % 4
    check(x[:n].reshape(4, -1))


def test_large_scales_and_fp16_overflow_of_d():
    rng = np.random.default_rng(4)
    d_targets = np.array([65504, 65519, 65519.99, 65520, 65521, 70000, 1e6, 1e30], np.float64)
    amax = np.concatenate([
        (d_targets * 127).astype(F32), (d_targets * 16).astype(F32),
        np.array([3.4028235e38, 1.7e38, 1e38, 6e-5 * 127, 6.1e-5 * 127, 6e-5 * 16], F32),  # d near fp16's min normal
    ]).astype(F32)
    amax = np.concatenate([amax, np.nextafter(amax[amax < F32(3e38)], F32(np.inf)), np.nextafter(amax, F32(0))])
    x = (rng.uniform(-1, 1, (amax.size, 32)) * amax[:, None].astype(np.float64)).astype(F32)
    x[:, 31] = -amax
    x = np.concatenate([x, np.zeros(((-amax.size) % 2, 32), F32)])
    check(x.reshape(2, -1))


# --- non-finite and arbitrary bit patterns ---------------------------------------------------------


def test_non_finite_blocks_match_scalar():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 32)).astype(F32)
    x[0, 0] = np.nan
    x[1, 31] = np.nan  # NaN last: Q8_0's MAX keeps it
    x[2, 10] = np.nan
    x[2, 11] = 5.0  # a bigger value after the NaN: Q8_0's MAX forgets the NaN
    x[3, 4] = np.inf
    x[4, 4] = -np.inf
    x[5, :] = np.nan
    x[6, 7] = np.float32(-np.nan)
    x[7, 3], x[7, 9] = np.inf, np.nan
    with np.errstate(over="ignore"):
        x[8:] = x[8:] * F32(3e38)  # overflows to inf in places
    check(x.reshape(2, -1))


@pytest.mark.parametrize("qtype", SIMD_TYPES)
def test_random_bit_patterns_match_scalar(qtype):
    # every kind of float32, NaN payloads and subnormals included, mixed within blocks
    rng = np.random.default_rng(6)
    bits = rng.integers(0, 2**32, (64, 4096), dtype=np.uint64).astype(np.uint32)
    assert_paths_agree(bits.view(F32), qtype)
    # blocks of one exponent each (finite, every range) with random mantissas and signs
    e = rng.integers(0, 255, (64, 128, 1), dtype=np.uint32) << np.uint32(23)
    m = rng.integers(0, 1 << 23, (64, 128, 32), dtype=np.uint32)
    sign = rng.integers(0, 2, (64, 128, 32), dtype=np.uint32) << np.uint32(31)
    assert_paths_agree((e | m | sign).reshape(64, 4096).view(F32), qtype)


def test_f16_bit_pattern_sweep_and_tails():
    # every 2039th float32 bit pattern, plus every pattern near fp16's subnormal, normal and overflow
    # boundaries (all 2**32 were compared once when the F16C path was written)
    sweep = np.arange(0, 2**32, 2039, dtype=np.uint64).astype(np.uint32)
    edges = [0x33000000, 0x33800000, 0x387FC000, 0x38800000, 0x477FE000, 0x47800000]
    dense = np.concatenate([np.arange(e - 4096, e + 4096, dtype=np.uint32) for e in edges])
    bits = np.concatenate([sweep, dense, dense | np.uint32(0x80000000)])
    bits = bits[: bits.size - bits.size % 4096]
    assert_paths_agree(bits.view(F32).reshape(-1, 4096), "F16")
    # rows whose length is not a multiple of the vector width, with NaNs in some lanes
    rng = np.random.default_rng(9)
    for n in [1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 65]:
        x = rng.standard_normal((5, n)).astype(F32)
        x[1, rng.integers(0, n)] = np.nan
        x[2, :] = np.frombuffer(np.full(n, 0x7FC12345, np.uint32).tobytes(), F32)  # NaN with payload
        x[3, -1] = -np.inf
        assert_paths_agree(x, "F16")


@pytest.mark.parametrize("qtype", SIMD_TYPES)
def test_unaligned_buffers_and_threads(qtype):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((40, 4096)).astype(F32)
    ref = quantize_with("scalar", x, qtype)
    raw = np.empty(x.size + 1, F32)[1:].reshape(x.shape)  # 4-byte aligned, not 32/64-byte aligned
    raw[...] = x
    for level in LEVELS:
        _kernels.set_simd(level)
        assert np.array_equal(gg.quantize(raw, qtype, threads=1), ref), level
        assert np.array_equal(gg.quantize(x, qtype, threads=3), ref), level
        dst = np.empty(ref.nbytes + 1, np.uint8)[1:].reshape(ref.shape)  # odd address
        _kernels.quantize(gg.type_id(qtype), raw, x.shape[0], x.shape[1], dst)
        assert np.array_equal(dst, ref), level
