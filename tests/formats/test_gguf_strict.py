"""The strict GGUF reader (ckptkit/formats/gguf.py): every claimed count, length, type and offset is
checked against the file before it is used, every refusal is one line naming the problem, and every
valid file reads exactly as gguf-py's GGUFReader reads it."""

from __future__ import annotations

import os
import random
import struct
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from ckptkit.errors import CkptError
from ckptkit.formats.gguf import ORIG_SHAPE_KEY, GGUFCheckpoint, GGUFStreamWriter
from ckptkit.quant import ggml

T = gguf.GGUFValueType
Q = gguf.GGMLQuantizationType


# --- GGUF by hand --------------------------------------------------------------------------------

def s(text: bytes | str) -> bytes:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def kv(key: bytes | str, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def kv_u32(key, value: int) -> bytes:
    return kv(key, T.UINT32, struct.pack("<I", value))


def kv_str(key, value: bytes | str) -> bytes:
    return kv(key, T.STRING, s(value))


def kv_array(key, item: int, fmt: str, values) -> bytes:
    return kv(key, T.ARRAY, struct.pack("<IQ", item, len(values)) + struct.pack(f"<{len(values)}{fmt}", *values))


def ti(name: bytes | str, dims, ttype: int = Q.F32, offset: int = 0) -> bytes:
    return s(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", ttype, offset)


def build(kvs=(), tis=(), data: bytes = b"", version: int = 3, n_kv: int | None = None, n_tensors: int | None = None,
          alignment: int = 32, pad: bytes = b"\0") -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(tis) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(tis)
    return head + pad * (-len(head) % alignment) + data


ARCH = kv_str("general.architecture", "test")
F32x8 = np.arange(8, dtype=np.float32).tobytes()  # 32 bytes: one aligned F32 tensor of 8 values


def two_tensors(b_offset: int = 32, data: bytes = F32x8 * 2, b_dims=(8,), kvs=(ARCH,)) -> bytes:
    return build(list(kvs), [ti("a", (8,), Q.F32, 0), ti("b", b_dims, Q.F32, b_offset)], data)


def write(tmp_path: Path, content: bytes, name: str = "t.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def refused(path: Path) -> str:
    start = time.perf_counter()
    with pytest.raises(CkptError) as info:
        GGUFCheckpoint(path).close()
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert elapsed < 1.0, f"took {elapsed:.2f} s: {message}"
    assert "\n" not in message and len(message) < 600, message
    assert message.startswith(f"{path}: "), message
    return message


# --- refusals ------------------------------------------------------------------------------------

def _flip_string_kv_to_array() -> bytes:
    """A file written by gguf-py whose string KV's type byte had its low bit flipped: STRING (8) ->
    ARRAY (9); the string length becomes the item type and the text the element count."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.gguf"
        w = gguf.GGUFWriter(path, "test")
        w.add_string("general.name", "tiny")  # length 4: read as item type UINT32, then "tiny" in the count
        w.add_tensor("w", np.zeros((2, 32), np.float32))
        w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
        data = bytearray(path.read_bytes())
    at = data.index(b"general.name") + len("general.name")
    assert data[at] == T.STRING
    data[at] ^= 1
    return bytes(data)


CASES = {
    # name: (file bytes, words the message must contain)
    "short_file": (b"GGUF\3\0\0\0", "shorter than the 24-byte GGUF header"),
    "bad_magic": (b"GGML" + bytes(60), "bad magic"),
    "version_1": (build(version=1), "version 1 is not supported"),
    "version_4": (build(version=4), "unsupported GGUF version 4"),
    "big_endian": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "big-endian"),
    "array_2_40_in_64_bytes": ((b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + s("k") + struct.pack("<IIQ", T.ARRAY, T.UINT32, 2**40)).ljust(64, b"\0"),
                               "claims an array of 1099511627776 UINT32 values"),
    "string_kv_flipped_to_array": (_flip_string_kv_to_array(), "key 'general.name' claims an array of"),
    "huge_string_length": (build([kv("k", T.STRING, struct.pack("<Q", 2**62) + b"abc")]), "claims 4611686018427387904 bytes"),
    "huge_key_length": (build([struct.pack("<Q", 2**63) + b"key"]), "KV 0 key claims 9223372036854775808 bytes"),
    "huge_kv_count": (build([ARCH], n_kv=2**40), "1099511627776 KV pairs"),
    "huge_tensor_count": (build([ARCH], n_tensors=2**40), "1099511627776 tensors"),
    "unknown_value_type": (build([kv("k", 13, b"\0" * 8)]), "key 'k' has unknown value type 13"),
    "unknown_array_item_type": (build([kv("k", T.ARRAY, struct.pack("<IQ", 77, 1) + b"\0" * 8)]), "array of unknown value type 77"),
    "arrays_nested_3_deep": (build([kv("k", T.ARRAY, struct.pack("<IQIQIQ", T.ARRAY, 1, T.ARRAY, 1, T.UINT8, 1) + b"\1")]),
                             "nests arrays deeper than 2"),
    "unknown_tensor_type": (build([ARCH], [ti("a", (8,), 99)], F32x8), "tensor 'a' has unknown ggml type 99"),
    "removed_tensor_type_q4_2": (build([ARCH], [ti("a", (32,), 4)], bytes(32)), "unknown ggml type 4"),
    "n_dims_0": (build([ARCH], [s("a") + struct.pack("<IIQ", 0, Q.F32, 0)], F32x8), "tensor 'a' has 0 dimensions"),
    "n_dims_6": (build([ARCH], [ti("a", (1, 1, 1, 1, 1, 8), Q.F32)], F32x8), "tensor 'a' has 6 dimensions"),
    "zero_dim": (build([ARCH], [ti("a", (8, 0), Q.F32)], F32x8), "zero-sized dimension"),
    "numel_overflow": (build([ARCH], [ti("a", (2**40, 2**40), Q.F32)], F32x8), "overflow the element count"),
    "block_size": (build([ARCH], [ti("a", (16, 2), Q.Q8_0)], bytes(64)), "first dimension 16 is not a multiple of Q8_0's block size 32"),
    "offset_wraps": (two_tensors(b_offset=2**64 - 32), "32 bytes at data offset 18446744073709551584) ends at 18446744073709551616 but the data section has 64 bytes"),
    "offset_past_end": (two_tensors(b_offset=64), "ends at 96 but the data section has 64 bytes"),
    "truncated_data": (two_tensors()[:-1], "ends at 64 but the data section has 63 bytes"),
    "misaligned_offset": (two_tensors(b_offset=16, data=F32x8 * 3), "offset 16 is not a multiple of the alignment 32"),
    "overlap": (two_tensors(b_offset=0), "overlaps tensor 'a'"),
    "overlap_longer": (build([ARCH], [ti("a", (16,)), ti("b", (8,), Q.F32, 32)], F32x8 * 3), "overlaps tensor 'a'"),
    "gap": (two_tensors(b_offset=64, data=F32x8 * 3), "leaves a gap of 32 bytes after tensor 'a'"),
    "first_not_at_0": (build([ARCH], [ti("a", (8,), Q.F32, 32)], F32x8 * 2), "starts at data offset 32, not 0"),
    "trailing_bytes": (two_tensors(data=F32x8 * 3), "32 bytes after the last tensor"),
    "trailing_one_byte_past_padding": (build([ARCH], [ti("a", (2,))], bytes(33)), "25 bytes after the last tensor"),
    "no_tensors_but_data": (build([ARCH], [], bytes(64)), "64 bytes follow the header but the file has no tensors"),
    "alignment_0": (two_tensors(kvs=[ARCH, kv_u32("general.alignment", 0)]), "general.alignment 0 is not a power of two"),
    "alignment_3": (two_tensors(kvs=[ARCH, kv_u32("general.alignment", 3)]), "general.alignment 3 is not a power of two"),
    "alignment_string": (two_tensors(kvs=[ARCH, kv_str("general.alignment", "32")]), "general.alignment must be a UINT32, not STRING"),
    "alignment_uint64": (two_tensors(kvs=[ARCH, kv("general.alignment", T.UINT64, struct.pack("<Q", 32))]),
                         "general.alignment must be a UINT32, not UINT64"),
    "duplicate_key": (two_tensors(kvs=[ARCH, kv_u32("x", 1), kv_u32("x", 2)]), "duplicate key 'x'"),
    "duplicate_tensor": (build([ARCH], [ti("a", (8,)), ti("a", (8,), Q.F32, 32)], F32x8 * 2), "duplicate tensor name 'a'"),
    "non_utf8_tensor_name": (build([ARCH], [ti(b"a\xff\xfe", (8,))], F32x8), "tensor 0 name b'a\\xff\\xfe' is not valid UTF-8"),
    "non_utf8_key": (build([kv_u32(b"k\xc3", 1)]), "KV 0 key b'k\\xc3' is not valid UTF-8"),
    "orig_shape_string": (two_tensors(kvs=[ARCH, kv_str(ORIG_SHAPE_KEY + "a", "[2, 4]")]),
                          "'comfy.gguf.orig_shape.a' must be an array of integers, not STRING"),
    "orig_shape_scalar": (two_tensors(kvs=[ARCH, kv_u32(ORIG_SHAPE_KEY + "a", 8)]),
                          "'comfy.gguf.orig_shape.a' must be an array of integers, not UINT32"),
    "orig_shape_floats": (two_tensors(kvs=[ARCH, kv_array(ORIG_SHAPE_KEY + "a", T.FLOAT32, "f", [2.0, 4.0])]),
                          "must be an array of integers, not ARRAY of FLOAT32"),
    "orig_shape_negative": (two_tensors(kvs=[ARCH, kv_array(ORIG_SHAPE_KEY + "a", T.INT32, "i", [-2, -4])]), "each >= 1"),
    "orig_shape_empty": (two_tensors(kvs=[ARCH, kv_array(ORIG_SHAPE_KEY + "a", T.INT32, "i", [])]), "each >= 1"),
    "orig_shape_wrong_product": (two_tensors(kvs=[ARCH, kv_array(ORIG_SHAPE_KEY + "a", T.INT32, "i", [3, 3])]),
                                 "holds 9 elements but tensor 'a' stores 8"),
    "orig_shape_missing_tensor": (two_tensors(kvs=[ARCH, kv_array(ORIG_SHAPE_KEY + "zz", T.INT32, "i", [2, 4])]),
                                  "'comfy.gguf.orig_shape.zz' names no tensor"),
    "t5_names_collide": (build([kv_str("general.architecture", "t5encoder")],
                               [ti("enc.blk.0.attn_q.weight", (8,)), ti("encoder.block.0.layer.0.SelfAttention.q.weight", (8,), Q.F32, 32)],
                               F32x8 * 2), "which another tensor is also read as"),
    "truncated_in_kv": (two_tensors(kvs=[ARCH, kv_u32("x", 1)])[:60], "not a valid GGUF file"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_in_one_line(tmp_path, case):
    content, words = CASES[case]
    message = refused(write(tmp_path, content))
    assert ": not a valid GGUF file: " in message
    assert words in message, message


def test_huge_array_claim_in_64_bytes_is_refused_fast(tmp_path):
    path = write(tmp_path, CASES["array_2_40_in_64_bytes"][0])
    assert path.stat().st_size == 64
    start = time.perf_counter()
    refused(path)
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize("make", [os.mkfifo, os.mkdir])
def test_not_a_regular_file(tmp_path, make):
    path = tmp_path / "x.gguf"
    make(path)
    message = refused(path)  # a FIFO must not block the open
    assert "not a regular file" in message


# --- accepted edge cases -------------------------------------------------------------------------

def test_valid_hand_made_file(tmp_path):
    with GGUFCheckpoint(write(tmp_path, two_tensors())) as ckpt:
        assert ckpt.version == 3 and ckpt.alignment == 32 and ckpt.architecture == "test"
        assert [(t.name, t.dims, t.offset - ckpt.data_offset, t.nbytes) for t in ckpt.layout] == [("a", (8,), 0, 32), ("b", (8,), 32, 32)]
        assert ckpt.load("b").tolist() == list(range(8))
        assert ckpt.position("a") < ckpt.position("b")


def test_version_2_and_padding_up_to_alignment(tmp_path):
    # 8 bytes of data, then 24 bytes of padding after the last tensor: allowed; a shorter tail too
    for tail in (24, 0, 5):
        content = build([ARCH], [ti("a", (2,))], np.ones(2, np.float32).tobytes() + bytes(tail), version=2)
        with GGUFCheckpoint(write(tmp_path, content)) as ckpt:
            assert ckpt.version == 2 and ckpt.load("a").tolist() == [1.0, 1.0]


def test_metadata_only_file(tmp_path):
    w = gguf.GGUFWriter(tmp_path / "m.gguf", "llama")
    w.add_uint32("llama.block_count", 3)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with GGUFCheckpoint(tmp_path / "m.gguf") as ckpt:
        assert len(ckpt) == 0 and ckpt.kv["llama.block_count"] == 3 and ckpt.layout == []
    # the file may also end right after the tensor infos (its header padding missing)
    unpadded = build([ARCH], alignment=1)
    assert len(unpadded) % 32
    with GGUFCheckpoint(write(tmp_path, unpadded)) as ckpt:
        assert len(ckpt) == 0 and ckpt.data_offset > ckpt.file_size


def test_custom_alignment(tmp_path):
    content = build([ARCH, kv_u32("general.alignment", 64)], [ti("a", (8,)), ti("b", (8,), Q.F32, 64)],
                    F32x8 + bytes(32) + F32x8, alignment=64)
    with GGUFCheckpoint(write(tmp_path, content)) as ckpt:
        assert ckpt.alignment == 64 and ckpt.data_offset % 64 == 0
        assert ckpt.load("b").tolist() == list(range(8))


def test_non_utf8_string_value_is_kept_as_none(tmp_path):
    strings = [b"ok", b"\xff"]
    arr = kv("tok", T.ARRAY, struct.pack("<IQ", T.STRING, 2) + b"".join(s(x) for x in strings))
    content = two_tensors(kvs=[ARCH, kv_str("bad", b"\xc3("), arr, kv_str("good", "ünï")])
    with GGUFCheckpoint(write(tmp_path, content)) as ckpt:
        assert ckpt.kv["bad"] is None and ckpt.kv["tok"] is None and ckpt.kv["good"] == "ünï"


def test_nested_arrays_two_deep(tmp_path):
    inner = struct.pack("<IQ", T.UINT8, 2) + b"\1\2"
    content = two_tensors(kvs=[ARCH, kv("n", T.ARRAY, struct.pack("<IQ", T.ARRAY, 2) + inner + inner)])
    with GGUFCheckpoint(write(tmp_path, content)) as ckpt:
        assert ckpt.kv["n"] == [[1, 2], [1, 2]]


def test_orig_shape_accepted(tmp_path):
    content = two_tensors(kvs=[ARCH, kv_array(ORIG_SHAPE_KEY + "a", T.UINT64, "Q", [2, 1, 4])])
    with GGUFCheckpoint(write(tmp_path, content)) as ckpt:
        assert ckpt.tensors["a"].shape == (2, 1, 4) and ckpt.load("a").shape == (2, 1, 4)
        assert ORIG_SHAPE_KEY + "a" not in ckpt.metadata


def test_open_reads_nothing_of_the_data(tmp_path):
    """A 4 GiB tensor in a sparse file: opening maps, never reads (fast, no memory growth)."""
    nbytes = 4 << 30
    path = write(tmp_path, build([ARCH], [ti("big", (nbytes // 4,))]))
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size + nbytes)

    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") if os.path.exists("/proc/self/statm") else 0

    before, start = rss(), time.perf_counter()
    with GGUFCheckpoint(path) as ckpt:
        assert ckpt.tensors["big"].nbytes == nbytes
        assert time.perf_counter() - start < 1.0
        assert rss() - before < 64 << 20


# --- loading -------------------------------------------------------------------------------------

def _stream_file(path: Path, entries: dict[str, tuple[tuple[int, ...], str, np.ndarray]], kv=None, arch="test") -> Path:
    specs = [(n, shape, t, raw.nbytes) for n, (shape, t, raw) in entries.items()]
    with GGUFStreamWriter(path, arch, specs, kv or {}) as writer:
        for n, (_, _, raw) in entries.items():
            writer.write(n, raw)
    return path


def test_q8_1_opens_but_cannot_be_loaded(tmp_path):
    rng = np.random.default_rng(0)
    path = _stream_file(tmp_path / "q81.gguf", {
        "q81": ((2, 32), "Q8_1", rng.integers(0, 256, 80, dtype=np.uint8)),
        "f": ((4,), "F32", np.ones(4, np.float32))})
    with GGUFCheckpoint(path) as ckpt:
        assert ckpt.tensors["q81"].dtype == "Q8_1" and ckpt.tensors["q81"].shape == (2, 32)
        assert ckpt.ggml_type("q81") == Q.Q8_1 and len(ckpt.raw("q81")) == 80
        with pytest.raises(CkptError) as info:
            ckpt.load("q81")
        assert str(info.value) == f"{path}: tensor 'q81' is stored as Q8_1, which ckptkit cannot dequantize"
        assert ckpt.load("f").tolist() == [1.0] * 4


def test_types_only_gguf_py_dequantizes(tmp_path, monkeypatch):
    """IQ4_NL / IQ2_XXS / TQ1_0 (no C kernel) go through gguf-py; its failures become one line."""
    rng = np.random.default_rng(1)
    entries = {}
    for type_name, cols in (("IQ4_NL", 64), ("IQ2_XXS", 256), ("TQ1_0", 256)):
        block, size = gguf.GGML_QUANT_SIZES[Q[type_name]]
        entries[type_name.lower()] = ((2, cols), type_name, rng.integers(0, 256, 2 * cols // block * size, dtype=np.uint8))
    path = _stream_file(tmp_path / "iq.gguf", entries)
    with GGUFCheckpoint(path) as ckpt:
        for name, (shape, type_name, raw) in entries.items():
            assert type_name not in ggml.KERNEL_TYPES
            want = gguf.quants.dequantize(raw.reshape(shape[0], -1), Q[type_name])
            got = ckpt.load(name)
            assert got.dtype == torch.float32 and tuple(got.shape) == shape
            assert np.array_equal(got.numpy(), want, equal_nan=True)

        def boom(*args, **kwargs):
            raise RuntimeError("kaput\nsecond line")

        monkeypatch.setattr(gguf.quants, "dequantize", boom)
        with pytest.raises(CkptError) as info:
            ckpt.load("iq4_nl")
        message = str(info.value)
        assert "\n" not in message and str(path) in message and "'iq4_nl'" in message and "kaput" in message


def test_close_with_raw_arrays_alive(tmp_path):
    with GGUFCheckpoint(write(tmp_path, two_tensors())) as ckpt:
        raw = ckpt.raw("b")
        assert not raw.flags.writeable
    assert raw.view(np.float32).tolist() == list(range(8))  # still mapped until the last user goes


# --- agreement with gguf-py ----------------------------------------------------------------------

def assert_matches_gguf_py(path: Path, rename=lambda n: n) -> None:
    reader = gguf.GGUFReader(path)
    with GGUFCheckpoint(path) as ckpt:
        assert ckpt.data_offset == reader.data_offset and ckpt.alignment == reader.alignment
        want_kv = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        assert ckpt.kv == want_kv
        assert [t.name for t in ckpt.layout] == [t.name for t in reader.tensors]
        for rec, t in zip(ckpt.layout, reader.tensors):
            key = rename(t.name)
            assert rec.key == key and key in ckpt.tensors
            assert rec.type == t.tensor_type == ckpt.ggml_type(key)
            assert rec.dims == tuple(t.shape.tolist()) and rec.numel == t.n_elements and rec.nbytes == t.n_bytes
            assert rec.offset == t.data_offset == ckpt.position(key)[0]
            assert ckpt.raw(key).tobytes() == np.asarray(t.data).tobytes()
            orig = want_kv.get(ORIG_SHAPE_KEY + t.name)
            info = ckpt.tensors[key]
            assert info.shape == (tuple(orig) if orig else tuple(reversed(t.shape.tolist())))
            assert info.nbytes == t.n_bytes
            loaded = ckpt.load(key)
            assert tuple(loaded.shape) == info.shape
            if t.tensor_type.name in ("F32", "F16", "F64", "I8", "I16", "I32", "I64"):
                assert loaded.numpy().tobytes() == np.asarray(t.data).tobytes()
            elif t.tensor_type.name != "BF16":
                want = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(info.shape)
                assert np.allclose(loaded.numpy(), want, equal_nan=True)


def test_every_kv_type_written_by_gguf_py(tmp_path):
    path = tmp_path / "kv.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_uint8("t.u8", 200); w.add_int8("t.i8", -100); w.add_uint16("t.u16", 60000); w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000); w.add_int32("t.i32", -2_000_000_000); w.add_float32("t.f32", 0.25)
    w.add_uint64("t.u64", 2**63 + 5); w.add_int64("t.i64", -(2**62)); w.add_float64("t.f64", 1 / 3)
    w.add_bool("t.true", True); w.add_bool("t.false", False); w.add_string("t.str", "ünïcode ✓"); w.add_string("t.empty", "")
    w.add_array("t.strings", ["a", "", "ccc", "✓"]); w.add_array("t.ints", [1, -2, 3]); w.add_array("t.floats", [0.5, 1.5])
    w.add_array("t.bools", [True, False, True]); w.add_array("t.empty_arr", [])
    w.add_key_value("t.u64s", [1, 2**64 - 1], T.ARRAY, sub_type=T.UINT64)
    w.add_custom_alignment(64)
    w.add_tensor("a", np.arange(96, dtype=np.float32).reshape(3, 32))
    w.add_tensor("b", (np.arange(64, dtype=np.float16) / 7).reshape(2, 32))
    w.add_tensor("c", np.arange(5, dtype=np.int32)); w.add_tensor("d", np.arange(3, dtype=np.float64))
    w.add_tensor("e", np.arange(7, dtype=np.int8)); w.add_tensor("g", np.arange(3, dtype=np.int64))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    assert_matches_gguf_py(path)
    with GGUFCheckpoint(path) as ckpt:
        assert ckpt.alignment == 64
        assert ckpt.kv["t.u64s"] == [1, 2**64 - 1] and ckpt.kv["t.bools"] == [True, False, True]
        assert type(ckpt.kv["t.u32"]) is int and type(ckpt.kv["t.f32"]) is float and ckpt.kv["t.true"] is True


def test_quantized_file_written_by_our_writer(tmp_path):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 256)).astype(np.float32)
    conv = rng.standard_normal((8, 4, 2, 2)).astype(np.float32)  # 128 values, stored as (4, 32) Q8_0
    entries = {
        "q4k": ((4, 256), "Q4_K", ggml.quantize(w, "Q4_K").reshape(-1)),
        "conv": ((4, 32), "Q8_0", ggml.quantize(conv.reshape(4, 32), "Q8_0").reshape(-1)),
        "bf16": ((3, 5), "BF16", torch.randn(3, 5).bfloat16().view(torch.uint8).numpy().reshape(-1)),
        "f16": ((6,), "F16", np.arange(6, dtype=np.float16)),
        "f32": ((2, 3), "F32", np.arange(6, dtype=np.float32).reshape(2, 3)),
    }
    kv = {"general.name": "tiny", ORIG_SHAPE_KEY + "conv": [8, 4, 2, 2], "test.names": ["x", "y"], "test.n": 7}
    path = _stream_file(tmp_path / "q.gguf", entries, kv)
    assert_matches_gguf_py(path)
    with GGUFCheckpoint(path) as ckpt:
        assert ckpt.tensors["conv"].shape == (8, 4, 2, 2) and ckpt.tensors["q4k"].dtype == "Q4_K"
        assert torch.allclose(ckpt.load("conv"), torch.from_numpy(conv), atol=0.05)
        assert ckpt.load("q4k").numpy().tobytes() == ggml.dequantize(entries["q4k"][2], "Q4_K", (4, 256)).tobytes()
        assert [ckpt.position(n) for n in entries] == sorted(ckpt.position(n) for n in entries)


def test_t5_file_read_with_transformers_names(tmp_path):
    entries = {
        "token_embd.weight": ((4, 32), "F16", np.ones((4, 32), np.float16)),
        "enc.blk.0.attn_q.weight": ((2, 32), "Q8_0", ggml.quantize(np.ones((2, 32), np.float32), "Q8_0").reshape(-1)),
        "enc.output_norm.weight": ((32,), "F32", np.ones(32, np.float32)),
    }
    path = _stream_file(tmp_path / "t5.gguf", entries, arch="t5encoder")
    from ckptkit.quant.t5_names import to_hf

    assert_matches_gguf_py(path, rename=to_hf)
    with GGUFCheckpoint(path) as ckpt:
        assert set(ckpt.tensors) == {"shared.weight", "encoder.block.0.layer.0.SelfAttention.q.weight",
                                     "encoder.final_layer_norm.weight"}
        assert ckpt.record("shared.weight").name == "token_embd.weight"


def test_gguf_structure_reports_nonzero_padding(tmp_path):
    from ckptkit.verify.integrity import gguf_structure

    ok = build([ARCH], [ti("a", (2,)), ti("b", (2,), Q.F32, 32)], bytes(32) + bytes(8) + bytes(24))
    bad_gap = build([ARCH], [ti("a", (2,)), ti("b", (2,), Q.F32, 32)], bytes(8) + b"\1" * 24 + bytes(8) + bytes(24))
    bad_tail = build([ARCH], [ti("a", (2,)), ti("b", (2,), Q.F32, 32)], bytes(32) + bytes(8) + b"\0\7")
    for content, want in ((ok, []), (bad_gap, ["b: non-zero padding bytes before it"]),
                          (bad_tail, ["non-zero bytes after the last tensor"])):
        with GGUFCheckpoint(write(tmp_path, content)) as ckpt:
            assert gguf_structure(ckpt) == want


def test_rewrite_gguf_round_trip(tmp_path):
    from ckptkit.fixtures.damage import rewrite_gguf

    src = _stream_file(tmp_path / "src.gguf", {
        "enc.blk.0.attn_q.weight": ((2, 32), "Q8_0", ggml.quantize(np.ones((2, 32), np.float32), "Q8_0").reshape(-1)),
        "token_embd.weight": ((4, 8), "F32", np.arange(32, dtype=np.float32))}, {"general.name": "x", "t.list": [1, 2]},
        arch="t5encoder")
    seen = []
    rewrite_gguf(src, src, lambda name, t, shape, raw: (seen.append((name, t, shape)), (t, shape, raw))[1])
    assert seen == [("enc.blk.0.attn_q.weight", "Q8_0", (2, 32)), ("token_embd.weight", "F32", (4, 8))]
    from ckptkit.quant.t5_names import to_hf

    assert_matches_gguf_py(src, rename=to_hf)


# --- random damage -------------------------------------------------------------------------------

def _fuzz_base(tmp_path: Path) -> tuple[bytes, int]:
    """A small valid GGUF (string array, uint32 array, orig_shape; F32, F16 and Q8_0 tensors) and
    where its data section starts."""
    rng = np.random.default_rng(3)
    entries = {
        "w": ((4, 8), "F32", rng.standard_normal((4, 8)).astype(np.float32)),
        "h": ((2, 32), "F16", rng.standard_normal((2, 32)).astype(np.float16)),
        "q": ((2, 32), "Q8_0", ggml.quantize(rng.standard_normal((2, 32)).astype(np.float32), "Q8_0").reshape(-1)),
    }
    w = gguf.GGUFWriter(tmp_path / "base2.gguf", "test")
    w.add_string("general.name", "fuzz")
    w.add_array("t.strings", ["alpha", "", "βeta"])
    w.add_key_value("t.u32s", [1, 2, 3, 2**32 - 1], T.ARRAY, sub_type=T.UINT32)
    w.add_uint32("t.n", 7)
    w.add_key_value(ORIG_SHAPE_KEY + "q", [4, 4, 4], T.ARRAY, sub_type=T.INT32)
    for name, (shape, type_name, raw) in entries.items():
        w.add_tensor(name, raw.reshape(shape[0], -1), raw_dtype=Q[type_name])
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    data = (tmp_path / "base2.gguf").read_bytes()
    with GGUFCheckpoint(tmp_path / "base2.gguf") as ckpt:
        assert len(ckpt) == 3 and ckpt.kv["t.u32s"] == [1, 2, 3, 2**32 - 1] and ckpt.tensors["q"].shape == (4, 4, 4)
        header_end = ckpt.data_offset
    return data, header_end


BOUNDARY_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)
BOUNDARY_U64 = (0, 1, 2**32, 2**63, 2**64 - 1)


def _mutate(data: bytes, header_end: int, rnd: random.Random) -> bytes:
    out = bytearray(data)
    where = lambda: rnd.randrange(header_end if rnd.random() < 0.85 else len(out))  # noqa: E731
    kind = rnd.randrange(5)
    if kind == 0:
        for _ in range(rnd.choice((1, 1, 2, 3))):
            i = where()
            out[i] ^= 1 << rnd.randrange(8)
    elif kind == 1:
        out[where()] = rnd.choice(BOUNDARY_BYTES)
    elif kind == 2:
        del out[rnd.randrange(len(out)):]
    elif kind == 3:
        i = min(where(), len(out) - 8)
        out[i:i + 8] = struct.pack("<Q", rnd.choice(BOUNDARY_U64))
    else:
        i = min(where(), len(out) - 4)
        out[i:i + 4] = struct.pack("<I", rnd.choice((0, 1, 2**31, 2**32 - 1, rnd.randrange(64))))
    return bytes(out)


def test_random_damage_never_escapes(tmp_path):
    data, header_end = _fuzz_base(tmp_path)
    rnd = random.Random(12345)
    path = tmp_path / "m.gguf"
    outcomes = {"refused": 0, "opened": 0, "load_refused": 0}
    for case in range(3000):
        mutated = _mutate(data, header_end, rnd)
        path.write_bytes(mutated)
        start = time.perf_counter()
        try:
            ckpt = GGUFCheckpoint(path)
        except CkptError as exc:
            assert "\n" not in str(exc), (case, str(exc))
            outcomes["refused"] += 1
        else:
            outcomes["opened"] += 1
            with ckpt:
                for name in ckpt:
                    try:
                        t = ckpt.load(name)
                        assert tuple(t.shape) == ckpt.tensors[name].shape
                    except CkptError as exc:
                        assert "\n" not in str(exc)
                        outcomes["load_refused"] += 1
        assert time.perf_counter() - start < 1.0, case
    # both branches must be exercised for the test to mean something
    assert outcomes["refused"] > 300 and outcomes["opened"] > 300, outcomes
