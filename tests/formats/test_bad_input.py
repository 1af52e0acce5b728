"""Broken inputs are refused with one readable line; writers leave nothing behind; reading never
modifies the input."""

from __future__ import annotations

import hashlib
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
# right reason and not an accident of a later check.
EXPECTED_REASON = {
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
}


def test_every_corpus_entry_has_an_expected_reason():
    assert set(EXPECTED_REASON) == set(corpus.CORPUS)


def refusal(path: Path) -> str:
    """open_checkpoint(path) must raise CkptError; returns its message after the common checks."""
    with pytest.raises(CkptError) as info:
        open_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message, f"message is not one line: {message!r}"
    assert str(path) in message, f"message does not name the file: {message!r}"
    assert len(message) < 400
    return message


@pytest.mark.parametrize("name", sorted(corpus.CORPUS))
def test_broken_input_is_refused_in_one_line(tmp_path, name):
    path = corpus.CORPUS[name](tmp_path)
    message = refusal(path)
    assert EXPECTED_REASON[name] in message


@pytest.mark.parametrize("name", ["malicious_pickle", "malicious_raw_pickle"])
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
