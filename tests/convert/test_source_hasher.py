"""The source hasher trails the executor: it never reads a planned tensor's bytes before the
executor has released them (unless the page cache already holds them), reads unplanned bytes
(junk) straight away, finishes whatever is left at `join`, and always gives the file's sha256."""

import hashlib
import time

import pytest
import torch

from ckptkit.engine import manifest
from ckptkit.engine.expr import src
from ckptkit.engine.manifest import SourceHasher
from ckptkit.engine.plan import OutputFile, Plan, TensorOp
from ckptkit.formats.safetensors import SafetensorsCheckpoint, cached_fraction, save_safetensors

KB = 1024


@pytest.fixture
def source(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPTKIT_CACHE_DIR", "off")
    monkeypatch.setattr(SourceHasher, "CHUNK", 4 * KB)
    monkeypatch.setattr(SourceHasher, "POLL", 0.01)
    path = tmp_path / "bundle.safetensors"
    # data in file order: junk (12 KB), a (16 KB), b (16 KB); 4 KB-aligned after the header
    tensors = {"junk.buffer": torch.ones(3072, dtype=torch.float32), "a.weight": torch.arange(4096, dtype=torch.float32),
               "b.weight": -torch.arange(4096, dtype=torch.float32)}
    save_safetensors(path, tensors)
    return path


def plan_reading(*names: str) -> Plan:
    ops = [TensorOp(n, src(n), (4096,), "F32", "F32") for n in names]
    return Plan("split", "bundle", [OutputFile("out.safetensors", "c", "original", ops)])


def reads(monkeypatch) -> list[int]:
    offsets: list[int] = []
    real = manifest.os.preadv
    monkeypatch.setattr(manifest.os, "preadv", lambda fd, bufs, off: offsets.append(off) or real(fd, bufs, off))
    return offsets


def wait_for(cond, timeout=5.0):
    end = time.time() + timeout
    while not cond() and time.time() < end:
        time.sleep(0.01)


@pytest.mark.parametrize("order", [("a.weight", "b.weight"), ("b.weight", "a.weight")])
def test_trails_the_executor_without_the_page_cache(source, monkeypatch, order):
    monkeypatch.setattr(manifest, "cached_fraction", lambda *a: None)  # a system that cannot tell
    offsets = reads(monkeypatch)
    ckpt = SafetensorsCheckpoint(source)
    a_begin, a_end = ckpt.raw_span("a.weight")
    hasher = SourceHasher([source], ckpt, plan_reading(*order))
    last_before = lambda begin: begin // (4 * KB) * (4 * KB) - 4 * KB  # the last piece wholly before `begin`
    wait_for(lambda: offsets and max(offsets) >= last_before(a_begin))
    time.sleep(0.1)
    # every piece before a's first one was read (the junk), nothing of a's bytes yet
    assert offsets and max(offsets) == last_before(a_begin)
    first = order[0]
    t = ckpt.load(first)
    assert t.numel() == 4096
    del t  # released: the hasher may read it now
    if first == "a.weight":
        b_begin, _ = ckpt.raw_span("b.weight")
        wait_for(lambda: max(offsets) >= last_before(b_begin))
        time.sleep(0.1)
        assert max(offsets) == last_before(b_begin) > a_begin  # went on through a's bytes, stopped at b's
    else:
        time.sleep(0.1)
        assert max(offsets) == last_before(a_begin)  # b released first: still waiting at a (sha256 is sequential)
    result = hasher.join()  # the executor is done: the rest is read now
    want = hashlib.sha256(source.read_bytes()).hexdigest()
    assert result == {str(source): {"size": source.stat().st_size, "sha256": want}}
    ckpt.close()


def test_cached_pages_are_hashed_at_once(source, monkeypatch):
    monkeypatch.setattr(manifest, "cached_fraction", lambda *a: 1.0)  # every page in the page cache
    ckpt = SafetensorsCheckpoint(source)
    hasher = SourceHasher([source], ckpt, plan_reading("a.weight", "b.weight"))
    hasher._thread.join(5)
    assert not hasher._thread.is_alive()  # done without the executor releasing anything
    assert hasher.join()[str(source)]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    ckpt.close()


def test_cached_fraction_sees_a_file_just_read(source):
    source.read_bytes()
    with open(source, "rb") as fh:
        frac = cached_fraction(fh.fileno(), 0, source.stat().st_size)
    assert frac is None or frac == 1.0  # None only where the system cannot tell


def test_outputs_run_in_source_order_and_are_reported_in_plan_order(source, tmp_path):
    from ckptkit.engine.execute import execute, in_source_order

    ckpt = SafetensorsCheckpoint(source)
    late = OutputFile("b.safetensors", "b", "original", [TensorOp("w", src("b.weight"), (4096,), "F32", "F32")])
    early = OutputFile("a.safetensors", "a", "original", [TensorOp("w", src("a.weight"), (4096,), "F32", "F32")])
    plan = Plan("split", "bundle", [late, early])
    assert [o.path for o in in_source_order(plan.outputs, ckpt)] == ["a.safetensors", "b.safetensors"]
    written = execute(plan, ckpt, tmp_path)
    assert [w.path for w in written] == ["b.safetensors", "a.safetensors"]
    ckpt.close()


def test_a_failed_run_stops_the_hasher(source, monkeypatch):
    """A run that fails mid-way (the hasher still waiting for the executor) leaves no thread behind
    reading the source."""
    monkeypatch.setattr(manifest, "cached_fraction", lambda *a: None)
    ckpt = SafetensorsCheckpoint(source)
    with pytest.raises(RuntimeError, match="executor failed"):
        with SourceHasher([source], ckpt, plan_reading("a.weight", "b.weight")) as hasher:
            time.sleep(0.05)
            assert hasher._thread.is_alive()  # waiting for a.weight
            raise RuntimeError("executor failed")
    assert not hasher._thread.is_alive() and hasher.result == {}
    ckpt.close()
