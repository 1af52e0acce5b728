"""Bit-exact round trips through every reader/writer pair, checked against the official libraries
(safetensors, gguf-py, torch.load) where one exists."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

from ckptkit.formats import open_checkpoint
from ckptkit.formats.dtypes import DTYPES, code_of
from ckptkit.formats.gguf import ORIG_SHAPE_KEY, GGUFCheckpoint, GGUFStreamWriter, torch_to_plain
from ckptkit.formats.safetensors import SafetensorsWriter, save_safetensors

METADATA = {"format": "pt", "modelspec.title": "tiny ünïcode ✓", "empty": ""}


# --- helpers -------------------------------------------------------------------------------------

def raw(tensor: torch.Tensor) -> bytes:
    """The tensor's bytes, independent of ckptkit's own helpers."""
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def random_tensor(code: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random bits of the given dtype (NaN/inf patterns included for floats); 0/1 for BOOL."""
    dtype, size = DTYPES[code]
    gen = torch.Generator().manual_seed(seed)
    numel = int(np.prod(shape, dtype=np.int64))
    if code == "BOOL":
        return torch.randint(0, 2, shape, generator=gen).to(torch.bool)
    data = torch.randint(0, 256, (numel * size,), dtype=torch.uint8, generator=gen)
    return data.view(dtype).reshape(shape)


def assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(actual) == set(expected)
    for name, want in expected.items():
        got = actual[name]
        assert got.dtype == want.dtype, name
        assert tuple(got.shape) == tuple(want.shape), name
        assert raw(got) == raw(want), name


def read_ours(path: Path) -> dict[str, torch.Tensor]:
    with open_checkpoint(path) as ckpt:
        return {name: ckpt.load(name).clone() for name in ckpt}


def every_dtype_tensors() -> dict[str, torch.Tensor]:
    """Every dtype ckptkit knows, in a few shapes each: 0-d, empty, 1-d, 3-d."""
    tensors = {}
    for i, code in enumerate(sorted(DTYPES)):
        for j, shape in enumerate([(), (0,), (0, 7), (5,), (2, 3, 4)]):
            tensors[f"{code.lower()}.s{j}"] = random_tensor(code, shape, seed=100 * i + j)
    return tensors


# --- safetensors ---------------------------------------------------------------------------------

def test_every_dtype_of_the_table_is_covered():
    for code in ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I64", "I32", "I16", "I8", "U8", "BOOL"):
        assert code in DTYPES
    assert code_of(torch.bfloat16) == "BF16" and code_of(torch.float8_e4m3fn) == "F8_E4M3"


def test_safetensors_ours_to_ours(tmp_path):
    tensors = every_dtype_tensors()
    path = tmp_path / "ours.safetensors"
    save_safetensors(path, tensors, METADATA)
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == "safetensors"
        assert ckpt.metadata == METADATA
        assert list(ckpt) == list(tensors)  # write order kept
        for name, want in tensors.items():
            info = ckpt.tensors[name]
            assert info.dtype == code_of(want.dtype)
            assert info.shape == tuple(want.shape)
            assert info.nbytes == want.numel() * want.element_size()
        assert_same({n: ckpt.load(n) for n in ckpt}, tensors)


def test_safetensors_ours_readable_by_official_library(tmp_path):
    tensors = every_dtype_tensors()
    path = tmp_path / "ours.safetensors"
    save_safetensors(path, tensors, METADATA)
    assert_same(safetensors.torch.load_file(path), tensors)
    with safetensors.safe_open(path, framework="pt") as f:
        assert f.metadata() == METADATA
        assert set(f.keys()) == set(tensors)
        assert_same({k: f.get_tensor(k) for k in f.keys()}, tensors)


def test_safetensors_official_readable_by_us(tmp_path):
    tensors = every_dtype_tensors()
    path = tmp_path / "official.safetensors"
    safetensors.torch.save_file(tensors, path, metadata=METADATA)
    with open_checkpoint(path) as ckpt:
        assert ckpt.metadata == METADATA
        assert_same({n: ckpt.load(n) for n in ckpt}, tensors)


