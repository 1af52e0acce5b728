"""A corpus of broken inputs. Each builder takes a directory, writes one bad input there and
returns its path; `open_checkpoint` must refuse every one with a one-line CkptError naming it,
except where the data below says otherwise:

* `OPEN_OK`: entries that open fine by design (a Q8_1 tensor, integer weights, zero-sized dims in a
  known layout); commands that need their values refuse them.
* `READERS`: entries not read by `open_checkpoint` but by another reader (component sets: the
  manifest reader behind `merge`; `"component_set"`).
* `SKIP_AS_ROOT`: entries that mean nothing to root (a file without read permission).
* `MAY_BLOCK`: entries holding a FIFO: a reader that opens it blindly blocks forever; run them
  with a timeout.
* `VALID_TRICKY`: valid inputs that look like broken ones (must open and load).

Builders may write helper files beside the input (e.g. the target of an index entry that points
outside its folder), always inside the directory they are given. Builders that need tiny real
models (`fixture_tree`) build them once per process; `warm_fixtures()`/`load_fixtures()` let a
parent process get them from a child (the CLI harness never runs torch compute in its parent).

Kept free of pytest so that CLI tests can reuse it (`ckptkit inspect <path>` -> exit 2, one line).
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

# The file the malicious pickle would create (beside itself) if it were ever executed.
MALICIOUS_MARKER = "PWNED_MARKER"


# --- safetensors made by hand --------------------------------------------------------------------

def safetensors_bytes(header: dict | bytes, data: bytes, length: int | None = None) -> bytes:
    """A safetensors file from a header (dict, or raw header bytes) and a data area; `length`
    overrides the 8-byte header-length field."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    return struct.pack("<Q", len(blob) if length is None else length) + blob + data


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def valid_safetensors_bytes() -> bytes:
    """Two F32 tensors of 4 values each: a 16-byte `a` then a 16-byte `b`."""
    header = {"__metadata__": {"format": "pt"}, "a": entry("F32", [2, 2], 0, 16), "b": entry("F32", [4], 16, 32)}
    return safetensors_bytes(header, np.arange(8, dtype=np.float32).tobytes())


def _write(directory: Path, name: str, content: bytes) -> Path:
    path = Path(directory) / name
    path.write_bytes(content)
    return path


def truncated_in_length(d: Path) -> Path:
    return _write(d, "cut_in_length.safetensors", valid_safetensors_bytes()[:5])


def truncated_in_header(d: Path) -> Path:
    good = valid_safetensors_bytes()
    (n,) = struct.unpack("<Q", good[:8])
    return _write(d, "cut_in_header.safetensors", good[: 8 + n // 2])


def truncated_in_data(d: Path) -> Path:
    return _write(d, "cut_in_data.safetensors", valid_safetensors_bytes()[:-6])


def header_length_past_end(d: Path) -> Path:
    good = valid_safetensors_bytes()
    return _write(d, "header_past_end.safetensors", struct.pack("<Q", len(good)) + good[8:])


def header_length_huge(d: Path) -> Path:
    good = valid_safetensors_bytes()
    return _write(d, "header_2pow63.safetensors", struct.pack("<Q", 2**63) + good[8:])


def overlapping_offsets(d: Path) -> Path:
    header = {"a": entry("F32", [4], 0, 16), "b": entry("F32", [4], 8, 24)}
    return _write(d, "overlap.safetensors", safetensors_bytes(header, bytes(24)))


def gap_between_tensors(d: Path) -> Path:
    header = {"a": entry("F32", [4], 0, 16), "b": entry("F32", [4], 20, 36)}
    return _write(d, "gap.safetensors", safetensors_bytes(header, bytes(36)))


def dtype_shape_mismatch(d: Path) -> Path:
    header = {"a": entry("F32", [3, 3], 0, 16)}  # 9 floats need 36 bytes
    return _write(d, "shape_mismatch.safetensors", safetensors_bytes(header, bytes(16)))


def unknown_dtype(d: Path) -> Path:
    header = {"a": entry("F13", [4], 0, 16)}
    return _write(d, "unknown_dtype.safetensors", safetensors_bytes(header, bytes(16)))


def invalid_utf8(d: Path) -> Path:
    blob = b'{"a\xff\xfe": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}'
    return _write(d, "bad_utf8.safetensors", safetensors_bytes(blob, bytes(16)))


def invalid_json(d: Path) -> Path:
    blob = b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]'
    return _write(d, "bad_json.safetensors", safetensors_bytes(blob, bytes(16)))


def duplicate_tensor_names(d: Path) -> Path:
    blob = (b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},'
            b' "a": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}}')
    return _write(d, "duplicate_names.safetensors", safetensors_bytes(blob, bytes(32)))


def metadata_not_dict(d: Path) -> Path:
    header = {"__metadata__": ["format", "pt"], "a": entry("F32", [4], 0, 16)}
    return _write(d, "metadata_list.safetensors", safetensors_bytes(header, bytes(16)))


# --- other inputs --------------------------------------------------------------------------------

def empty_file(d: Path) -> Path:
    return _write(d, "empty.safetensors", b"")


def directory_without_model(d: Path) -> Path:
    folder = Path(d) / "no_model_here"
    folder.mkdir()
    (folder / "README.md").write_text("nothing to load\n")
    return folder


def nonexistent_path(d: Path) -> Path:
    return Path(d) / "does_not_exist.safetensors"


