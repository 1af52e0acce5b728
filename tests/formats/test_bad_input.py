"""Broken inputs are refused with one readable line; writers leave nothing behind; reading never
modifies the input."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from ckptkit.errors import CkptError
from ckptkit.formats import open_checkpoint
from ckptkit.formats.gguf import GGUFStreamWriter
from ckptkit.formats.safetensors import SafetensorsWriter, save_safetensors
from tests.formats import corpus

# builder name -> words the message must contain (besides the path), so a refusal is for the
# right reason and not an accident of a later check. For entries in corpus.OPEN_OK: the words of the
# refusal when their values are loaded (None: loading works too; only the commands that compute refuse).
EXPECTED_REASON: dict[str, str | None] = {
    "truncated_in_length": "shorter than the 8-byte header length",
    "truncated_in_header": "runs past the end",
    "truncated_in_data": "truncated",
    "header_length_past_end": "runs past the end",
    "header_length_huge": "exceeds",
    "overlapping_offsets": "overlaps",
    "gap_between_tensors": "gap of 4 bytes",
    "dtype_shape_mismatch": "needs 36 bytes",
    "unknown_dtype": "unknown dtype 'F13'",
    "invalid_utf8": "not valid UTF-8",
    "invalid_json": "not valid JSON",
    "duplicate_tensor_names": "duplicate key 'a'",
    "metadata_not_dict": "__metadata__",
    "empty_file": "empty file",
    "directory_without_model": "no model",
    "nonexistent_path": "no such file",
    "truncated_gguf_in_data": "not a valid GGUF file",
    "truncated_gguf_in_header": "not a valid GGUF file",
    "gguf_magic_garbage": "not a valid GGUF file",
    "gguf_huge_counts": "not a valid GGUF file",
    "malicious_pickle": "refused",
    "malicious_raw_pickle": "refused",
    "pickle_without_tensors": "holds no tensors",
    "truncated_pickle": "not a readable torch checkpoint",
    "index_with_missing_shard": "is missing",
    # GGUF: the claim that does not fit, named with its number
    "gguf_kv_array_2pow40": "claims an array of 1099511627776",
    "gguf_string_kv_flipped_to_array": "key 'general.name'",
    "gguf_string_length_2pow62": "claims 4611686018427387904 bytes",
    "gguf_tensor_count_2pow40": "1099511627776 tensors",
    "gguf_unknown_kv_type": "unknown value type 99",
    "gguf_unknown_tensor_type": "unknown ggml type 200",
    "gguf_ndims_0": "0 dimensions",
    "gguf_ndims_9": "9 dimensions",
    "gguf_zero_dim": "zero-sized dimension",
    "gguf_offset_2pow64_minus_32": "data offset 18446744073709551584",
    "gguf_offset_past_end": "data offset 4096",
    "gguf_misaligned_offset": "not a multiple of the alignment",
    "gguf_overlapping_tensors": "overlaps",
    "gguf_gap_beyond_padding": "gap of 64 bytes",
    "gguf_alignment_0": "general.alignment 0",
    "gguf_alignment_3": "general.alignment 3",
    "gguf_orig_shape_string": "comfy.gguf.orig_shape.w",
    "gguf_orig_shape_scalar": "comfy.gguf.orig_shape.w",
    "gguf_orig_shape_negative": "comfy.gguf.orig_shape.w",
    "gguf_orig_shape_wrong_product": "comfy.gguf.orig_shape.w",
    "gguf_q8_1_tensor": "cannot dequantize",  # OPEN_OK: on load
    "gguf_version_1": "version 1",
    # safetensors
    "header_nested_100000_deep": "nested too deeply",
    "dtype_as_list": "dtype",
    "dtype_as_dict": "dtype",
    "shape_entry_10pow30": "shape",
    "shape_entry_negative": "shape",
    "shape_as_string": "shape",
    "data_offsets_floats": "data_offsets",
    "metadata_values_not_strings": "__metadata__",
    "tensor_name_forges_error_line": "truncated",
    "int64_weights_known_layout": None,  # OPEN_OK
    "zero_dims_known_layout": None,  # OPEN_OK
    # pickles
    "pth_expanded_stride0_1d": "expanded",
    "pth_expanded_stride0_2d": "expanded",
    "pth_negative_dimension": "negative size or stride",
    "pth_sparse_coo": "sparse",
    "pth_sparse_csr": "sparse",
    "pth_meta_tensor": "meta",
    "pickle_state_dict_values_not_tensors": "holds no tensors",
    "malicious_legacy_pickle": "refused",
    "zip_with_garbage_data_pkl": "not a readable torch checkpoint",
    "starts_with_0x80_neither": "not a valid safetensors file",
    "pickle_holding_list": "not a dict",
    # JSON side files
    "index_nested_100000_deep": "nested too deeply",
    "index_weight_map_value_int": "weight_map",
    "index_weight_map_value_list": "weight_map",
    "index_weight_map_parent_escape": "outside",
    "index_weight_map_absolute": "outside",
    "diffusers_config_nested_deep": "nested too deeply",
    "diffusers_config_value_wrong_type": "in_channels",
    "diffusers_config_class_name_list": "_class_name",
    "model_index_is_list": "must be an object",
    "model_index_entry_int": "vae",
    "model_index_subfolder_escape": "outside",
    "component_set_components_string": "components",
    "component_set_component_int": "diffusion_model",
    "component_set_family_list": "family",
    "component_set_file_parent_escape": "outside",
    "component_set_file_absolute": "outside",
    "component_set_time_scale_abc": "time_scale",
    "component_set_manifest_nested_deep": "nested too deeply",
    # special files
    "fifo_as_weights": "not a regular file",
    "fifo_in_manifest": "not a regular file",
    "fifo_in_index": "not a regular file",
    "fifo_as_config_json": "not a regular file",
    "directory_named_safetensors": "directory",
    "symlink_loop": "symbolic link",
    "unreadable_file": "Permission denied",
}

# A reader that blocks (a FIFO opened blindly) fails the test instead of hanging the session.
BLOCK_LIMIT_S = 5.0


def test_every_corpus_entry_has_an_expected_reason():
    assert set(EXPECTED_REASON) == set(corpus.CORPUS)
    assert corpus.OPEN_OK <= set(corpus.CORPUS) and set(corpus.READERS) <= set(corpus.CORPUS)
    assert len(corpus.CORPUS) >= 65


class _Blocked(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise _Blocked in the main thread after `seconds` (interrupts a blocking open() of a FIFO)."""
    def alarm(signum, frame):
        raise _Blocked(f"still running after {seconds} s (blocked, e.g. opening a FIFO?)")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _read(path: Path, reader: str = "open_checkpoint"):
    """Open `path` with the reader the corpus names and close it again."""
    if reader == "component_set":
        from ckptkit.convert.component_set import open_component_set

        ckpt = open_component_set(path)[0]
    else:
        ckpt = open_checkpoint(path)
    ckpt.close()


