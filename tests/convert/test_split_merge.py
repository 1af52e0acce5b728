"""split / merge / convert end to end, through the CLI.

* Unquantized split is bit-exact for every family fixture and every layout (comfy, original,
  diffusers): each output tensor's bytes equal the source's bytes after the documented layout
  transform. References are independent of the code under test: the source bundle itself
  (prefix stripped) for original names, and the fixture's own diffusers/transformers model
  (`factory.diffusers_state`, cast as the bundle is) for diffusers names.
* split then merge gives back the bundle, bit for bit, minus the junk split drops.
* The options (--components, --dtype, --allow-overflow, --extract-ema, --fix-position-ids,
  --store, --dry-run, --json, --prefix), the manifest, and the errors (exit 2, one line on
  stderr, nothing half-written, inputs never modified).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import struct
from collections import Counter
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from ckptkit import __version__
from ckptkit.cli import cli
from ckptkit.fixtures import factory
from ckptkit.convert.models import TRANSFORMERS_CONFIGS
from ckptkit.formats.safetensors import SafetensorsWriter, save_safetensors

FIXTURES = sorted(factory.FIXTURES)
LAYOUTS = ("comfy", "original", "diffusers")
# What factory._ldm_junk adds to SD1/SD2/SDXL bundles besides the EMA copy and position_ids.
LDM_JUNK = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "model_ema.decay", "model_ema.num_updates"}
EMA_PREFIX = "model_ema.diffusion_model"
POSITION_IDS = "text_model.embeddings.position_ids"
T5_TIED = "encoder.embed_tokens.weight"  # a stored duplicate of shared.weight, never written
INPUT_HASHES: dict[Path, str] = {}  # every input file this module makes -> its sha256 when made


# ---------------------------------------------------------------- helpers

def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def fails(*args, contains: tuple[str, ...] = ()) -> str:
    """The command exits 2 with exactly one line on stderr and no traceback; returns the line."""
    result = run(*args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ckptkit: error: "), result.stderr
    assert "Traceback" not in result.output
    for text in contains:
        assert text in lines[0], lines[0]
    return lines[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def record_input(path: Path) -> Path:
    INPUT_HASHES[Path(path)] = sha256(path)
    return Path(path)


@pytest.fixture(autouse=True)
def _own_inputs_never_modified(tmp_path):
    """A test's own inputs (in its tmp_path, removed when it passes) are checked as it ends; the
    module's shared inputs by test_zz_inputs_never_modified, after every test has used them."""
    yield
    for path in [p for p in INPUT_HASHES if p.is_relative_to(tmp_path)]:
        assert sha256(path) == INPUT_HASHES.pop(path), path