def _valid_gguf_bytes() -> bytes:
    """A small valid GGUF (one KV, one 16x16 F32 tensor), as bytes."""
    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ok.gguf"
        writer = gguf.GGUFWriter(out, "test")
        writer.add_string("general.name", "corpus")
        writer.add_tensor("w", np.arange(256, dtype=np.float32).reshape(16, 16))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return out.read_bytes()


def truncated_gguf_in_data(d: Path) -> Path:
    return _write(d, "cut_in_data.gguf", _valid_gguf_bytes()[:-100])


def truncated_gguf_in_header(d: Path) -> Path:
    return _write(d, "cut_in_header.gguf", _valid_gguf_bytes()[:40])


def gguf_magic_garbage(d: Path) -> Path:
    rng = np.random.default_rng(0)
    return _write(d, "garbage.gguf", b"GGUF" + struct.pack("<I", 3) + rng.bytes(300))


def gguf_huge_counts(d: Path) -> Path:
    """Version 3 with 2**62 tensors and 2**62 KV pairs claimed: must fail fast, not allocate."""
    return _write(d, "huge_counts.gguf", b"GGUF" + struct.pack("<IQQ", 3, 2**62, 2**62) + bytes(64))


class _RunsShell:
    """Unpickling this would call os.system(command)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def malicious_pickle(d: Path) -> Path:
    """A torch.save'd checkpoint whose unpickling would run `touch <dir>/PWNED_MARKER`."""
    marker = Path(d) / MALICIOUS_MARKER
    path = Path(d) / "malicious.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": _RunsShell(f"touch {marker}")}, path)
    return path


def malicious_raw_pickle(d: Path) -> Path:
    """The same payload as a bare pickle stream (what a legacy .pt starts with)."""
    marker = Path(d) / MALICIOUS_MARKER
    return _write(d, "malicious_raw.pt", pickle.dumps(_RunsShell(f"touch {marker}"), protocol=2))


def pickle_without_tensors(d: Path) -> Path:
    path = Path(d) / "no_tensors.ckpt"
    torch.save({"state_dict": {"epoch": 3, "lr": 0.1}, "global_step": 10}, path)
    return path


def truncated_pickle(d: Path) -> Path:
    path = Path(d) / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.arange(1000, dtype=torch.float32)}}, path)
    path.write_bytes(path.read_bytes()[:1500])
    return path


def index_with_missing_shard(d: Path) -> Path:
    path = Path(d) / "model.safetensors.index.json"
    path.write_text(json.dumps({"metadata": {}, "weight_map": {"w": "model-00001-of-00002.safetensors"}}))
    return path


# === GGUF made by hand ===========================================================================
# gguf v3: magic, version u32, tensor count u64, KV count u64; KVs (key string, value type u32,
# value); tensor infos (name string, n_dims u32, dims u64 (ggml order: row length first), ggml type
# u32, offset u64 from the data start); zero padding to the alignment; the data area.

GGUF_VALUE = {"UINT8": 0, "INT8": 1, "UINT16": 2, "INT16": 3, "UINT32": 4, "INT32": 5, "FLOAT32": 6,
              "BOOL": 7, "STRING": 8, "ARRAY": 9, "UINT64": 10, "INT64": 11, "FLOAT64": 12}
GGML_F32, GGML_Q8_1 = 0, 9
_SCALAR = {"UINT8": "<B", "INT8": "<b", "UINT16": "<H", "INT16": "<h", "UINT32": "<I", "INT32": "<i",
           "FLOAT32": "<f", "BOOL": "<?", "UINT64": "<Q", "INT64": "<q", "FLOAT64": "<d"}


def gguf_string(value: str | bytes, length: int | None = None) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return struct.pack("<Q", len(raw) if length is None else length) + raw


def gguf_kv(key: str, vtype: str | int, value=None, raw: bytes | None = None, item_type: str = "INT32") -> bytes:
    """One KV pair. `vtype` a GGUF_VALUE name (or a raw number); `raw` replaces the encoded value."""
    code = GGUF_VALUE[vtype] if isinstance(vtype, str) else vtype
    if raw is None:
        if vtype == "STRING":
            raw = gguf_string(value)
        elif vtype == "ARRAY":
            raw = struct.pack("<IQ", GGUF_VALUE[item_type], len(value))
            raw += b"".join(gguf_string(v) if item_type == "STRING" else struct.pack(_SCALAR[item_type], v) for v in value)
        else:
            raw = struct.pack(_SCALAR[vtype], value)
    return gguf_string(key) + struct.pack("<I", code) + raw


def gguf_tensor_info(name: str, dims: tuple[int, ...], ggml_type: int, offset: int, n_dims: int | None = None) -> bytes:
    """`dims` in ggml order (row length first)."""
    return (gguf_string(name) + struct.pack("<I", len(dims) if n_dims is None else n_dims)
            + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ggml_type, offset))


def _w_data() -> bytes:
    return np.arange(256, dtype=np.float32).tobytes()


def gguf_bytes(kvs: list[bytes] | None = None, infos: list[bytes] | None = None, data: bytes | None = None,
               version: int = 3, n_tensors: int | None = None, n_kv: int | None = None, alignment: int = 32) -> bytes:
    """A GGUF file. Without arguments a valid one: KV general.name, one 16x16 F32 tensor `w` (arange)."""
    kvs = [gguf_kv("general.name", "STRING", "corpus")] if kvs is None else kvs
    infos = [gguf_tensor_info("w", (16, 16), GGML_F32, 0)] if infos is None else infos
    data = _w_data() if data is None else data
    head = b"GGUF" + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(infos)
    pad = (-len(body)) % alignment if alignment > 0 else 0
    return body + bytes(pad) + data