def refusal(path: Path, reader: str = "open_checkpoint") -> str:
    """The reader must raise CkptError on `path`; returns its message after the common checks."""
    with _time_limit(BLOCK_LIMIT_S):
        with pytest.raises(CkptError) as info:
            _read(path, reader)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, f"message is not one line: {message!r}"
    assert str(path) in message, f"message does not name the file: {message!r}"
    assert len(message) < 400
    return message


def _skip_meaningless(name: str) -> None:
    if name in corpus.SKIP_AS_ROOT and hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root reads a file without read permission: the entry tests nothing")


@pytest.mark.parametrize("name", sorted(set(corpus.CORPUS) - corpus.OPEN_OK))
def test_broken_input_is_refused_in_one_line(tmp_path, name):
    _skip_meaningless(name)
    path = corpus.CORPUS[name](tmp_path)
    message = refusal(path, corpus.READERS.get(name, "open_checkpoint"))
    assert EXPECTED_REASON[name] in message, f"{EXPECTED_REASON[name]!r} not in {message!r}"


@pytest.mark.parametrize("name", sorted(corpus.OPEN_OK))
def test_open_ok_entries_open_and_refuse_only_their_values(tmp_path, name):
    """These open by design; where the values cannot be produced, loading refuses in one line."""
    path = corpus.CORPUS[name](tmp_path)
    with _time_limit(BLOCK_LIMIT_S):
        ckpt = open_checkpoint(path)
    with ckpt:
        assert ckpt.tensors
        reason = EXPECTED_REASON[name]
        if reason is None or name in BUILD_REFUSES:
            return
        with pytest.raises(CkptError) as info:
            for tensor in ckpt:
                ckpt.load(tensor)
    message = str(info.value)
    assert "\n" not in message and reason in message, message


