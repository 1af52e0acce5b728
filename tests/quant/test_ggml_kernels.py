"""ckptkit.quant.ggml: byte-exact with ggml's reference quantizer, consistent with gguf-py."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGML_QUANT_SIZES
from gguf import quants as gq

from ckptkit.quant import ggml as gg
from ckptkit.quant.ggml import _kernels
from tests.conftest import VECTORS

NPZ = VECTORS / "ggml" / "ggml_reference_vectors.npz"
ALL_TYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
K_QUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
GGUF_PY_QUANTIZES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


@pytest.fixture(scope="module")
def vectors():
    if not NPZ.exists():
        pytest.fail(f"{NPZ} is missing: tests need ../shared beside the checkout")
    with np.load(NPZ) as z:
        data = {k: z[k] for k in z.files}
    dists = sorted({k.split("/")[0] for k in data})
    return data, dists


@pytest.fixture(scope="module")
def rand_64x4096():
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((64, 4096), dtype=np.float32)
    x[:, ::97] *= 30.0  # a few outliers per row
    x[3] = 0.0
    return x


def _diff_blocks(a: np.ndarray, b: np.ndarray, type_size: int) -> int:
    return int((a.reshape(-1, type_size) != b.reshape(-1, type_size)).any(axis=1).sum())


# --- reference vectors ---------------------------------------------------------------------------


def test_vectors_cover_every_type_and_distribution(vectors):
    data, dists = vectors
    assert {"normal", "uniform", "student_t3", "outliers", "edge", "positive_skew"} <= set(dists)
    for d in dists:
        for t in ALL_TYPES:
            assert f"{d}/{t}" in data


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_reference_vectors_byte_exact(vectors, qtype):
    data, dists = vectors
    bad = {}
    for d in dists:
        x = data[f"{d}/input"]
        ref = data[f"{d}/{qtype}"]
        out = gg.quantize(x, qtype)
        assert out.dtype == np.uint8 and out.shape == ref.shape, (d, out.shape, ref.shape)
        if not np.array_equal(out, ref):
            bad[d] = _diff_blocks(out, ref, gg.type_size(qtype))
    assert not bad, f"{qtype}: differing blocks per distribution: {bad}"


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_dequantize_matches_gguf_py(vectors, qtype):
    data, dists = vectors
    qt = GGMLQuantizationType[qtype]
    for d in dists:
        ref = data[f"{d}/{qtype}"]
        shape = data[f"{d}/input"].shape
        ours = gg.dequantize(ref, qtype, shape)
        theirs = np.asarray(gq.dequantize(ref, qt), dtype=np.float32).reshape(shape)
        assert ours.dtype == np.float32 and ours.shape == shape
        # bitwise, so -0.0 vs 0.0 and NaN payloads count too
        assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32)), (d, qtype)


@pytest.mark.parametrize("qtype", GGUF_PY_QUANTIZES)
def test_quantize_matches_gguf_py_on_random_tensor(rand_64x4096, qtype):
    x = rand_64x4096
    ours = gg.quantize(x, qtype)
    theirs = np.ascontiguousarray(gq.quantize(x, GGMLQuantizationType[qtype])).view(np.uint8)
    assert np.array_equal(ours, theirs.reshape(ours.shape))


@pytest.mark.parametrize("qtype", K_QUANTS)
def test_gguf_py_cannot_quantize_k_quants(qtype):
    # the reason this module exists; if gguf-py grows K-quants, compare against it too
    with pytest.raises(NotImplementedError):
        gq.quantize(np.zeros((1, 256), np.float32), GGMLQuantizationType[qtype])


# --- layout / API ----------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", ALL_TYPES + ["F32"])
def test_sizes_match_gguf(qtype):
    bs, ts = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    assert gg.block_size(qtype) == bs
    assert gg.type_size(qtype) == ts
    assert gg.row_bytes(qtype, 4096) == 4096 // bs * ts
    assert gg.type_id(qtype) == int(GGMLQuantizationType[qtype])
    assert gg.block_size(GGMLQuantizationType[qtype]) == bs
    assert gg.block_size(qtype.lower()) == bs
    assert qtype in gg.QUANT_TYPES


def test_kernel_table_matches_gguf():
    for tid, (name, bs, ts) in _kernels.TYPES.items():
        assert GGMLQuantizationType(tid).name == name
        assert GGML_QUANT_SIZES[GGMLQuantizationType(tid)] == (bs, ts)


@pytest.mark.parametrize("qtype", ALL_TYPES + ["F32"])
def test_roundtrip_shape_and_error(qtype):
    x = np.random.default_rng(5).standard_normal((16, 1024), dtype=np.float32)
    y = gg.dequantize(gg.quantize(x, qtype), qtype, x.shape)
    assert y.shape == x.shape and y.dtype == np.float32
    rel = np.linalg.norm(y - x) / np.linalg.norm(x)
    # measured on this input: F16 2e-4, BF16 1.7e-3, Q8_0 5.2e-3, Q6_K 0.017, Q5_x ~0.04,
    # Q4_x ~0.08, Q4_K 0.07, Q3_K 0.15, Q2_K 0.29
    limit = {"F32": 0, "F16": 5e-4, "BF16": 3e-3, "Q8_0": 0.008, "Q6_K": 0.025, "Q5_0": 0.06, "Q5_1": 0.055,
             "Q5_K": 0.05, "Q4_0": 0.12, "Q4_1": 0.11, "Q4_K": 0.1, "Q3_K": 0.2, "Q2_K": 0.4}[qtype]
    assert rel <= limit, (qtype, rel)


def test_dequantize_accepts_bytes_and_nd_shape(rand_64x4096):
    x = rand_64x4096[:8, :512]
    q = gg.quantize(x, "Q4_K")
    a = gg.dequantize(q.tobytes(), "Q4_K", (2, 4, 512))
    b = gg.dequantize(q, "Q4_K", (8, 512))
    assert a.shape == (2, 4, 512)
    assert np.array_equal(a.reshape(8, 512), b)


def test_quantize_accepts_torch_and_float64(rand_64x4096):
    torch = pytest.importorskip("torch")
    x = rand_64x4096[:4, :256]
    ref = gg.quantize(x, "Q6_K")
    assert np.array_equal(gg.quantize(torch.from_numpy(x.copy()), "Q6_K"), ref)
    assert np.array_equal(gg.quantize(x.astype(np.float64), "Q6_K"), ref)
    assert np.array_equal(gg.quantize(np.asfortranarray(x), "Q6_K"), ref)


# --- threads ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_threads_do_not_change_bytes(rand_64x4096, qtype):
    x = rand_64x4096[:, :2048]
    one = gg.quantize(x, qtype, threads=1)
    four = gg.quantize(x, qtype, threads=4)
    assert np.array_equal(one, four)
    d1 = gg.dequantize(one, qtype, x.shape, threads=1)
    d4 = gg.dequantize(one, qtype, x.shape, threads=4)
    assert np.array_equal(d1.view(np.uint32), d4.view(np.uint32))


def test_threads_argument_validated(rand_64x4096):
    with pytest.raises(ValueError):
        gg.quantize(rand_64x4096[:2, :256], "Q4_K", threads=0)


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "qtype,n",
    [("Q4_0", 48), ("Q8_0", 33), ("Q5_1", 16), ("Q2_K", 128), ("Q4_K", 4096 + 32), ("Q6_K", 300)],
)
def test_wrong_row_length_raises(qtype, n):
    x = np.ones((2, n), np.float32)
    with pytest.raises(ValueError, match="multiple of the block size"):
        gg.quantize(x, qtype)
    with pytest.raises(ValueError):
        gg.row_bytes(qtype, n)
    with pytest.raises(ValueError):
        gg.dequantize(np.zeros(1000, np.uint8), qtype, (2, n))


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        gg.quantize(np.ones(256, np.float32), "Q4_K")  # 1-D
    with pytest.raises(ValueError):
        gg.quantize(np.ones((1, 256), np.float32), "IQ4_XS")  # unsupported
    with pytest.raises(ValueError):
        gg.dequantize(np.zeros(143, np.uint8), "Q4_K", (1, 256))  # one byte short
    with pytest.raises(ValueError):
        gg.dequantize(np.zeros(146, np.uint8), "F16", (1, 72))


def test_kernel_validates_sizes():
    x = np.ones((2, 256), np.float32)
    out = np.empty((2, 144), np.uint8)
    _kernels.quantize(12, x, 2, 256, out)  # fine
    cases = [
        (12, x, 3, 256, out),  # src too short for 3 rows
        (12, x, 2, 256, np.empty((2, 143), np.uint8)),  # dst too small
        (12, x, 2, 256, np.empty((2, 145), np.uint8)),  # dst too big
        (12, x, 2, 255, out),  # not a multiple of 256
        (12, x, -1, 256, out),
        (99, x, 2, 256, out),  # unknown type
        (12, x.astype(np.float64), 2, 256, out),  # wrong dtype
        (12, x, 2**62, 2**40, out),  # overflowing sizes
    ]
    for args in cases:
        with pytest.raises(ValueError):
            _kernels.quantize(*args)
    with pytest.raises(BufferError):
        _kernels.quantize(12, x, 2, 256, bytes(288))  # read-only dst
    with pytest.raises(ValueError):
        _kernels.dequantize(12, out, 2, 256, np.empty((2, 255), np.float32))
    with pytest.raises(ValueError):
        _kernels.dequantize(12, out[:, :100], 2, 256, np.empty((2, 256), np.float32))
    with pytest.raises((ValueError, BufferError)):
        _kernels.dequantize(12, out, 2, 256, np.empty((2, 512), np.float32)[:, ::2])  # not contiguous


def test_kernel_unaligned_buffers_give_same_result(rand_64x4096):
    x = rand_64x4096[:2, :256]
    ref = gg.quantize(x, "Q4_K")
    raw = bytearray(x.nbytes + 1)
    memoryview(raw)[1:] = x.tobytes()
    dst = bytearray(ref.nbytes + 1)
    _kernels.quantize(12, memoryview(raw)[1:], 2, 256, memoryview(dst)[1:])
    assert bytes(dst[1:]) == ref.tobytes()
    out = bytearray(x.nbytes + 1)
    qsrc = bytearray(ref.nbytes + 1)
    memoryview(qsrc)[1:] = ref.tobytes()
    _kernels.dequantize(12, memoryview(qsrc)[1:], 2, 256, memoryview(out)[1:])
    assert bytes(out[1:]) == gg.dequantize(ref, "Q4_K", x.shape).tobytes()


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_non_finite_input_does_not_crash(qtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 512)).astype(np.float32)
    x[0, 5] = np.nan
    x[1, 100] = np.inf
    x[2, 300] = -np.inf
    x[3, :] = np.nan
    x[4, ::3] = np.float32(3e38)  # finite but overflows sums
    x[5, 7] = -np.nan
    a = gg.quantize(x, qtype, threads=1)
    b = gg.quantize(x, qtype, threads=3)
    assert np.array_equal(a, b)
    y = gg.dequantize(a, qtype, x.shape)
    assert y.shape == x.shape


def test_f16_bf16_special_values_follow_ggml():
    x = np.array(
        [[0.0, -0.0, 1.0, 65504.0, 65520.0, 1e-8, 6e-8, -np.inf, np.nan, -np.nan,
          np.float32(1.00390625), np.float32(1.01171875), 3.0e38, 1e-40, np.inf, -2.5]],
        dtype=np.float32,
    )
    x = np.concatenate([x, np.frombuffer(np.array([0x7F800001, 0xFFC12345], np.uint32).tobytes(),
                                         np.float32).reshape(1, 2).repeat(8, 0).reshape(1, 16)], axis=1)
    f16 = gg.quantize(x[:, :16], "F16").view(np.uint16)[0]
    assert f16[4] == 0x7C00 and f16[3] == 0x7BFF  # 65520 rounds to inf (ties to even)
    assert f16[8] == 0x7E00 and f16[9] == 0xFE00  # NaN -> sign | 0x7E00
    bf = gg.quantize(x, "BF16").view(np.uint16)[0]
    assert bf[10] == 0x3F80 and bf[11] == 0x3F82  # ties to even / round up
    assert bf[16] == 0x7FC0 and bf[17] == 0xFFC1  # NaN made quiet, payload top bits kept
    theirs = np.asarray(gq.quantize(x, GGMLQuantizationType.BF16)).view(np.uint16).reshape(-1)
    assert np.array_equal(bf, theirs)