def _gguf_with_one_bad_tensor(dims, ggml_type=GGML_F32, offset=0, n_dims=None, data=None) -> bytes:
    return gguf_bytes(infos=[gguf_tensor_info("w", dims, ggml_type, offset, n_dims)], data=data)


def gguf_kv_array_2pow40(d: Path) -> Path:
    """64 bytes: one KV, an UINT8 array claiming 2**40 elements."""
    blob = gguf_bytes(kvs=[gguf_kv("a", "ARRAY", raw=struct.pack("<IQ", GGUF_VALUE["UINT8"], 2**40))], infos=[], data=b"")
    return _write(d, "kv_array_2pow40.gguf", blob.ljust(64, b"\0")[:64])


def gguf_string_kv_flipped_to_array(d: Path) -> Path:
    """A valid GGUF (gguf-py's writer) whose string KV `general.name` has its type byte flipped to
    ARRAY: the string length becomes the item type and the text the item count."""
    good = _valid_gguf_bytes()
    key = gguf_string("general.name")
    at = good.index(key) + len(key)
    assert struct.unpack_from("<I", good, at)[0] == GGUF_VALUE["STRING"]
    return _write(d, "string_kv_flipped.gguf", good[:at] + struct.pack("<I", GGUF_VALUE["ARRAY"]) + good[at + 4:])


def gguf_string_length_2pow62(d: Path) -> Path:
    kv = gguf_string("general.name") + struct.pack("<I", GGUF_VALUE["STRING"]) + gguf_string(b"corpus", 2**62)
    return _write(d, "string_len_2pow62.gguf", gguf_bytes(kvs=[kv]))


def gguf_tensor_count_2pow40(d: Path) -> Path:
    """2**40 tensors claimed, no KV, 40 bytes after the header."""
    return _write(d, "tensor_count_2pow40.gguf", b"GGUF" + struct.pack("<IQQ", 3, 2**40, 0) + bytes(40))


def gguf_unknown_kv_type(d: Path) -> Path:
    return _write(d, "unknown_kv_type.gguf", gguf_bytes(kvs=[gguf_kv("general.name", 99, raw=b"\0\0\0\0")]))


def gguf_unknown_tensor_type(d: Path) -> Path:
    return _write(d, "unknown_tensor_type.gguf", _gguf_with_one_bad_tensor((16, 16), ggml_type=200))


def gguf_ndims_0(d: Path) -> Path:
    return _write(d, "ndims_0.gguf", _gguf_with_one_bad_tensor((), data=_w_data()[:4]))


def gguf_ndims_9(d: Path) -> Path:
    """Nine dimensions (ggml has at most four); 16*16*1*...*1 = 256 values as stored."""
    return _write(d, "ndims_9.gguf", _gguf_with_one_bad_tensor((16, 16, 1, 1, 1, 1, 1, 1, 1)))


def gguf_zero_dim(d: Path) -> Path:
    return _write(d, "zero_dim.gguf", _gguf_with_one_bad_tensor((16, 0), data=b""))


def gguf_offset_2pow64_minus_32(d: Path) -> Path:
    """An aligned offset that wraps around when added to the data start."""
    return _write(d, "offset_2pow64.gguf", _gguf_with_one_bad_tensor((16, 16), offset=2**64 - 32))


def gguf_offset_past_end(d: Path) -> Path:
    return _write(d, "offset_past_end.gguf", _gguf_with_one_bad_tensor((16, 16), offset=4096))


def gguf_misaligned_offset(d: Path) -> Path:
    """Offset 4 with the default alignment 32 (the data area is long enough)."""
    return _write(d, "misaligned.gguf", _gguf_with_one_bad_tensor((16, 16), offset=4, data=bytes(4) + _w_data()))


def gguf_overlapping_tensors(d: Path) -> Path:
    infos = [gguf_tensor_info("w", (16, 16), GGML_F32, 0), gguf_tensor_info("v", (16, 16), GGML_F32, 512)]
    return _write(d, "overlap.gguf", gguf_bytes(infos=infos, data=_w_data() + bytes(512)))


def gguf_gap_beyond_padding(d: Path) -> Path:
    """`v` starts 64 bytes after `w` ends, though `w` ends aligned (the padding would be 0)."""
    infos = [gguf_tensor_info("w", (16, 16), GGML_F32, 0), gguf_tensor_info("v", (16, 16), GGML_F32, 1024 + 64)]
    return _write(d, "gap.gguf", gguf_bytes(infos=infos, data=_w_data() + bytes(64) + _w_data()))


def gguf_alignment_0(d: Path) -> Path:
    kvs = [gguf_kv("general.alignment", "UINT32", 0), gguf_kv("general.name", "STRING", "corpus")]
    return _write(d, "alignment_0.gguf", gguf_bytes(kvs=kvs))


def gguf_alignment_3(d: Path) -> Path:
    kvs = [gguf_kv("general.alignment", "UINT32", 3), gguf_kv("general.name", "STRING", "corpus")]
    return _write(d, "alignment_3.gguf", gguf_bytes(kvs=kvs, alignment=3))


def _gguf_orig_shape(d: Path, name: str, kv: bytes) -> Path:
    return _write(d, name, gguf_bytes(kvs=[gguf_kv("general.name", "STRING", "corpus"), kv]))


def gguf_orig_shape_string(d: Path) -> Path:
    return _gguf_orig_shape(d, "orig_shape_string.gguf", gguf_kv("comfy.gguf.orig_shape.w", "STRING", "16,16"))


def gguf_orig_shape_scalar(d: Path) -> Path:
    return _gguf_orig_shape(d, "orig_shape_scalar.gguf", gguf_kv("comfy.gguf.orig_shape.w", "UINT32", 256))