# OPEN_OK entries whose values load fine but whose config cannot make the model: refused when a
# model (or a diffusers copy) is made from them.
BUILD_REFUSES = {"diffusers_config_value_wrong_type"}


@pytest.mark.parametrize("name", sorted(BUILD_REFUSES))
def test_a_config_of_the_wrong_types_is_refused_when_a_model_is_made(tmp_path, name):
    from ckptkit import pipeline

    path = corpus.CORPUS[name](tmp_path)
    for layout in ("original", "diffusers"):
        with pytest.raises(CkptError) as info:
            pipeline.convert(path, tmp_path / f"out-{layout}", layout, dry_run=True)
        message = str(info.value)
        assert "\n" not in message and EXPECTED_REASON[name] in message and "config.json" in message, message


@pytest.mark.parametrize("name", sorted(corpus.VALID_TRICKY))
def test_valid_tricky_inputs_open_and_load(tmp_path, name):
    path = corpus.VALID_TRICKY[name](tmp_path)
    with _time_limit(BLOCK_LIMIT_S), open_checkpoint(path) as ckpt:
        assert ckpt.format == "safetensors"
        assert ckpt.load("b").tolist() == [4.0, 5.0, 6.0, 7.0]


def test_valid_gguf_base_opens(tmp_path):
    """The hand-made GGUF entries differ from this one only in the broken part."""
    path = tmp_path / "ok.gguf"
    path.write_bytes(corpus.gguf_bytes())
    with open_checkpoint(path) as ckpt:
        assert ckpt.tensors["w"].shape == (16, 16)
        assert ckpt.load("w").reshape(-1).tolist() == list(range(256))


def test_expanded_pickles_stay_small(tmp_path):
    for build in (corpus.pth_expanded_stride0_1d, corpus.pth_expanded_stride0_2d, corpus.pth_meta_tensor):
        assert build(tmp_path).stat().st_size < 64 * 1024


@pytest.mark.parametrize("name", ["malicious_pickle", "malicious_raw_pickle", "malicious_legacy_pickle"])
def test_malicious_pickle_never_runs(tmp_path, name):
    path = corpus.CORPUS[name](tmp_path)
    marker = tmp_path / corpus.MALICIOUS_MARKER
    message = refusal(path)
    assert not marker.exists(), "the pickle's payload was executed"
    assert "refused" in message and "code execution" in message
    assert "posix.system" in message  # says what it would have called


@pytest.mark.parametrize("cut", [1, 7, 8, 20, -17, -1])
def test_safetensors_truncated_anywhere_is_refused(tmp_path, cut):
    good = corpus.valid_safetensors_bytes()
    path = tmp_path / f"cut{cut}.safetensors"
    path.write_bytes(good[:cut])
    refusal(path)


def test_valid_corpus_base_file_opens(tmp_path):
    """The files above differ from this one only in the broken part."""
    path = tmp_path / "ok.safetensors"
    path.write_bytes(corpus.valid_safetensors_bytes())
    with open_checkpoint(path) as ckpt:
        assert ckpt.load("b").tolist() == [4.0, 5.0, 6.0, 7.0]