def test_safetensors_without_metadata_and_without_tensors(tmp_path):
    path = tmp_path / "bare.safetensors"
    save_safetensors(path, {"x": torch.arange(3)})
    with open_checkpoint(path) as ckpt:
        assert ckpt.load("x").tolist() == [0, 1, 2] and ckpt.metadata == {}

    empty = tmp_path / "no_tensors.safetensors"
    save_safetensors(empty, {}, {"note": "only metadata"})
    with open_checkpoint(empty) as ckpt:
        assert len(ckpt) == 0 and ckpt.metadata == {"note": "only metadata"}
    with safetensors.safe_open(empty, framework="pt") as f:
        assert list(f.keys()) == [] and f.metadata() == {"note": "only metadata"}


def copy_through_writer(src: Path, dst: Path) -> None:
    """What a streaming executor does: read lazily, write one tensor at a time."""
    with open_checkpoint(src) as ckpt:
        specs = [(n, i.dtype, i.shape) for n, i in ckpt.tensors.items()]
        with SafetensorsWriter(dst, specs, ckpt.metadata) as writer:
            for name in ckpt:
                writer.write(name, ckpt.load(name))


def test_safetensors_copy_is_byte_identical(tmp_path):
    src, dst = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_safetensors(src, every_dtype_tensors(), METADATA)
    copy_through_writer(src, dst)
    assert dst.read_bytes() == src.read_bytes()


def test_safetensors_copy_of_official_file_keeps_values(tmp_path):
    tensors = every_dtype_tensors()
    src, dst = tmp_path / "official.safetensors", tmp_path / "copy.safetensors"
    safetensors.torch.save_file(tensors, src, metadata=METADATA)
    copy_through_writer(src, dst)
    assert_same(safetensors.torch.load_file(dst), tensors)
    with safetensors.safe_open(dst, framework="pt") as f:
        assert f.metadata() == METADATA


def test_safetensors_writer_accepts_noncontiguous_tensors(tmp_path):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {"t": base.t(), "s": base[:, ::2]}
    path = tmp_path / "views.safetensors"
    save_safetensors(path, tensors)
    got = safetensors.torch.load_file(path)
    assert torch.equal(got["t"], base.t()) and torch.equal(got["s"], base[:, ::2])


def resident_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_safetensors_reader_gives_pages_back_when_tensors_are_freed(tmp_path):
    """A streaming pass must not hold the whole mapped file: a freed tensor's pages leave RSS."""
    path = tmp_path / "big.safetensors"
    save_safetensors(path, {"head": torch.ones(3), "w": torch.ones(2**24), "tail": torch.ones(3)})
    with open_checkpoint(path) as ckpt:
        before = resident_mb()
        w = ckpt.load("w")
        assert w.sum().item() == w.numel()  # touches every page: 67 MB mapped in
        assert resident_mb() - before > 50
        del w
        gc.collect()
        assert resident_mb() - before < 10
        assert ckpt.load("w").sum().item() == 2**24  # still readable afterwards


