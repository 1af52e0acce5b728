"""The sha256 cache: a source hashed once is not read again while unchanged; any change, a broken
cache or an unusable cache folder means a fresh hash, never a wrong one or a failure."""

import hashlib
import json
import os

import pytest

from ckptkit.formats import hashing


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("CKPTKIT_CACHE_DIR", str(folder))
    return folder


def _old_file(path, data: bytes):
    path.write_bytes(data)
    past = os.stat(path).st_mtime_ns - 10_000_000_000  # 10 s ago: not "racy"
    os.utime(path, ns=(past, past))
    return path


def _count_reads(monkeypatch):
    calls = []
    real = hashing.file_sha256
    monkeypatch.setattr(hashing, "file_sha256", lambda p: calls.append(p) or real(p))
    return calls


def test_file_sha256_matches_hashlib(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 7)
    (tmp_path / "f").write_bytes(data)
    assert hashing.file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert hashing.file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_second_hash_comes_from_the_cache(tmp_path, cache, monkeypatch):
    f = _old_file(tmp_path / "model.safetensors", b"abc" * 1000)
    calls = _count_reads(monkeypatch)
    want = hashlib.sha256(b"abc" * 1000).hexdigest()
    assert hashing.source_sha256(f) == want
    assert hashing.source_sha256(f) == want
    assert len(calls) == 1
    assert len(list((cache / "sha256").iterdir())) == 1


@pytest.mark.parametrize("change", ["rewrite_same_size", "append", "touch"])
def test_a_changed_file_is_hashed_again(tmp_path, cache, monkeypatch, change):
    f = _old_file(tmp_path / "m", b"a" * 4096)
    assert hashing.source_sha256(f) == hashlib.sha256(b"a" * 4096).hexdigest()
    if change == "rewrite_same_size":
        _old_file(f, b"b" * 4096)  # same size, mtime moved back again: ctime still changes
        new = b"b" * 4096
    elif change == "append":
        with open(f, "ab") as fh:
            fh.write(b"x")
        new = b"a" * 4096 + b"x"
    else:
        os.utime(f)
        new = b"a" * 4096
    calls = _count_reads(monkeypatch)
    assert hashing.source_sha256(f) == hashlib.sha256(new).hexdigest()
    assert len(calls) == 1


def test_a_replaced_file_is_not_served_the_old_hash(tmp_path, cache):
    f = _old_file(tmp_path / "m", b"old" * 100)
    hashing.source_sha256(f)
    other = _old_file(tmp_path / "other", b"new" * 100)
    os.replace(other, f)  # another inode under the same name
    assert hashing.source_sha256(f) == hashlib.sha256(b"new" * 100).hexdigest()


def test_a_just_written_file_is_not_cached(tmp_path, cache, monkeypatch):
    f = tmp_path / "fresh"
    f.write_bytes(b"fresh")  # mtime = now: a write in the same clock tick could go unseen
    calls = _count_reads(monkeypatch)
    hashing.source_sha256(f)
    hashing.source_sha256(f)
    assert len(calls) == 2
    assert not (cache / "sha256").exists()


@pytest.mark.parametrize("garbage", [b"", b"{not json", b"[]", b'{"path": 1}'])
def test_a_broken_cache_entry_means_a_fresh_hash(tmp_path, cache, garbage):
    f = _old_file(tmp_path / "m", b"data")
    hashing.source_sha256(f)
    (entry,) = (cache / "sha256").iterdir()
    entry.write_bytes(garbage)
    assert hashing.source_sha256(f) == hashlib.sha256(b"data").hexdigest()


def test_a_forged_entry_for_another_key_is_ignored(tmp_path, cache):
    f = _old_file(tmp_path / "m", b"data")
    hashing.source_sha256(f)
    (entry,) = (cache / "sha256").iterdir()
    doc = json.loads(entry.read_text())
    doc["key"]["size"] += 1
    doc["sha256"] = "0" * 64
    entry.write_text(json.dumps(doc))
    assert hashing.source_sha256(f) == hashlib.sha256(b"data").hexdigest()


def test_unusable_cache_folder_and_off(tmp_path, monkeypatch):
    f = _old_file(tmp_path / "m", b"data")
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    monkeypatch.setenv("CKPTKIT_CACHE_DIR", str(blocker / "sub"))
    assert hashing.source_sha256(f) == hashlib.sha256(b"data").hexdigest()
    monkeypatch.setenv("CKPTKIT_CACHE_DIR", "off")
    assert hashing.cache_dir() is None
    calls = _count_reads(monkeypatch)
    hashing.source_sha256(f)
    hashing.source_sha256(f)
    assert len(calls) == 2