def gguf_orig_shape_negative(d: Path) -> Path:
    """[-16, -16]: the product matches the 256 stored values."""
    return _gguf_orig_shape(d, "orig_shape_negative.gguf", gguf_kv("comfy.gguf.orig_shape.w", "ARRAY", [-16, -16]))


def gguf_orig_shape_wrong_product(d: Path) -> Path:
    return _gguf_orig_shape(d, "orig_shape_product.gguf", gguf_kv("comfy.gguf.orig_shape.w", "ARRAY", [3, 5]))


def gguf_q8_1_tensor(d: Path) -> Path:
    """A well-formed Q8_1 tensor (16 rows of 32), a type ckptkit cannot dequantize. Opens fine;
    whatever needs its values must refuse. Block size as gguf-py's GGML_QUANT_SIZES has it."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_1]
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 16 * size * (32 // block), dtype=np.uint8).tobytes()
    return _write(d, "q8_1.gguf", gguf_bytes(infos=[gguf_tensor_info("w", (32, 16), GGML_Q8_1, 0)], data=data))


def gguf_version_1(d: Path) -> Path:
    return _write(d, "version_1.gguf", gguf_bytes(version=1))


# === safetensors, more ===========================================================================

def _pad_header_to_low_byte(header: dict, low: int) -> bytes:
    blob = json.dumps(header).encode("utf-8")
    return blob + b" " * ((low - len(blob)) % 256)


def header_length_low_byte_0x80(d: Path) -> Path:
    """VALID: the header is padded with spaces so that its length's low byte, the file's first
    byte, is 0x80 (a pickle's first byte)."""
    header = {"__metadata__": {"format": "pt"}, "a": entry("F32", [2, 2], 0, 16), "b": entry("F32", [4], 16, 32)}
    blob = _pad_header_to_low_byte(header, 0x80)
    return _write(d, "low_byte_0x80.safetensors", safetensors_bytes(blob, np.arange(8, dtype=np.float32).tobytes()))


def _deep_list(depth: int) -> str:
    return "[" * depth + "]" * depth


def header_nested_100000_deep(d: Path) -> Path:
    blob = ('{"__metadata__": {"x": "y"}, "deep": ' + _deep_list(100_000)
            + ', "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}').encode()
    return _write(d, "nested_deep.safetensors", safetensors_bytes(blob, bytes(16)))


def dtype_as_list(d: Path) -> Path:
    header = {"a": {"dtype": ["F32"], "shape": [4], "data_offsets": [0, 16]}}
    return _write(d, "dtype_list.safetensors", safetensors_bytes(header, bytes(16)))


def dtype_as_dict(d: Path) -> Path:
    header = {"a": {"dtype": {"F32": 1}, "shape": [4], "data_offsets": [0, 16]}}
    return _write(d, "dtype_dict.safetensors", safetensors_bytes(header, bytes(16)))


def shape_entry_10pow30(d: Path) -> Path:
    header = {"a": entry("F32", [10**30], 0, 16)}
    return _write(d, "shape_1e30.safetensors", safetensors_bytes(header, bytes(16)))


def shape_entry_negative(d: Path) -> Path:
    header = {"a": entry("F32", [-4, -1], 0, 16)}  # the product (4) matches the 16 bytes
    return _write(d, "shape_negative.safetensors", safetensors_bytes(header, bytes(16)))


def shape_as_string(d: Path) -> Path:
    header = {"a": {"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}}
    return _write(d, "shape_string.safetensors", safetensors_bytes(header, bytes(16)))


def data_offsets_floats(d: Path) -> Path:
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0.0, 16.0]}}
    return _write(d, "offsets_float.safetensors", safetensors_bytes(header, bytes(16)))


def metadata_values_not_strings(d: Path) -> Path:
    header = {"__metadata__": {"format": "pt", "epoch": 3, "tags": ["a"], "nested": {"k": "v"}},
              "a": entry("F32", [4], 0, 16)}
    return _write(d, "metadata_values.safetensors", safetensors_bytes(header, bytes(16)))


FORGED_LINE = "\nckptkit: error: forged"


def tensor_name_forges_error_line(d: Path) -> Path:
    """A tensor name holding a newline and a fake error line, in a file whose data area is cut
    short: the refusal must stay one line (the name escaped)."""
    header = {"b": entry("F32", [4], 0, 16), "a" + FORGED_LINE: entry("F32", [4], 16, 32)}
    return _write(d, "forged_name.safetensors", safetensors_bytes(header, bytes(26)))


def _sd1_unet_shapes() -> dict[str, list[int]]:
    """The SD1 fixture's diffusion model: original (prefix-stripped) names -> shapes."""
    return json.loads(fixture_tree("sd1_unet_shapes")["shapes.json"])


def int64_weights_known_layout(d: Path) -> Path:
    """OPEN_OK: the SD1 diffusion model's names and shapes (a known family), every tensor I64 zeros."""
    header, offset = {}, 0
    for name, shape in _sd1_unet_shapes().items():
        n = int(np.prod(shape)) * 8
        header[name] = entry("I64", shape, offset, offset + n)
        offset += n
    return _write(d, "sd1_unet_int64.safetensors", safetensors_bytes(header, bytes(offset)))


def zero_dims_known_layout(d: Path) -> Path:
    """OPEN_OK: the SD1 diffusion model's names with every first dim 0 (0 bytes of data); the
    other dims kept, so detection (which looks at dim 1) still sees SD1."""
    header = {name: entry("F16", [0, *shape[1:]], 0, 0) for name, shape in _sd1_unet_shapes().items()}
    return _write(d, "sd1_unet_zero_dims.safetensors", safetensors_bytes(header, b""))