def mapped_kb(path: Path) -> int:
    """RSS of this process's mappings of `path` (/proc/self/smaps)."""
    total, current = 0, None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and all(c in "0123456789abcdef-" for c in head[0]):
            current = head[5] if len(head) > 5 else None
        elif line.startswith("Rss:") and current == str(path):
            total += int(head[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_out_of_order_loads_do_not_leave_neighbours_mapped(tmp_path):
    """The page cache maps large folios whole, so a load maps its neighbours' bytes too; a pass in
    any order (a diffusers-layout UNet is written out of file order) must still end with nothing
    mapped, and never drop the pages of a tensor still in use (its in-place change survives)."""
    import random

    path = tmp_path / "many.safetensors"
    sizes = [1000 + 7919 * i % 60000 for i in range(600)]  # 4-240 KB, unaligned: neighbours share pages
    save_safetensors(path, {f"t{i:03d}": torch.full((n,), float(i)) for i, n in enumerate(sizes)})
    names = [f"t{i:03d}" for i in range(len(sizes))]
    random.Random(0).shuffle(names)
    with open_checkpoint(path) as ckpt:
        keep = ckpt.load("t300")
        keep.add_(1000)  # an in-place change in a live tensor, in pages it shares with t299 and t301
        for name in names:
            if name != "t300":
                t = ckpt.load(name)
                assert t[0].item() == int(name[1:])
                del t
        gc.collect()
        assert keep.eq(1300).all()
        assert mapped_kb(path) < 1024 + keep.numel() * 4 // 1024  # only `keep`'s pages and their folio
        del keep
        gc.collect()
        assert mapped_kb(path) < 64


def test_safetensors_loads_of_one_tensor_stay_aliased(tmp_path):
    path = tmp_path / "a.safetensors"
    save_safetensors(path, {"w": torch.zeros(4096)})
    with open_checkpoint(path) as ckpt:
        first, second = ckpt.load("w"), ckpt.load("w")
        second.fill_(7)
        del first  # freeing one load must not drop the other's pages (and its change)
        gc.collect()
        assert second.eq(7).all()
    assert torch.equal(safetensors.torch.load_file(path)["w"], torch.zeros(4096))  # never reached the file


# --- GGUF ----------------------------------------------------------------------------------------

CONV_SHAPE = (16, 4, 3, 3)  # 576 values, stored as Q8_0 rows of 32
GGUF_KV = {"general.name": "tiny", "test.count": 7, "test.offset": -5, "test.scale": 0.5,
           "test.flag": True, "test.names": ["a", "b"], ORIG_SHAPE_KEY + "conv.weight": list(CONV_SHAPE)}


@pytest.fixture()
def gguf_file(tmp_path):
    """A GGUF with F32, F16, BF16 and a Q8_0 conv weight; returns (path, tensors, q8 blocks)."""
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "f32.weight": torch.randn(8, 32, generator=gen),
        "f16.weight": torch.randn(4, 64, generator=gen).half(),
        "bf16.bias": torch.randn(64, generator=gen).bfloat16(),
        "conv.weight": torch.randn(CONV_SHAPE, generator=gen),
    }
    conv_rows = tensors["conv.weight"].numpy().reshape(-1, 32)
    q8 = gguf.quants.quantize(conv_rows, gguf.GGMLQuantizationType.Q8_0)
    arrays, specs = {}, []
    for name, t in tensors.items():
        if name == "conv.weight":
            arr, type_name, shape = q8, "Q8_0", conv_rows.shape
        else:
            arr, type_name = torch_to_plain(t)
            shape = tuple(t.shape)
        arrays[name] = arr
        specs.append((name, shape, type_name, arr.nbytes))
    path = tmp_path / "tiny.gguf"
    with GGUFStreamWriter(path, "test", specs, GGUF_KV) as writer:
        for name, arr in arrays.items():
            writer.write(name, arr)
    return path, tensors, q8


def test_gguf_read_by_ours(gguf_file):
    path, tensors, q8 = gguf_file
    with open_checkpoint(path) as ckpt:
        assert isinstance(ckpt, GGUFCheckpoint)
        assert ckpt.architecture == "test"
        assert {n: (i.dtype, i.shape) for n, i in ckpt.tensors.items()} == {
            "f32.weight": ("F32", (8, 32)), "f16.weight": ("F16", (4, 64)),
            "bf16.bias": ("BF16", (64,)), "conv.weight": ("Q8_0", CONV_SHAPE)}
        for name in ("f32.weight", "f16.weight", "bf16.bias"):
            assert_same({name: ckpt.load(name)}, {name: tensors[name]})
        # quantized: raw blocks unchanged, load() dequantizes to float32 in the original 4-D shape
        assert ckpt.raw("conv.weight").tobytes() == q8.tobytes()
        assert ckpt.tensors["conv.weight"].nbytes == q8.nbytes == 18 * 34
        deq = gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0).reshape(CONV_SHAPE)
        conv = ckpt.load("conv.weight")
        assert conv.dtype == torch.float32 and tuple(conv.shape) == CONV_SHAPE
        assert raw(conv) == deq.astype(np.float32).tobytes()
        assert torch.allclose(conv, tensors["conv.weight"], atol=0.02)  # Q8_0 error is small
        # KV: values typed back; metadata (strings) leaves the orig_shape bookkeeping out
        for key, value in GGUF_KV.items():
            assert ckpt.kv[key] == value, key
        assert ORIG_SHAPE_KEY + "conv.weight" not in ckpt.metadata
        assert ckpt.metadata["general.name"] == "tiny" and ckpt.metadata["test.count"] == "7"


