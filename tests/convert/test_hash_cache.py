"""The source sha256 in ckptkit.json comes from the hash cache when the source is unchanged: a
second split of the same download, or a quantization of a component set we wrote, reads no file
just to hash it; the recorded hashes stay exactly those of the files."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from ckptkit import pipeline
from ckptkit.engine.manifest import SourceHasher
from ckptkit.convert.split import SplitOptions
from ckptkit.fixtures import factory
from ckptkit.formats import hashing


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def hashed(monkeypatch, tmp_path):
    monkeypatch.setenv("CKPTKIT_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[str] = []
    real = hashing.file_sha256
    monkeypatch.setattr(hashing, "file_sha256", lambda p: calls.append(Path(p).name) or real(p))
    hash_file = SourceHasher._hash_file
    monkeypatch.setattr(SourceHasher, "_hash_file",
                        lambda self, p, *a: calls.append(Path(p).name) or hash_file(self, p, *a))
    return calls


def test_second_split_and_quantize_hash_nothing_again(tmp_path, hashed):
    bundle = factory.write_bundle("sd1", tmp_path / "sd1.safetensors")
    past = os.stat(bundle).st_mtime_ns - 60 * 10**9
    os.utime(bundle, ns=(past, past))  # a download from a minute ago (not "racy")

    first = pipeline.split(bundle, tmp_path / "a", SplitOptions())
    assert hashed == ["sd1.safetensors"]
    second = pipeline.split(bundle, tmp_path / "b", SplitOptions(layout="diffusers"))
    assert hashed == ["sd1.safetensors"]  # served from the cache
    for result in (first, second):
        files = result.manifest["source"]["files"]
        assert files == {str(bundle): {"size": bundle.stat().st_size, "sha256": sha256(bundle)}}

    # the split's outputs were remembered with the hashes their manifest records
    manifest = json.loads((tmp_path / "a" / "ckptkit.json").read_text())
    for entry in manifest["components"].values():
        assert hashing.cached_sha256(tmp_path / "a" / entry["file"]) == entry["sha256"] == sha256(tmp_path / "a" / entry["file"])

    from ckptkit.quant.policy import Policy

    q = pipeline.quantize(tmp_path / "a", tmp_path / "q", Policy(diffusion_model="q8_0"))
    # the component files' hashes came from the cache, and the GGUF output is hashed as it is written
    assert hashed == ["sd1.safetensors"]
    assert q.written[0].sha256 == sha256(tmp_path / "q" / q.written[0].path)
    for path, entry in q.manifest["source"]["files"].items():
        assert entry["sha256"] == sha256(path)


def test_a_changed_source_is_hashed_again(tmp_path, hashed):
    bundle = factory.write_bundle("sd1", tmp_path / "sd1.safetensors")
    past = os.stat(bundle).st_mtime_ns - 60 * 10**9
    os.utime(bundle, ns=(past, past))
    pipeline.split(bundle, tmp_path / "a", SplitOptions())
    data = bytearray(bundle.read_bytes())
    data[-1] ^= 1  # one flipped bit in the last tensor, mtime put back
    bundle.write_bytes(bytes(data))
    os.utime(bundle, ns=(past, past))
    result = pipeline.split(bundle, tmp_path / "b", SplitOptions())
    assert hashed == ["sd1.safetensors", "sd1.safetensors"]
    assert result.manifest["source"]["files"][str(bundle)]["sha256"] == sha256(bundle)