# === pickles, more ===============================================================================

def pth_expanded_stride0_1d(d: Path) -> Path:
    """torch.zeros(1).expand(10**9): one stored value (a ~1.5 KB file), 10**9 elements (4 GB) if
    materialised."""
    path = Path(d) / "expanded_1d.pth"
    torch.save({"w": torch.zeros(1).expand(10**9)}, path)
    return path


def pth_expanded_stride0_2d(d: Path) -> Path:
    """torch.zeros(4, 1).expand(4, 2**28): 4 stored values, 2**30 elements (4 GB) if materialised."""
    path = Path(d) / "expanded_2d.pth"
    torch.save({"w": torch.zeros(4, 1).expand(4, 2**28)}, path)
    return path


class _NegativeShape:
    """Pickles as torch's own tensor rebuild with shape [-1, 0, 2] over a real storage: torch.load
    builds the (empty) tensor, and any copy of it raises (found by bench/fuzz.py)."""

    def __reduce__(self):
        from collections import OrderedDict

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            storage = torch.zeros(4).storage()
        return torch._utils._rebuild_tensor_v2, (storage, 0, (-1, 0, 2), (2, 2, 1), False, OrderedDict())


def pth_negative_dimension(d: Path) -> Path:
    path = Path(d) / "negative_dim.pth"
    torch.save({"w": _NegativeShape()}, path)
    return path


def pth_sparse_coo(d: Path) -> Path:
    path = Path(d) / "sparse_coo.pth"
    indices = torch.tensor([[0, 1], [1, 0]])
    with warnings.catch_warnings():  # torch's beta/invariant warnings, at build time
        warnings.simplefilter("ignore")
        torch.save({"w": torch.sparse_coo_tensor(indices, torch.tensor([1.0, 2.0]), (2, 2))}, path)
    return path


def pth_sparse_csr(d: Path) -> Path:
    """A non-strided layout (sparse CSR)."""
    path = Path(d) / "sparse_csr.pth"
    crow, col = torch.tensor([0, 1, 2]), torch.tensor([1, 0])
    with warnings.catch_warnings():  # torch's beta/invariant warnings, at build time
        warnings.simplefilter("ignore")
        torch.save({"w": torch.sparse_csr_tensor(crow, col, torch.tensor([1.0, 2.0]), (2, 2))}, path)
    return path


def pth_meta_tensor(d: Path) -> Path:
    """A tensor on the meta device: a shape of 10**9 elements and no data at all."""
    path = Path(d) / "meta.pth"
    torch.save({"w": torch.empty(10**9, device="meta")}, path)
    return path


def pickle_state_dict_values_not_tensors(d: Path) -> Path:
    """A state_dict whose values are all non-tensors (lists, nested dicts, strings)."""
    path = Path(d) / "values_not_tensors.ckpt"
    torch.save({"state_dict": {"w": [0.0, 1.0], "b": {"data": [1.0]}, "c": "tensor"}}, path)
    return path


def malicious_legacy_pickle(d: Path) -> Path:
    """The code-execution payload in the legacy (pre-zipfile) torch.save format."""
    marker = Path(d) / MALICIOUS_MARKER
    path = Path(d) / "malicious_legacy.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": _RunsShell(f"touch {marker}")}, path,
               _use_new_zipfile_serialization=False)
    return path


def zip_with_garbage_data_pkl(d: Path) -> Path:
    """A torch zip archive whose data.pkl is garbage (not a pickle asking for code: just noise)."""
    import io
    import zipfile

    good = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, good)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good.getvalue())) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                data = bytes(range(7, 250))
            zout.writestr(info.filename, data)
    return _write(d, "garbage_data_pkl.pth", out.getvalue())


def starts_with_0x80_neither(d: Path) -> Path:
    """A `.safetensors` file starting with 0x80 (a pickle's first byte) that is neither a pickle nor
    a safetensors file: header length 128, then 128 bytes of noise."""
    rng = np.random.default_rng(1)
    return _write(d, "neither.safetensors", struct.pack("<Q", 0x80) + rng.bytes(128) + bytes(16))


def pickle_holding_list(d: Path) -> Path:
    path = Path(d) / "list.pt"
    torch.save([torch.zeros(2), torch.ones(2)], path)
    return path


# === JSON side files =============================================================================