def test_gguf_read_by_official_reader(gguf_file):
    path, tensors, q8 = gguf_file
    reader = gguf.GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    assert list(by_name) == list(tensors)  # write order
    assert by_name["conv.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert by_name["conv.weight"].shape.tolist() == [32, 18]  # ggml order: fastest dim first
    assert np.asarray(by_name["conv.weight"].data).tobytes() == q8.tobytes()
    expected_types = {"f32.weight": "F32", "f16.weight": "F16", "bf16.bias": "BF16"}
    for name, type_name in expected_types.items():
        t = by_name[name]
        assert t.tensor_type.name == type_name
        assert t.shape.tolist() == list(reversed(tensors[name].shape))
        assert np.asarray(t.data).tobytes() == raw(tensors[name])
    fields = reader.fields
    assert fields["general.architecture"].contents() == "test"
    assert fields[ORIG_SHAPE_KEY + "conv.weight"].contents() == list(CONV_SHAPE)
    assert fields["test.count"].contents() == 7 and fields["test.offset"].contents() == -5
    assert fields["test.scale"].contents() == 0.5 and fields["test.flag"].contents() is True
    assert fields["test.names"].contents() == ["a", "b"]


def test_gguf_file_written_by_gguf_py_is_read_identically(tmp_path):
    """The other direction: gguf-py's own (non-streaming) writer, read by GGUFCheckpoint."""
    f32 = np.arange(96, dtype=np.float32).reshape(3, 32)
    f16 = (np.arange(64, dtype=np.float16) / 7).reshape(2, 32)
    path = tmp_path / "by_gguf_py.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_uint32("llama.block_count", 2)
    writer.add_tensor("a", f32)
    writer.add_tensor("b", f16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with open_checkpoint(path) as ckpt:
        assert ckpt.architecture == "llama" and ckpt.kv["llama.block_count"] == 2
        assert ckpt.load("a").numpy().tobytes() == f32.tobytes() and ckpt.tensors["a"].shape == (3, 32)
        assert ckpt.load("b").numpy().tobytes() == f16.tobytes() and ckpt.tensors["b"].dtype == "F16"


# --- pickle --------------------------------------------------------------------------------------

def pickle_tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {"w": torch.randn(4, 5, generator=gen), "h": torch.randn(3, generator=gen).half(),
            "b": torch.randn(2, 2, generator=gen).bfloat16(), "step": torch.tensor(1234567890123),
            "mask": torch.tensor([True, False, True]), "empty": torch.zeros(0, 4)}


@pytest.mark.parametrize("wrap,legacy,filename", [
    ("state_dict", False, "model.ckpt"),
    ("model", False, "model.pth"),
    (None, False, "pytorch_model.bin"),
    ("state_dict", True, "legacy.ckpt"),
    (None, True, "legacy.pt"),
])
def test_pickle_read_by_ours(tmp_path, wrap, legacy, filename):
    tensors = pickle_tensors()
    obj = tensors if wrap is None else {wrap: tensors, "global_step": 10, "epoch": 2}
    path = tmp_path / filename
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    assert path.read_bytes()[:2] == (b"\x80\x02" if legacy else b"PK")
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == "pickle"
        assert {n: (i.dtype, i.shape) for n, i in ckpt.tensors.items()} == {
            n: (code_of(t.dtype), tuple(t.shape)) for n, t in tensors.items()}
        assert_same({n: ckpt.load(n) for n in ckpt}, tensors)


def test_pickle_with_shared_storage_views(tmp_path):
    """Tensors that are views of one storage (common in real .ckpt files) keep their own values."""
    base = torch.arange(20, dtype=torch.float32)
    tensors = {"first": base[:10].view(2, 5), "second": base[10:], "strided": base[::4]}
    path = tmp_path / "views.ckpt"
    torch.save({"state_dict": tensors}, path)
    got = read_ours(path)
    assert got["first"].tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert got["second"].tolist() == list(range(10, 20))
    assert got["strided"].tolist() == [0, 4, 8, 12, 16]


# --- several files read as one -------------------------------------------------------------------

def write_sharded(folder: Path, tensors: dict[str, torch.Tensor], stem: str = "model") -> Path:
    """Two shards plus `<stem>.safetensors.index.json`, as transformers/diffusers write them."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for i, part in enumerate(halves, start=1):
        shard = f"{stem}-{i:05d}-of-00002.safetensors"
        save_safetensors(folder / shard, {n: tensors[n] for n in part})
        weight_map.update({n: shard for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = folder / f"{stem}.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return index


def small_tensors(prefix: str, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {f"{prefix}.{i}.weight": torch.randn(3, 4, generator=gen).half() for i in range(4)}


def test_sharded_index_read_as_one(tmp_path):
    tensors = small_tensors("layers", 3)
    index = write_sharded(tmp_path / "sharded", tensors)
    for source in (index, index.parent):  # the index file, or the folder holding only it
        with open_checkpoint(source) as ckpt:
            assert ckpt.format == "safetensors-sharded"
            assert len(ckpt.paths) == 3  # index + two shards
            assert int(ckpt.metadata["total_size"]) == 4 * 3 * 4 * 2
            assert_same({n: ckpt.load(n) for n in ckpt}, tensors)


def test_sharded_index_only_exposes_listed_tensors(tmp_path):
    tensors = small_tensors("layers", 4)
    index = write_sharded(tmp_path, tensors)
    data = json.loads(index.read_text())
    dropped = next(iter(data["weight_map"]))
    del data["weight_map"][dropped]
    index.write_text(json.dumps(data))
    assert set(read_ours(index)) == set(tensors) - {dropped}


def write_component(folder: Path, config: dict, tensors: dict[str, torch.Tensor], weights: str) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_safetensors(folder / weights, tensors)


@pytest.fixture()
def diffusers_pipeline(tmp_path):
    """model_index.json + unet (one file) + text_encoder (model.safetensors) + vae (sharded) +
    scheduler (config only, no weights). Returns (root, {prefixed name: tensor}, unet config)."""
    root = tmp_path / "pipe"
    unet, te, vae = small_tensors("down", 5), small_tensors("encoder", 6), small_tensors("decoder", 7)
    unet_config = {"_class_name": "UNet2DConditionModel", "in_channels": 4}
    write_component(root / "unet", unet_config, unet, "diffusion_pytorch_model.safetensors")
    write_component(root / "text_encoder", {"architectures": ["CLIPTextModel"]}, te, "model.safetensors")
    write_sharded(root / "vae", vae, stem="diffusion_pytorch_model")
    (root / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text("{}")
    (root / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}))
    expected = {f"{comp}/{n}": t for comp, ts in (("unet", unet), ("text_encoder", te), ("vae", vae)) for n, t in ts.items()}
    return root, expected, unet_config


def test_diffusers_pipeline_folder(diffusers_pipeline):
    root, expected, unet_config = diffusers_pipeline
    with open_checkpoint(root) as ckpt:
        assert ckpt.format == "diffusers"
        assert ckpt.config["_class_name"] == "StableDiffusionPipeline"
        assert sorted(ckpt.members) == ["text_encoder", "unet", "vae"]
        assert ckpt.members["unet"].config == unet_config
        assert ckpt.members["vae"].format == "safetensors-sharded"
        assert_same({n: ckpt.load(n) for n in ckpt}, expected)


def test_diffusers_single_component_folder(diffusers_pipeline):
    root, expected, unet_config = diffusers_pipeline
    with open_checkpoint(root / "unet") as ckpt:
        assert ckpt.format == "diffusers-component/safetensors"
        assert ckpt.paths[0] == root / "unet"
        assert ckpt.config == unet_config
        unet = {n.removeprefix("unet/"): t for n, t in expected.items() if n.startswith("unet/")}
        assert_same({n: ckpt.load(n) for n in ckpt}, unet)


def test_diffusers_component_with_pickle_weights(tmp_path):
    tensors = small_tensors("blocks", 8)
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    torch.save(tensors, folder / "diffusion_pytorch_model.bin")
    with open_checkpoint(folder) as ckpt:
        assert ckpt.format == "diffusers-component/pickle"
        assert_same({n: ckpt.load(n) for n in ckpt}, tensors)