def raw_safetensors(path: Path) -> tuple[dict[str, tuple[str, tuple, bytes]], dict]:
    """{name: (dtype, shape, data bytes)} straight from the file (own parser, not ckptkit's)."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    return {k: (v["dtype"], tuple(v["shape"]), data[base + v["data_offsets"][0]:base + v["data_offsets"][1]])
            for k, v in header.items()}, meta


def tbytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_tensors_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], where: str) -> None:
    assert sorted(got) == sorted(want), (where, sorted(set(got) ^ set(want))[:10])
    for name, w in want.items():
        g = got[name]
        assert g.dtype == w.dtype and g.shape == w.shape, (where, name, g.dtype, w.dtype, g.shape, w.shape)
        assert torch.equal(g, w), (where, name)
        assert tbytes(g) == tbytes(w), (where, name)


def assert_raw_equal(got: dict, want: dict, where: str) -> None:
    """Raw file slices (dtype, shape, bytes) are identical."""
    assert sorted(got) == sorted(want), (where, sorted(set(got) ^ set(want))[:10])
    for name in want:
        assert got[name] == want[name], (where, name, got[name][:2], want[name][:2])


def cast(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def strip(state: dict, prefix: str) -> dict:
    return {n[len(prefix):]: t for n, t in state.items() if n.startswith(prefix)}


def meta_shapes(class_name: str, config: dict | Path) -> dict[str, tuple[int, ...]]:
    """State-dict names and shapes of a diffusers/transformers model built (on the meta device)
    from a config dict or a config.json. transformers >= 5.6 flattened CLIPTextModel (no
    `text_model.` level); real files and ours keep `text_model.`. T5's tied copy is never written."""
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=True):
        if hasattr(diffusers, class_name):
            cls = getattr(diffusers, class_name)
            model = cls.from_config(json.loads(config.read_text()) if isinstance(config, Path) else config)
        else:
            config_cls = getattr(transformers, TRANSFORMERS_CONFIGS[class_name])
            cfg = config_cls.from_json_file(config) if isinstance(config, Path) else config_cls(**config)
            model = getattr(transformers, class_name)(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if class_name.startswith("CLIPTextModel"):
        shapes = {k if k.startswith(("text_model.", "text_projection.", "logit_scale")) else "text_model." + k: v
                  for k, v in shapes.items()}
    shapes.pop(T5_TIED, None)
    return shapes


def diffusers_file(comp) -> str:
    name = "model" if comp.role == "text_encoder" else "diffusion_pytorch_model"
    return f"{comp.diffusers_folder}/{name}.safetensors"


def partials(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if p.name.endswith(".partial")]


def dropped_entry(manifest: dict, word: str) -> dict | None:
    hits = [v for reason, v in manifest["dropped"].items() if word in reason]
    assert len(hits) <= 1
    return hits[0] if hits else None


def expected_junk(bundle: dict) -> tuple[set[str], set[str]]:
    """(junk, EMA copies) of a bundle, by the names the fixture factory gives them."""
    return {n for n in bundle if n in LDM_JUNK}, {n for n in bundle if n.startswith(EMA_PREFIX)}


# ---------------------------------------------------------------- module fixtures

class Work:
    """Bundles and split/merge results, made once per module and shared by the tests."""

    def __init__(self, root: Path):
        self.root = root
        self._bundles: dict[tuple, Path] = {}
        self._states: dict[Path, dict] = {}
        self._splits: dict[tuple, Path] = {}
        self._merges: dict[tuple, Path] = {}

    def bundle(self, fixture: str, dtype: torch.dtype = torch.float16) -> Path:
        key = (fixture, dtype)
        if key not in self._bundles:
            tag = str(dtype).removeprefix("torch.")
            path = factory.write_bundle(fixture, self.root / "bundles" / f"{fixture}-{tag}.safetensors", dtype=dtype)
            self._bundles[key] = record_input(path)
        return self._bundles[key]

    def state(self, path: Path) -> dict[str, torch.Tensor]:
        if path not in self._states:
            self._states[path] = load_file(path)
        return self._states[path]

    def split(self, fixture: str, layout: str) -> Path:
        key = (fixture, layout)
        if key not in self._splits:
            out = self.root / "split" / f"{fixture}-{layout}"
            ok("split", self.bundle(fixture), "-o", out, "--layout", layout)
            self._splits[key] = out
        return self._splits[key]

    def merge(self, fixture: str, layout: str) -> Path:
        key = (fixture, layout)
        if key not in self._merges:
            folder = self.split(fixture, layout)
            before = {p: sha256(p) for p in folder.rglob("*") if p.is_file()}
            out = self.root / "merged" / f"{fixture}-{layout}.safetensors"
            ok("merge", folder, "-o", out)
            assert {p: sha256(p) for p in folder.rglob("*") if p.is_file()} == before  # merge input untouched
            self._merges[key] = out
        return self._merges[key]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Work:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny tensors: intra-op threads only add latency
    yield Work(tmp_path_factory.mktemp("split_merge"))
    torch.set_num_threads(threads)


def check_manifest(work: Work, out: Path, bundle: Path, fixture: str, layout: str, components: list[str]) -> dict:
    m = json.loads((out / "ckptkit.json").read_text())
    fx = factory.FIXTURES[fixture]
    assert m["tool"] == f"ckptkit {__version__}"
    assert m["kind"] == "split"
    assert m["source"]["path"] == str(bundle)
    assert m["source"]["files"] == {str(bundle): {"size": bundle.stat().st_size, "sha256": sha256(bundle)}}
    assert (m["family"], m["variant"], m["layout"]) == (fx.family, fx.variant, layout)
    assert sorted(m["components"]) == sorted(components)
    for name, entry in m["components"].items():
        comp = fx.spec.component(name)
        path = out / entry["file"]
        raw, meta = raw_safetensors(path)
        assert entry["file"] == (diffusers_file(comp) if layout == "diffusers" else f"{name}.safetensors")
        assert entry["role"] == comp.role
        assert entry["layout"] == layout
        assert entry["sha256"] == sha256(path)
        assert entry["bytes"] == path.stat().st_size
        assert entry["tensor_count"] == len(raw)
        assert entry["param_count"] == sum(math.prod(shape) for _, shape, _ in raw.values())
        assert entry["dtypes"] == dict(Counter(dtype for dtype, _, _ in raw.values()))
        assert meta.get("ckptkit.component") == name
    # junk and the EMA copy are dropped and listed under their source names
    junk, ema = expected_junk(work.state(bundle))
    j, e = dropped_entry(m, "junk"), dropped_entry(m, "use --extract-ema")
    assert (set(j["names"]) if j else set()) == junk and (j["count"] if j else 0) == len(junk)
    assert (e["count"] if e else 0) == len(ema)
    if e:
        assert set(e["names"]) <= ema and len(e["names"]) == min(50, len(ema))
    return m


# ---------------------------------------------------------------- bit-exact split, every fixture and layout

@pytest.mark.parametrize("fixture", FIXTURES)
def test_split_comfy_bit_exact(work, fixture):
    bundle = work.bundle(fixture)
    out = work.split(fixture, "comfy")
    fx = factory.FIXTURES[fixture]
    src = work.state(bundle)
    src_raw, _ = raw_safetensors(bundle)
    for comp in fx.components:
        path = out / f"{comp.name}.safetensors"
        got = load_file(path)
        got_raw, _ = raw_safetensors(path)
        if comp.role != "text_encoder" or comp.layout in ("hf_clip", "hf_t5"):
            # original names, prefix stripped: the very bytes of the bundle
            assert_tensors_equal(got, strip(src, comp.prefix), f"{fixture}/{comp.name}")
            assert_raw_equal(got_raw, strip(src_raw, comp.prefix), f"{fixture}/{comp.name}")
        if comp.role == "text_encoder":
            # transformers layout: the fixture's own text model, cast as the bundle is
            ref = cast(factory.diffusers_state(fixture, comp.name), torch.float16)
            ref.pop(T5_TIED, None)
            if comp.identity_projection:  # the identity diffusers adds to SD3's CLIP-L; the bundle has none
                ref.pop("text_projection.weight")
            extra = {POSITION_IDS} & set(strip(src, comp.prefix)) if comp.layout == "hf_clip" else set()
            if comp.layout == "open_clip":  # converted: compare the loaded tensors too
                assert_tensors_equal({k: v for k, v in got.items() if k not in extra}, ref, f"{fixture}/{comp.name}")
            assert set(got) - extra == set(ref), (fixture, comp.name)
            for name in ref:
                assert got_raw[name][2] == tbytes(ref[name]), (fixture, comp.name, name)
            for name in extra:  # the bundle's (float) position_ids, kept as they are
                assert got_raw[name] == src_raw[comp.prefix + name]
    manifest = check_manifest(work, out, bundle, fixture, "comfy", [c.name for c in fx.components])
    assert manifest["tokenizer"] == "not applicable"
    assert {n: c["naming"] for n, c in manifest["components"].items()} == {
        c.name: "diffusers" if c.layout == "open_clip" else "original" for c in fx.components}


@pytest.mark.parametrize("fixture", FIXTURES)
def test_split_original_bit_exact(work, fixture):
    bundle = work.bundle(fixture)
    out = work.split(fixture, "original")
    fx = factory.FIXTURES[fixture]
    src, src_raw = work.state(bundle), raw_safetensors(bundle)[0]
    for comp in fx.components:
        path = out / f"{comp.name}.safetensors"
        assert_tensors_equal(load_file(path), strip(src, comp.prefix), f"{fixture}/{comp.name}")
        assert_raw_equal(raw_safetensors(path)[0], strip(src_raw, comp.prefix), f"{fixture}/{comp.name}")
    m = check_manifest(work, out, bundle, fixture, "original", [c.name for c in fx.components])
    # one output tensor per source tensor: written + dropped accounts for the whole bundle
    written = sum(c["tensor_count"] for c in m["components"].values())
    assert written + sum(v["count"] for v in m["dropped"].values()) == len(src)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_split_diffusers_bit_exact(work, fixture):
    bundle = work.bundle(fixture)
    out = work.split(fixture, "diffusers")
    fx = factory.FIXTURES[fixture]
    for comp in fx.components:
        path = out / diffusers_file(comp)
        got = load_file(path)
        got_raw, _ = raw_safetensors(path)
        # exactly the fixture model's state dict; and the written config.json builds that model
        shapes = {k: tuple(v.shape) for k, v in got.items()}
        want = meta_shapes(comp.diffusers_class, factory.FIXTURES[fixture].config(comp.name))
        assert shapes == want, (fixture, comp.name, sorted(set(shapes) ^ set(want))[:5])
        assert meta_shapes(comp.diffusers_class, out / comp.diffusers_folder / "config.json") == want, (fixture, comp.name)
        ref = cast(factory.diffusers_state(fixture, comp.name), torch.float16)
        ref = {k: v for k, v in ref.items() if k in got}
        assert_tensors_equal(got, ref, f"{fixture}/{comp.name}")
        for name, t in ref.items():
            assert got_raw[name] == (got_raw[name][0], tuple(t.shape), tbytes(t)), (fixture, comp.name, name)
    index = json.loads((out / "model_index.json").read_text())
    variant = next((v for v in fx.spec.variants if v.name == fx.variant), None)
    assert index["_class_name"] == (getattr(variant, "pipeline", None) or fx.spec.pipeline)
    for comp in fx.components:
        lib = "transformers" if comp.role == "text_encoder" else "diffusers"
        assert index[comp.diffusers_folder] == [lib, comp.diffusers_class]
    assert (out / "scheduler" / "scheduler_config.json").is_file()
    manifest = check_manifest(work, out, bundle, fixture, "diffusers", [c.name for c in fx.components])
    assert manifest["tokenizer"].startswith("absent")
    # what a diffusers model cannot hold is dropped and listed, by its source name
    not_part = {n for reason, v in manifest["dropped"].items() if reason.startswith("not part of") for n in v["names"]}
    want = {c.prefix + POSITION_IDS for c in fx.components if c.layout == "hf_clip"} & set(work.state(bundle))
    assert want <= not_part


# ---------------------------------------------------------------- split then merge: the bundle, bit for bit

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fixture", FIXTURES)
def test_split_merge_round_trip(work, fixture, layout):
    bundle = work.bundle(fixture)
    merged = work.merge(fixture, layout)
    src_raw, _ = raw_safetensors(bundle)
    got_raw, meta = raw_safetensors(merged)
    assert meta["ckptkit.family"] == factory.FIXTURES[fixture].family
    junk, ema = expected_junk(work.state(bundle))
    want = {n: v for n, v in src_raw.items() if n not in junk | ema}
    if layout == "diffusers":
        # the few tensors a diffusers model does not hold (CLIP position_ids, Sana's pos_embed) are
        # listed as dropped; merge rebuilds what an original file must carry, identical here
        manifest = json.loads((work.split(fixture, layout) / "ckptkit.json").read_text())
        not_part = {n for r, v in manifest["dropped"].items() if r.startswith("not part of") for n in v["names"]}
        assert set(want) - set(got_raw) <= not_part
        assert set(got_raw) <= set(want)
        want = {n: v for n, v in want.items() if n in got_raw}
    assert_raw_equal(got_raw, want, f"{fixture}/{layout}")
    assert_tensors_equal(load_file(merged), {n: t for n, t in work.state(bundle).items() if n in want},
                         f"{fixture}/{layout}")


# ---------------------------------------------------------------- options

def test_components_option(work, tmp_path):
    bundle = work.bundle("sd1")
    src = work.state(bundle)
    ok("split", bundle, "-o", tmp_path / "o", "--components", "diffusion_model,vae", "--dtype", "keep")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["ckptkit.json", "diffusion_model.safetensors",
                                                                 "vae.safetensors"]
    assert_tensors_equal(load_file(tmp_path / "o" / "vae.safetensors"), strip(src, "first_stage_model."), "vae")
    m = check_manifest(work, tmp_path / "o", bundle, "sd1", "comfy", ["diffusion_model", "vae"])
    not_requested = dropped_entry(m, "not requested")
    assert set(not_requested["names"]) == {n for n in src if n.startswith("cond_stage_model.")}
    fails("split", bundle, "-o", tmp_path / "p", "--components", "diffusion_model,clip_g", contains=("clip_g",))
    assert not (tmp_path / "p").exists()


def test_dtype_cast_fp32_to_fp16_and_bf16(work, tmp_path):
    """An fp32 bundle cast to fp16 gives the very files an fp16 bundle splits into; bf16 likewise
    equals the fp32 values cast; position_ids (float junk) are never cast."""
    b32 = work.bundle("sdxl", torch.float32)
    src32 = work.state(b32)
    ok("split", b32, "-o", tmp_path / "f16", "--dtype", "fp16")
    ref16 = work.split("sdxl", "comfy")
    for comp in factory.FIXTURES["sdxl"].components:
        name = f"{comp.name}.safetensors"
        assert sha256(tmp_path / "f16" / name) == sha256(ref16 / name), name
    m = json.loads((tmp_path / "f16" / "ckptkit.json").read_text())
    assert m["components"]["diffusion_model"]["dtypes"] == {"F16": m["components"]["diffusion_model"]["tensor_count"]}
    assert m["components"]["clip_l"]["dtypes"]["F32"] == 1  # position_ids

    ok("split", b32, "-o", tmp_path / "bf16", "--dtype", "bf16", "--components", "diffusion_model,clip_l")
    for comp, prefix in (("diffusion_model", "model.diffusion_model."), ("clip_l", "conditioner.embedders.0.transformer.")):
        want = {n: (t if n == POSITION_IDS else t.to(torch.bfloat16)) for n, t in strip(src32, prefix).items()}
        assert_tensors_equal(load_file(tmp_path / "bf16" / f"{comp}.safetensors"), want, comp)

    # diffusers layout + bf16: the fixture's model, cast after the layout change
    ok("split", b32, "-o", tmp_path / "dbf16", "--dtype", "bf16", "--layout", "diffusers", "--components", "clip_g,vae")
    for name in ("clip_g", "vae"):
        comp = factory.FIXTURES["sdxl"].spec.component(name)
        assert_tensors_equal(load_file(tmp_path / "dbf16" / diffusers_file(comp)),
                             cast(factory.diffusers_state("sdxl", name), torch.bfloat16), name)


def test_dtype_bf16_t5_and_fp32_upcast(work, tmp_path):
    b32 = work.bundle("flux_schnell", torch.float32)
    ok("split", b32, "-o", tmp_path / "d", "--dtype", "bf16", "--layout", "diffusers")
    t5 = factory.FIXTURES["flux_schnell"].spec.component("t5xxl")
    ref = cast(factory.diffusers_state("flux_schnell", "t5xxl"), torch.bfloat16)
    ref.pop(T5_TIED)
    assert_tensors_equal(load_file(tmp_path / "d" / diffusers_file(t5)), ref, "t5xxl")
    # fp16 -> fp32 is exact: casting the output back gives the source bytes
    b16 = work.bundle("flux_schnell")
    ok("split", b16, "-o", tmp_path / "up", "--dtype", "fp32", "--layout", "original")
    src = work.state(b16)
    for comp in factory.FIXTURES["flux_schnell"].components:
        got = load_file(tmp_path / "up" / f"{comp.name}.safetensors")
        assert {t.dtype for t in got.values()} == {torch.float32}
        assert_tensors_equal(cast(got, torch.float16), strip(src, comp.prefix), comp.name)


def test_integer_tensors_never_cast(work, tmp_path):
    state = factory.bundle_state("sd1", dtype=torch.float32, junk=False)
    ids = torch.arange(77, dtype=torch.int64)[None]
    state["cond_stage_model.transformer." + POSITION_IDS] = ids
    save_safetensors(tmp_path / "int_ids.safetensors", state)
    bundle = record_input(tmp_path / "int_ids.safetensors")
    for dtype, code in (("fp16", "F16"), ("bf16", "BF16")):
        ok("split", bundle, "-o", tmp_path / dtype, "--dtype", dtype, "--components", "clip_l")
        raw, _ = raw_safetensors(tmp_path / dtype / "clip_l.safetensors")
        assert raw[POSITION_IDS] == ("I64", (1, 77), tbytes(ids))
        assert {d for n, (d, _, _) in raw.items() if n != POSITION_IDS} == {code}
        plan = json.loads(ok("split", bundle, "-o", tmp_path / "x", "--dtype", dtype, "--dry-run", "--json").stdout)
        op = next(t for o in plan["plan"]["outputs"] for t in o["tensors"] if t["name"] == POSITION_IDS)
        assert (op["op"], op["dtype"]) == ("copy", "I64")


def test_fp16_overflow_refused_unless_allowed(work, tmp_path):
    state = factory.bundle_state("flux_schnell", dtype=torch.float32)
    big = ["vae.decoder.conv_out.weight", "vae.encoder.conv_in.bias"]
    for name in big:
        state[name] = state[name].clone()
        state[name].view(-1)[0] = 1e6
    already_inf = "model.diffusion_model.img_in.bias"
    state[already_inf] = state[already_inf].clone()
    state[already_inf][0] = float("inf")  # inf in the source is not an overflow
    save_safetensors(tmp_path / "big.safetensors", state)
    bundle = record_input(tmp_path / "big.safetensors")
    out = tmp_path / "o"
    line = fails("split", bundle, "-o", out, "--dtype", "fp16", contains=("overflow", "--allow-overflow"))
    for name in big:
        assert name.removeprefix("vae.") in line
    assert "img_in" not in line
    assert not (out / "vae.safetensors").exists() and not (out / "ckptkit.json").exists()
    assert partials(tmp_path) == []
    # bf16 has the range: no complaint
    ok("split", bundle, "-o", tmp_path / "bf", "--dtype", "bf16", "--components", "vae")
    ok("split", bundle, "-o", out, "--dtype", "fp16", "--allow-overflow", "--force")
    vae = load_file(out / "vae.safetensors")
    for name in big:
        local = name.removeprefix("vae.")
        want = state[name].half()
        assert torch.isinf(vae[local].view(-1)[0]) and torch.equal(vae[local], want)
    assert torch.isinf(load_file(out / "diffusion_model.safetensors")["img_in.bias"][0])


def test_junk_dropped_and_listed(work, tmp_path):
    bundle = work.bundle("sdxl")
    result = ok("split", bundle, "-o", tmp_path / "o", "--layout", "original", "--components", "vae")
    m = json.loads((tmp_path / "o" / "ckptkit.json").read_text())
    junk, ema = expected_junk(work.state(bundle))
    assert junk == LDM_JUNK and len(ema) == len(strip(work.state(bundle), "model.diffusion_model."))
    assert set(dropped_entry(m, "junk")["names"]) == junk
    assert dropped_entry(m, "use --extract-ema")["count"] == len(ema)
    total = sum(v["count"] for v in m["dropped"].values())
    assert total == len(work.state(bundle)) - m["components"]["vae"]["tensor_count"]
    assert f"dropped {total} tensors (listed in the manifest)" in result.stdout


def test_extract_ema(work, tmp_path):
    state = factory.bundle_state("sd1")
    dm = strip(state, "model.diffusion_model.")
    ema = {n: (t.float() * 0.5 + 0.25).half() for n, t in dm.items()}  # differs from the live weights
    for n, t in ema.items():
        state[EMA_PREFIX + n.replace(".", "")] = t
    save_safetensors(tmp_path / "ema.safetensors", state, factory.shipped_configs("sd1"))
    bundle = record_input(tmp_path / "ema.safetensors")
    ok("split", bundle, "-o", tmp_path / "o", "--extract-ema")
    got = load_file(tmp_path / "o" / "diffusion_model.safetensors")
    assert_tensors_equal(got, ema, "ema")
    assert not torch.equal(got["out.2.weight"], dm["out.2.weight"])
    assert_tensors_equal(load_file(tmp_path / "o" / "vae.safetensors"), strip(state, "first_stage_model."), "vae")
    m = json.loads((tmp_path / "o" / "ckptkit.json").read_text())
    assert dropped_entry(m, "use --extract-ema") is None  # written, not dropped
    replaced = dropped_entry(m, "replaced by their EMA copy")  # the live weights are, and listed
    assert replaced["count"] == len(dm) and set(replaced["names"]) <= {"model.diffusion_model." + n for n in dm}
    written = sum(c["tensor_count"] for c in m["components"].values())
    assert written + sum(v["count"] for v in m["dropped"].values()) == len(state)  # every source tensor accounted for
    assert set(dropped_entry(m, "junk")["names"]) == LDM_JUNK
    assert any("EMA" in note for note in m["notes"])
    # diffusers layout: the same as a bundle whose live weights are the EMA ones
    ok("split", bundle, "-o", tmp_path / "d", "--extract-ema", "--layout", "diffusers", "--components", "diffusion_model")
    swapped = {n: t for n, t in state.items() if not n.startswith(("model.diffusion_model.", "model_ema."))}
    swapped.update({"model.diffusion_model." + n: t for n, t in ema.items()})
    save_safetensors(tmp_path / "swapped.safetensors", swapped, factory.shipped_configs("sd1"))
    ok("split", tmp_path / "swapped.safetensors", "-o", tmp_path / "s", "--layout", "diffusers",
       "--components", "diffusion_model")
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert raw_safetensors(tmp_path / "d" / unet)[0] == raw_safetensors(tmp_path / "s" / unet)[0]
    # a file without an EMA copy
    fails("split", work.bundle("flux_dev"), "-o", tmp_path / "f", "--extract-ema", contains=("EMA",))


def test_fix_position_ids(work, tmp_path):
    bundle = work.bundle("sd1")
    src = work.state(bundle)
    clip = strip(src, "cond_stage_model.transformer.")
    assert clip[POSITION_IDS].dtype == torch.float32 and clip[POSITION_IDS][0, 76] != 76  # broken, as merged files
    ok("split", bundle, "-o", tmp_path / "o", "--fix-position-ids")
    got = load_file(tmp_path / "o" / "clip_l.safetensors")
    ids = got.pop(POSITION_IDS)
    assert ids.dtype == torch.int64 and torch.equal(ids, torch.arange(77)[None])
    clip.pop(POSITION_IDS)
    assert_tensors_equal(got, clip, "clip_l")
    m = json.loads((tmp_path / "o" / "ckptkit.json").read_text())
    assert any(POSITION_IDS in n and "arange" in n for n in m["notes"]), m["notes"]
    assert m["components"]["clip_l"]["dtypes"] == {"F16": 36, "I64": 1}
    # merged back: int64 ids under the bundle prefix
    ok("merge", tmp_path / "o", "-o", tmp_path / "m.safetensors")
    merged = load_file(tmp_path / "m.safetensors")
    assert torch.equal(merged["cond_stage_model.transformer." + POSITION_IDS], torch.arange(77)[None])


def test_store_dedups_components(work, tmp_path):
    store = tmp_path / "store"
    bundle = work.bundle("sd1")
    ok("split", bundle, "-o", tmp_path / "a", "--store", store)
    m1 = json.loads((tmp_path / "a" / "ckptkit.json").read_text())
    assert m1["store"]["reused"] == 0 and m1["store"]["bytes_saved"] == 0
    stored = {c: store / "sha256" / e["sha256"][:2] / f"{e['sha256']}.safetensors" for c, e in m1["components"].items()}
    for comp, path in stored.items():
        assert path.is_file() and sha256(path) == m1["components"][comp]["sha256"]
        assert path.stat().st_ino == (tmp_path / "a" / f"{comp}.safetensors").stat().st_ino

    # a fine-tune that only changed the VAE: the diffusion model and CLIP are not written again
    state = dict(work.state(bundle))
    state["first_stage_model.decoder.conv_out.bias"] = state["first_stage_model.decoder.conv_out.bias"] + 1
    save_safetensors(tmp_path / "tuned.safetensors", state, factory.shipped_configs("sd1"))
    tuned = record_input(tmp_path / "tuned.safetensors")
    result = ok("split", tuned, "-o", tmp_path / "b", "--store", store)
    m2 = json.loads((tmp_path / "b" / "ckptkit.json").read_text())
    saved = sum(stored[c].stat().st_size for c in ("diffusion_model", "clip_l"))
    assert m2["store"]["reused"] == 2 and m2["store"]["bytes_saved"] == saved
    assert set(m2["store"]["links"]) == {"diffusion_model", "clip_l"}
    assert f"store: 2 component(s) already stored" in result.stdout and "saved" in result.stdout
    for comp in ("diffusion_model", "clip_l"):
        out = tmp_path / "b" / f"{comp}.safetensors"
        assert m2["store"]["links"][comp]["how"] == "hardlink"
        assert out.stat().st_ino == stored[comp].stat().st_ino == (tmp_path / "a" / out.name).stat().st_ino
        assert m2["components"][comp]["sha256"] == sha256(out) == m1["components"][comp]["sha256"]
    vae = tmp_path / "b" / "vae.safetensors"
    assert m2["components"]["vae"]["sha256"] == sha256(vae) != m1["components"]["vae"]["sha256"]
    assert_tensors_equal(load_file(vae), strip(state, "first_stage_model."), "vae")
    assert len(list(store.rglob("*.safetensors"))) == 4


def test_dry_run_and_json(work, tmp_path):
    bundle = work.bundle("sdxl")
    out = tmp_path / "o"
    human = ok("split", bundle, "-o", out, "--dry-run").stdout
    assert not out.exists()
    assert human.startswith(f"plan: split {bundle}")
    for comp in factory.FIXTURES["sdxl"].components:
        assert f"{comp.name}.safetensors" in human
    assert "dropped:" in human and "5 x junk" in human
    plan = json.loads(ok("split", bundle, "-o", out, "--dry-run", "--json", "--layout", "diffusers").stdout)["plan"]
    assert not out.exists()
    assert plan["kind"] == "split" and plan["info"]["family"] == "sdxl"
    real = json.loads((work.split("sdxl", "diffusers") / "ckptkit.json").read_text())
    assert {o["component"]: (o["path"], o["tensor_count"]) for o in plan["outputs"]} == {
        c: (e["file"], e["tensor_count"]) for c, e in real["components"].items()}
    assert "model_index.json" in plan["sidecars"] and "text_encoder_2/config.json" in plan["sidecars"]
    ops = {o["component"]: Counter(t["op"] for t in o["tensors"]) for o in plan["outputs"]}
    assert ops["clip_g"]["layout"] > 0  # OpenCLIP's fused in_proj is sliced into q/k/v
    assert set(ops["clip_l"]) == {"copy"}
    assert "betas" in plan["dropped"]
    # a real run with --json: the files as written, with the manifest
    data = json.loads(ok("split", bundle, "-o", out, "--json", "--components", "vae").stdout)
    assert [f["path"] for f in data["files"]] == ["vae.safetensors"]
    assert data["files"][0]["sha256"] == sha256(out / "vae.safetensors") == data["manifest"]["components"]["vae"]["sha256"]


def test_convert_component_round_trip(work, tmp_path):
    """One component file -> diffusers folder -> back: the same bytes; equal to split's output."""
    for fixture, comp_name in (("sdxl", "diffusion_model"), ("flux_dev", "diffusion_model"), ("sdxl", "clip_g")):
        comfy = work.split(fixture, "comfy") / f"{comp_name}.safetensors"
        comp = factory.FIXTURES[fixture].spec.component(comp_name)
        folder = tmp_path / f"{fixture}-{comp_name}"
        ok("convert", comfy, "--layout", "diffusers", "-o", folder)
        name = Path(diffusers_file(comp)).name
        diff = work.split(fixture, "diffusers") / diffusers_file(comp)
        assert raw_safetensors(folder / name)[0] == raw_safetensors(diff)[0]
        assert (folder / "config.json").is_file()
        if comp.layout == "open_clip":
            continue  # the comfy clip_g file is already in transformers names
        back = tmp_path / f"{fixture}-{comp_name}.safetensors"
        ok("convert", folder, "--layout", "original", "-o", back)
        assert raw_safetensors(back)[0] == raw_safetensors(comfy)[0]
        fails("convert", folder, "--layout", "original", "-o", back, contains=("exists",))


# ---------------------------------------------------------------- errors

def test_unknown_family_suggests_prefix(tmp_path):
    save_safetensors(tmp_path / "mystery.safetensors", {"enc.w": torch.ones(2, 2), "dec.w": torch.zeros(3)})
    path = record_input(tmp_path / "mystery.safetensors")
    fails("split", path, "-o", tmp_path / "o", contains=("--layout original --prefix NAME=PREFIX",))
    assert not (tmp_path / "o").exists()


def test_split_by_prefix(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {"net.enc.a.weight": torch.randn(4, 3, generator=g).half(), "net.enc.b": torch.randn(5, generator=g),
             "net.dec.c": torch.randint(0, 9, (2, 2), dtype=torch.int64, generator=g), "stray": torch.ones(1)}
    save_safetensors(tmp_path / "custom.safetensors", state)
    path = record_input(tmp_path / "custom.safetensors")
    out = tmp_path / "o"
    ok("split", path, "-o", out, "--layout", "original", "--prefix", "encoder=net.enc.", "--prefix", "decoder=net.dec.")
    assert_tensors_equal(load_file(out / "encoder.safetensors"), strip(state, "net.enc."), "encoder")
    assert_tensors_equal(load_file(out / "decoder.safetensors"), strip(state, "net.dec."), "decoder")
    src_raw = raw_safetensors(path)[0]
    assert raw_safetensors(out / "encoder.safetensors")[0] == strip(src_raw, "net.enc.")
    m = json.loads((out / "ckptkit.json").read_text())
    assert m["family"] is None and sorted(m["components"]) == ["decoder", "encoder"]
    assert m["components"]["encoder"]["sha256"] == sha256(out / "encoder.safetensors")
    assert m["components"]["encoder"]["tensor_count"] == 2 and m["components"]["encoder"]["param_count"] == 17
    assert dropped_entry(m, "no requested prefix")["names"] == ["stray"]
    assert m["source"]["files"][str(path)]["sha256"] == sha256(path)
    # --dtype applies, integer tensors stay
    ok("split", path, "-o", tmp_path / "c", "--layout", "original", "--prefix", "all=net.", "--dtype", "fp16")
    raw = raw_safetensors(tmp_path / "c" / "all.safetensors")[0]
    assert {n: d for n, (d, _, _) in raw.items()} == {"enc.a.weight": "F16", "enc.b": "F16", "dec.c": "I64"}
    fails("split", path, "-o", tmp_path / "x", "--prefix", "encoder=net.enc.", contains=("--layout original",))
    fails("split", path, "-o", tmp_path / "x", "--layout", "original", "--prefix", "nothing=zzz.", contains=("zzz.",))
    fails("split", path, "-o", tmp_path / "x", "--layout", "original", "--prefix", "noequals", contains=("NAME=PREFIX",))
    assert not (tmp_path / "x").exists()


def test_output_dir_not_empty(work, tmp_path):
    bundle = work.bundle("flux_schnell")
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    fails("split", bundle, "-o", out, contains=("not empty", "--force"))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    ok("split", bundle, "-o", out, "--force")
    assert (out / "keep.txt").read_text() == "mine" and (out / "ckptkit.json").is_file()
    # merge refuses to replace an existing file unless --force
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"old")
    fails("merge", out, "-o", target, contains=("exists", "--force"))
    assert target.read_bytes() == b"old"
    ok("merge", out, "-o", target, "--force")
    assert raw_safetensors(target)[0] == raw_safetensors(work.merge("flux_schnell", "comfy"))[0]


def _fail_mid_file(monkeypatch, filename: str, exc: BaseException):
    """Make the writer raise after the header and two tensors of `filename` went out."""
    original = SafetensorsWriter.write_bytes

    def write_bytes(self, name, data):
        if self.path.name == filename and self._next == 2:
            raise exc
        return original(self, name, data)

    monkeypatch.setattr(SafetensorsWriter, "write_bytes", write_bytes)


def test_disk_full_leaves_nothing_half_written(work, tmp_path, monkeypatch):
    bundle = work.bundle("sd1")
    out = tmp_path / "o"
    _fail_mid_file(monkeypatch, "clip_l.safetensors", OSError(errno.ENOSPC, "No space left on device"))
    fails("split", bundle, "-o", out, contains=("No space left on device",))
    assert not (out / "clip_l.safetensors").exists() and not (out / "ckptkit.json").exists()
    assert not (out / "vae.safetensors").exists()
    assert partials(tmp_path) == []
    # merge: no bundle under the final name either
    _fail_mid_file(monkeypatch, "merged.safetensors", OSError(errno.ENOSPC, "No space left on device"))
    fails("merge", work.split("sd1", "comfy"), "-o", tmp_path / "merged.safetensors", contains=("No space",))
    assert not (tmp_path / "merged.safetensors").exists() and partials(tmp_path) == []
    monkeypatch.undo()
    ok("split", bundle, "-o", out, "--force")
    assert raw_safetensors(out / "clip_l.safetensors")[0] == raw_safetensors(work.split("sd1", "comfy") / "clip_l.safetensors")[0]


def test_interrupt_leaves_nothing_half_written(work, tmp_path, monkeypatch):
    _fail_mid_file(monkeypatch, "diffusion_model.safetensors", KeyboardInterrupt())
    result = run("split", work.bundle("sd3"), "-o", tmp_path / "o")
    assert result.exit_code == 130 and result.stderr.strip() == "ckptkit: interrupted"
    assert partials(tmp_path) == [] and not (tmp_path / "o" / "diffusion_model.safetensors").exists()


@pytest.mark.parametrize("args, text", [
    (("split", "{missing}", "-o", "{tmp}/o"), "no-such"),
    (("split", "{bundle}", "-o", "{tmp}/o", "--components", "clip_h"), "clip_h"),
    (("split", "{bundle}", "-o", "{tmp}/o", "--extract-ema", "--components", "vae", "--layout", "diffusers",
      "--prefix", "x"), "NAME=PREFIX"),
    (("split", "{bundle}", "-o", "{bundle}"), "is the input"),
    (("merge", "{bundle}", "-o", "{tmp}/m.safetensors"), "not a directory"),
    (("merge", "{tmp}", "-o", "{tmp}/m.safetensors"), "lies inside the input"),
    (("merge", "{tmp}/empty", "-o", "{tmp}/m.safetensors"), "no component files"),
    (("convert", "{bundle}", "-o", "{tmp}/c.safetensors", "--layout", "original"), "already"),
])
def test_cli_errors_exit_2_one_line(work, tmp_path, args, text):
    bundle = work.bundle("sd1")
    (tmp_path / "empty").mkdir()
    fmt = dict(missing=tmp_path / "no-such.safetensors", tmp=tmp_path, bundle=bundle)
    fails(*(a.format(**fmt) for a in args), contains=(text,))
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob("*.safetensors"))


def test_zz_inputs_never_modified():
    assert INPUT_HASHES, "the tests above made input files"
    for path, digest in INPUT_HASHES.items():
        assert sha256(path) == digest, path