def _valid_file(folder: Path, name: str = "model.safetensors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return _write(folder, name, valid_safetensors_bytes())


def _index(folder: Path, content: str | dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.safetensors.index.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def index_nested_100000_deep(d: Path) -> Path:
    folder = Path(d) / "nested_index"
    _valid_file(folder, "model-00001-of-00001.safetensors")
    return _index(folder, '{"metadata": ' + _deep_list(100_000)
                  + ', "weight_map": {"a": "model-00001-of-00001.safetensors"}}')


def index_weight_map_value_int(d: Path) -> Path:
    folder = Path(d) / "int_index"
    _valid_file(folder, "model-00001-of-00001.safetensors")
    return _index(folder, {"metadata": {}, "weight_map": {"a": "model-00001-of-00001.safetensors", "b": 3}})


def index_weight_map_value_list(d: Path) -> Path:
    folder = Path(d) / "list_index"
    _valid_file(folder, "model-00001-of-00001.safetensors")
    return _index(folder, {"metadata": {}, "weight_map": {"a": ["model-00001-of-00001.safetensors"]}})


def index_weight_map_parent_escape(d: Path) -> Path:
    """`../outside.safetensors`; the target exists (valid, holds `a` and `b`), so following it works."""
    _valid_file(Path(d), "outside.safetensors")
    return _index(Path(d) / "escape_index", {"metadata": {}, "weight_map": {"a": "../outside.safetensors",
                                                                            "b": "../outside.safetensors"}})


def index_weight_map_absolute(d: Path) -> Path:
    """An absolute shard path to an existing valid file outside the index's folder."""
    target = _valid_file(Path(d) / "elsewhere", "abs_target.safetensors").resolve()
    return _index(Path(d) / "absolute_index", {"metadata": {}, "weight_map": {"a": str(target), "b": str(target)}})


def _vae_component(folder: Path, config: dict | str | None = None) -> Path:
    """The SD1 fixture's VAE as a diffusers component folder; `config` replaces config.json
    (a dict is merged over the real one, a string is written as is)."""
    folder.mkdir(parents=True, exist_ok=True)
    tree = fixture_tree("sd1_vae_diffusers")
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(tree["diffusion_pytorch_model.safetensors"])
    real = json.loads(tree["config.json"])
    if isinstance(config, str):
        text = config
    else:
        text = json.dumps({**real, **(config or {})}, indent=2)
    if config is not None or not (folder / "config.json").exists():
        (folder / "config.json").write_text(text)
    return folder


def diffusers_config_nested_deep(d: Path) -> Path:
    return _vae_component(Path(d) / "vae_nested", '{"_class_name": "AutoencoderKL", "x": ' + _deep_list(100_000) + "}")


def diffusers_config_value_wrong_type(d: Path) -> Path:
    """config.json with `"in_channels": "four"` (and an unknown key holding a list of nulls)."""
    return _vae_component(Path(d) / "vae_wrong_type", {"in_channels": "four", "unknown_key": [None, None]})


def diffusers_config_class_name_list(d: Path) -> Path:
    """config.json with `"_class_name": ["x"]` and an `auto_map` that is not a mapping."""
    return _vae_component(Path(d) / "vae_class_list", {"_class_name": ["x"], "auto_map": 5})


def _pipeline(root: Path, index) -> Path:
    _vae_component(root / "vae")
    (root / "model_index.json").write_text(index if isinstance(index, str) else json.dumps(index, indent=2))
    return root


def model_index_is_list(d: Path) -> Path:
    return _pipeline(Path(d) / "pipe_list", json.dumps([["diffusers", "AutoencoderKL"]]))


def model_index_entry_int(d: Path) -> Path:
    """model_index.json whose component entries are ints (`"vae": 5`); the vae/ folder is real."""
    return _pipeline(Path(d) / "pipe_int", {"_class_name": "StableDiffusionPipeline", "vae": 5, "unet": 7})


def model_index_subfolder_escape(d: Path) -> Path:
    """model_index.json naming a component `../x`; a real VAE folder sits at ../x, so following it works."""
    _vae_component(Path(d) / "x")
    return _pipeline(Path(d) / "pipe_escape", {"_class_name": "StableDiffusionPipeline",
                                                "vae": ["diffusers", "AutoencoderKL"],
                                                "../x": ["diffusers", "AutoencoderKL"]})


def _component_set(root: Path, edit: Callable[[dict], dict | str] | None = None, tree_key: str = "sd1_component_set") -> Path:
    """A component set written by `ckptkit split` (tree_key: which), with its ckptkit.json
    replaced by `edit(manifest)` (a dict, or the text to write)."""
    tree = fixture_tree(tree_key)
    _materialize(tree, root)
    if edit is not None:
        manifest = json.loads(tree["ckptkit.json"])
        new = edit(manifest)
        (root / "ckptkit.json").write_text(new if isinstance(new, str) else json.dumps(new, indent=2))
    return root


def component_set_components_string(d: Path) -> Path:
    return _component_set(Path(d) / "set_components_str", lambda m: {**m, "components": "diffusion_model.safetensors"})


def component_set_component_int(d: Path) -> Path:
    return _component_set(Path(d) / "set_component_int",
                          lambda m: {**m, "components": {**m["components"], "diffusion_model": 5}})


def component_set_family_list(d: Path) -> Path:
    return _component_set(Path(d) / "set_family_list", lambda m: {**m, "family": [m["family"]]})


def _redirect_file(m: dict, component: str, target: str) -> dict:
    comps = {k: dict(v) for k, v in m["components"].items()}
    comps[component]["file"] = target
    return {**m, "components": comps}


def component_set_file_parent_escape(d: Path) -> Path:
    """A component's `file` is `../elsewhere.safetensors`; that file exists (a copy of the real
    component, sha256 matching), so following it works."""
    root = Path(d) / "set_escape"
    _component_set(root, lambda m: _redirect_file(m, "vae", "../elsewhere.safetensors"))
    (Path(d) / "elsewhere.safetensors").write_bytes((root / "vae.safetensors").read_bytes())
    (root / "vae.safetensors").unlink()
    return root


def component_set_file_absolute(d: Path) -> Path:
    """A component's `file` is an absolute path to an existing copy of the real component."""
    target = (Path(d) / "elsewhere_abs" / "vae.safetensors").resolve()
    target.parent.mkdir()
    root = Path(d) / "set_absolute"
    _component_set(root, lambda m: _redirect_file(m, "vae", str(target)))
    target.write_bytes((root / "vae.safetensors").read_bytes())
    (root / "vae.safetensors").unlink()
    return root


def component_set_time_scale_abc(d: Path) -> Path:
    """A Sana TrigFlow set (`ckptkit trigflow --layout original`) whose manifest records
    trigflow.time_scale "abc"."""
    def edit(m):
        return {**m, "trigflow": {**m.get("trigflow", {}), "time_scale": "abc"}}
    return _component_set(Path(d) / "set_time_scale", edit, tree_key="sana_trigflow_set")


def component_set_manifest_nested_deep(d: Path) -> Path:
    def edit(m):
        text = json.dumps(m)
        return text[:-1] + ', "notes_deep": ' + _deep_list(100_000) + "}"
    return _component_set(Path(d) / "set_nested", edit)


# === special files ===============================================================================

def fifo_as_weights(d: Path) -> Path:
    path = Path(d) / "fifo.safetensors"
    os.mkfifo(path)
    return path


def fifo_in_manifest(d: Path) -> Path:
    """A component set whose ckptkit.json names a FIFO (vae.safetensors replaced by one)."""
    root = _component_set(Path(d) / "set_fifo")
    (root / "vae.safetensors").unlink()
    os.mkfifo(root / "vae.safetensors")
    return root


def fifo_in_index(d: Path) -> Path:
    folder = Path(d) / "fifo_index"
    folder.mkdir()
    os.mkfifo(folder / "model-00001-of-00001.safetensors")
    return _index(folder, {"metadata": {}, "weight_map": {"a": "model-00001-of-00001.safetensors"}})


def fifo_as_config_json(d: Path) -> Path:
    folder = Path(d) / "vae_fifo_config"
    folder.mkdir()
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(
        fixture_tree("sd1_vae_diffusers")["diffusion_pytorch_model.safetensors"])
    os.mkfifo(folder / "config.json")
    return folder


def directory_named_safetensors(d: Path) -> Path:
    path = Path(d) / "x.safetensors"
    path.mkdir()
    return path


def symlink_loop(d: Path) -> Path:
    a, b = Path(d) / "loop_a.safetensors", Path(d) / "loop_b.safetensors"
    os.symlink(b.name, a)
    os.symlink(a.name, b)
    return a


def unreadable_file(d: Path) -> Path:
    """A valid file without read permission. Meaningless as root (root reads anything): SKIP_AS_ROOT."""
    path = _write(d, "unreadable.safetensors", valid_safetensors_bytes())
    path.chmod(0)
    return path


# === tiny real models, built once per process ====================================================

_FIXTURES: dict[str, dict[str, bytes]] = {}


def _tree_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _materialize(tree: dict[str, bytes], root: Path) -> None:
    for rel, content in tree.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def _run_cli(*args: str) -> None:
    from ckptkit.cli import cli

    cli.main(args=[str(a) for a in args], prog_name="ckptkit", standalone_mode=False)


def _make_sd1_unet_shapes() -> dict[str, bytes]:
    from ckptkit.fixtures.factory import original_state

    shapes = {k: list(v.shape) for k, v in original_state("sd1", "diffusion_model").items()}
    return {"shapes.json": json.dumps(shapes).encode()}


def _make_sd1_vae_diffusers() -> dict[str, bytes]:
    import diffusers

    from ckptkit.fixtures.factory import component_model, diffusers_state
    from ckptkit.formats.safetensors import save_safetensors

    config = {"_class_name": "AutoencoderKL", "_diffusers_version": diffusers.__version__,
              **dict(component_model("sd1", "vae").config)}
    with tempfile.TemporaryDirectory() as tmp:
        state = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in diffusers_state("sd1", "vae").items()}
        save_safetensors(Path(tmp) / "w.safetensors", state)
        weights = (Path(tmp) / "w.safetensors").read_bytes()
    return {"config.json": json.dumps(config, indent=2, default=list).encode(), "diffusion_pytorch_model.safetensors": weights}


def _make_sd1_bundle() -> dict[str, bytes]:
    from ckptkit.fixtures.factory import write_bundle

    with tempfile.TemporaryDirectory() as tmp:
        return {"sd1.safetensors": write_bundle("sd1", Path(tmp) / "sd1.safetensors").read_bytes()}


def _make_sd1_component_set() -> dict[str, bytes]:
    """`ckptkit split sd1.safetensors --components diffusion_model,vae` (comfy layout)."""
    with tempfile.TemporaryDirectory() as tmp:
        _materialize(fixture_tree("sd1_bundle"), Path(tmp))
        _run_cli("split", Path(tmp) / "sd1.safetensors", "-o", Path(tmp) / "set", "--components", "diffusion_model,vae")
        return _tree_of(Path(tmp) / "set")


def _make_sana_trigflow_set() -> dict[str, bytes]:
    """`ckptkit trigflow sana.safetensors --layout original` on the Sana fixture's transformer."""
    from ckptkit.fixtures.factory import original_state, shipped_configs
    from ckptkit.formats.safetensors import save_safetensors

    with tempfile.TemporaryDirectory() as tmp:
        state = {k: v.to(torch.float16) for k, v in original_state("sana", "diffusion_model").items()}
        save_safetensors(Path(tmp) / "sana.safetensors", state, shipped_configs("sana", ["diffusion_model"]))
        _run_cli("trigflow", Path(tmp) / "sana.safetensors", "-o", Path(tmp) / "set", "--layout", "original")
        return _tree_of(Path(tmp) / "set")


_FIXTURE_MAKERS: dict[str, Callable[[], dict[str, bytes]]] = {
    "sd1_unet_shapes": _make_sd1_unet_shapes,
    "sd1_vae_diffusers": _make_sd1_vae_diffusers,
    "sd1_bundle": _make_sd1_bundle,
    "sd1_component_set": _make_sd1_component_set,
    "sana_trigflow_set": _make_sana_trigflow_set,
}


def fixture_tree(key: str) -> dict[str, bytes]:
    """Files (relative path -> bytes) of one tiny real model form, built on first use."""
    if key not in _FIXTURES:
        _FIXTURES[key] = _FIXTURE_MAKERS[key]()
    return _FIXTURES[key]


def warm_fixtures() -> dict[str, dict[str, bytes]]:
    """Build every fixture tree (in a child process: it runs torch)."""
    for key in _FIXTURE_MAKERS:
        fixture_tree(key)
    return dict(_FIXTURES)


def load_fixtures(trees: dict[str, dict[str, bytes]]) -> None:
    """Hand the trees a child built to this process (builders then never run torch compute)."""
    _FIXTURES.update(trees)


def write_fixture(key: str, root: Path) -> Path:
    """Write one fixture tree under `root`; returns `root` (or the one file in it)."""
    tree = fixture_tree(key)
    _materialize(tree, Path(root))
    return Path(root) / next(iter(tree)) if len(tree) == 1 else Path(root)


# === the corpus ==================================================================================

# name -> builder; a test can parametrize over this.
CORPUS: dict[str, Callable[[Path], Path]] = {
    fn.__name__: fn
    for fn in (
        truncated_in_length, truncated_in_header, truncated_in_data, header_length_past_end,
        header_length_huge, overlapping_offsets, gap_between_tensors, dtype_shape_mismatch,
        unknown_dtype, invalid_utf8, invalid_json, duplicate_tensor_names, metadata_not_dict,
        empty_file, directory_without_model, nonexistent_path,
        truncated_gguf_in_data, truncated_gguf_in_header, gguf_magic_garbage, gguf_huge_counts,
        malicious_pickle, malicious_raw_pickle, pickle_without_tensors, truncated_pickle,
        index_with_missing_shard,
        # GGUF
        gguf_kv_array_2pow40, gguf_string_kv_flipped_to_array, gguf_string_length_2pow62,
        gguf_tensor_count_2pow40, gguf_unknown_kv_type, gguf_unknown_tensor_type, gguf_ndims_0, gguf_ndims_9,
        gguf_zero_dim, gguf_offset_2pow64_minus_32, gguf_offset_past_end, gguf_misaligned_offset,
        gguf_overlapping_tensors, gguf_gap_beyond_padding, gguf_alignment_0, gguf_alignment_3,
        gguf_orig_shape_string, gguf_orig_shape_scalar, gguf_orig_shape_negative, gguf_orig_shape_wrong_product,
        gguf_q8_1_tensor, gguf_version_1,
        # safetensors
        header_nested_100000_deep, dtype_as_list, dtype_as_dict, shape_entry_10pow30, shape_entry_negative,
        shape_as_string, data_offsets_floats, metadata_values_not_strings, tensor_name_forges_error_line,
        int64_weights_known_layout, zero_dims_known_layout,
        # pickles
        pth_expanded_stride0_1d, pth_expanded_stride0_2d, pth_negative_dimension, pth_sparse_coo, pth_sparse_csr, pth_meta_tensor,
        pickle_state_dict_values_not_tensors, malicious_legacy_pickle, zip_with_garbage_data_pkl,
        starts_with_0x80_neither, pickle_holding_list,
        # JSON side files
        index_nested_100000_deep, index_weight_map_value_int, index_weight_map_value_list,
        index_weight_map_parent_escape, index_weight_map_absolute,
        diffusers_config_nested_deep, diffusers_config_value_wrong_type, diffusers_config_class_name_list,
        model_index_is_list, model_index_entry_int, model_index_subfolder_escape,
        component_set_components_string, component_set_component_int, component_set_family_list,
        component_set_file_parent_escape, component_set_file_absolute, component_set_time_scale_abc,
        component_set_manifest_nested_deep,
        # special files
        fifo_as_weights, fifo_in_manifest, fifo_in_index, fifo_as_config_json, directory_named_safetensors,
        symlink_loop, unreadable_file,
    )
}

# Open fine by design: a type ckptkit cannot dequantize (refused when values are needed), integer
# weights and zero-sized dims in a known layout (refused by the commands that compute).
# Entries that open by design: what is wrong shows when values are needed (Q8_1 cannot be
# dequantized; integer or empty weights cannot make a model) or when a model is built from the
# folder's config (its field types are checked against the model class, convert/models.py).
OPEN_OK: frozenset[str] = frozenset({"gguf_q8_1_tensor", "int64_weights_known_layout", "zero_dims_known_layout",
                                     "diffusers_config_value_wrong_type"})

# Entries read by another reader than open_checkpoint: "component_set" = ckptkit.json and the files it
# names (ckptkit.convert.merge.open_component_set, what merge/quantize/verify/sample read).
READERS: dict[str, str] = {name: "component_set" for name in CORPUS
                           if name.startswith("component_set_") or name == "fifo_in_manifest"}

# Entries whose input holds a FIFO: whatever opens it without checking blocks forever.
MAY_BLOCK: frozenset[str] = frozenset({"fifo_as_weights", "fifo_in_manifest", "fifo_in_index", "fifo_as_config_json"})

# Root reads a file without read permission: the entry tests nothing then.
SKIP_AS_ROOT: frozenset[str] = frozenset({"unreadable_file"})

# Valid inputs that look broken: they must open (and load) like any other.
VALID_TRICKY: dict[str, Callable[[Path], Path]] = {fn.__name__: fn for fn in (header_length_low_byte_0x80,)}