# --- writers leave nothing behind ----------------------------------------------------------------

SPECS = [("a", "F32", (2, 3)), ("b", "F16", (4,))]


def _good_tensors() -> dict[str, torch.Tensor]:
    return {"a": torch.ones(2, 3), "b": torch.zeros(4, dtype=torch.float16)}


class Boom(Exception):
    pass


def _write_wrong_dtype(writer):
    writer.write("a", torch.ones(2, 3))
    writer.write("b", torch.zeros(4))  # planned F16, given F32


def _write_wrong_order(writer):
    writer.write("b", torch.zeros(4, dtype=torch.float16))


def _write_short_bytes(writer):
    writer.write_bytes("a", b"\0" * 5)


def _raise_midway(writer):
    writer.write("a", torch.ones(2, 3))
    raise Boom()


def _stop_early(writer):
    writer.write("a", torch.ones(2, 3))  # `b` never written: leaving the block must fail


@pytest.mark.parametrize("failure", [_write_wrong_dtype, _write_wrong_order, _write_short_bytes, _raise_midway, _stop_early])
def test_safetensors_writer_leaves_no_file_on_error(tmp_path, failure):
    target = tmp_path / "out.safetensors"
    with pytest.raises((ValueError, Boom)):
        with SafetensorsWriter(target, SPECS, {"k": "v"}) as writer:
            failure(writer)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a .partial temp file


def test_safetensors_writer_keeps_an_existing_target_on_error(tmp_path):
    target = tmp_path / "out.safetensors"
    save_safetensors(target, _good_tensors())
    before = target.read_bytes()
    with pytest.raises(Boom):
        with SafetensorsWriter(target, SPECS) as writer:
            _raise_midway(writer)
    assert target.read_bytes() == before
    assert list(tmp_path.iterdir()) == [target]


def test_safetensors_writer_success_leaves_only_the_target(tmp_path):
    target = tmp_path / "out.safetensors"
    save_safetensors(target, _good_tensors())
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("stop_early", [False, True])
def test_gguf_writer_leaves_no_file_on_error(tmp_path, stop_early):
    target = tmp_path / "out.gguf"
    a = np.ones((4, 8), dtype=np.float32)
    specs = [("a", (4, 8), "F32", a.nbytes), ("b", (4, 8), "F32", a.nbytes)]
    with pytest.raises((ValueError, Boom)):
        with GGUFStreamWriter(target, "test", specs) as writer:
            writer.write("a", a)
            if not stop_early:
                raise Boom()
    assert list(tmp_path.iterdir()) == []


# --- reading never modifies the input ------------------------------------------------------------

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _safetensors_file(d: Path) -> Path:
    path = d / "m.safetensors"
    save_safetensors(path, {"w": torch.arange(64, dtype=torch.float32).reshape(8, 8), "b": torch.ones(8, dtype=torch.bfloat16)})
    return path


def _pickle_file(d: Path) -> Path:
    path = d / "m.ckpt"
    torch.save({"state_dict": {"w": torch.arange(64, dtype=torch.float32).reshape(8, 8)}}, path)
    return path


def _gguf_file(d: Path) -> Path:
    path = d / "m.gguf"
    w = np.arange(64, dtype=np.float32).reshape(8, 8)
    with GGUFStreamWriter(path, "test", [("w", (8, 8), "F32", w.nbytes)]) as writer:
        writer.write("w", w)
    return path


@pytest.mark.parametrize("make", [_safetensors_file, _pickle_file, _gguf_file])
def test_reading_and_mutating_loaded_tensors_leaves_the_file_unchanged(tmp_path, make):
    path = make(tmp_path)
    before = _sha256(path)
    with open_checkpoint(path) as ckpt:
        for name in ckpt:
            tensor = ckpt.load(name)
            tensor.add_(1)  # in-place on what the reader handed out (mmap-backed for safetensors/pickle)
            assert ckpt.load(name).shape == tensor.shape
    assert _sha256(path) == before
