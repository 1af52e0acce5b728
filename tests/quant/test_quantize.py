"""`ckptkit quantize`: per-component policy decided on final names, the same output bytes from every
input form, safe scales, GGUF conventions, and files real clients (gguf-py, diffusers) load."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ckptkit import pipeline
from ckptkit.cli import cli
from ckptkit.convert.split import SplitOptions
from ckptkit.errors import CkptError
from ckptkit.families import get_family
from ckptkit.fixtures import factory
from ckptkit.formats import open_checkpoint
from ckptkit.formats.gguf import GGUFStreamWriter
from ckptkit.formats.safetensors import save_safetensors
from ckptkit.quant import ggml
from ckptkit.quant.policy import Policy, decide, load_policy_file
from ckptkit.quant.types import parse_request

FAMILIES = ("sdxl", "flux_dev", "sd3")
# --component types per fixture (the diffusion model always gets --type q4_k_m)
# (text encoders the default client, ComfyUI-GGUF, loads from GGUF: T5; CLIP GGUFs are for sd.cpp,
# tested below with --client sdcpp)
COMPONENT_TYPES = {
    "sdxl": {},
    "flux_dev": {"t5xxl": "q5_k_m"},
    "sd3": {"t5xxl": "q5_k_m"},
}
ARCH = {"sdxl": "sdxl", "flux_dev": "flux", "sd3": "sd3"}
SETS = ("bundle", "comfy", "original", "diffusers")  # forms holding every component


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def type_report(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (ggml type, stored shape) as gguf-py reads the file."""
    reader = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type.name, tuple(int(d) for d in reversed(t.shape.tolist()))) for t in reader.tensors}


def field(reader: gguf.GGUFReader, key: str):
    f = reader.get_field(key)
    return None if f is None else f.contents()


def type_args(fx: str, form: str) -> list[str]:
    args = ["--type", "q4_k_m"]
    if form in SETS:
        for comp, t in COMPONENT_TYPES[fx].items():
            args += ["--component", f"{comp}={t}"]
    return args


# --- the same model in every input form ----------------------------------------------------------


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    """fixture -> form -> path: the bundle, its split in the three layouts, an F16 GGUF of the
    diffusion model, and the comfy component files one by one."""
    root = tmp_path_factory.mktemp("forms")
    out = {}
    for fx in FAMILIES:
        d = root / fx
        bundle = factory.write_bundle(fx, d / "bundle.safetensors")
        out[fx] = {"bundle": bundle, "gguf": factory.write_gguf(fx, d / "dm.gguf")}
        for layout in ("comfy", "original", "diffusers"):
            pipeline.split(bundle, d / layout, SplitOptions(layout=layout))
            out[fx][layout] = d / layout
        for comp in ["diffusion_model", *COMPONENT_TYPES[fx]]:
            out[fx][f"file:{comp}"] = d / "comfy" / f"{comp}.safetensors"
    return out


@pytest.fixture(scope="module")
def quantized(forms, tmp_path_factory):
    """fixture -> form -> {component: gguf path}, plus the --json result of each set run."""
    root = tmp_path_factory.mktemp("quantized")
    out, results = {}, {}
    for fx, paths in forms.items():
        out[fx] = {}
        for form, src in paths.items():
            if form.startswith("file:"):
                comp = form[5:]
                target = root / fx / f"{comp}.{form[5:]}.gguf"
                t = "q4_k_m" if comp == "diffusion_model" else COMPONENT_TYPES[fx][comp]
                res = run("quantize", src, "-o", target, "--to", "gguf", "--type", t)
                assert res.exit_code == 0, res.output
                out[fx][form] = {comp: target}
                continue
            target = root / fx / form
            res = run("quantize", src, "-o", target, "--to", "gguf", *type_args(fx, form), "--json")
            assert res.exit_code == 0, res.output
            results[fx, form] = json.loads(res.stdout)
            out[fx][form] = {p.stem: p for p in target.glob("*.gguf")}
    return out, results


@pytest.mark.parametrize("fx", FAMILIES)
def test_same_types_and_bytes_from_every_input_form(quantized, fx):
    """bundle, comfy/original/diffusers component sets, an F16 GGUF and single component files give
    the identical per-tensor type report and identical GGUF bytes (stable-diffusion.cpp #605)."""
    files, _ = quantized
    by_comp: dict[str, dict[str, Path]] = {}
    for form, comps in files[fx].items():
        for comp, path in comps.items():
            by_comp.setdefault(comp, {})[form] = path
    assert set(by_comp) == {"diffusion_model", *COMPONENT_TYPES[fx]}
    assert set(by_comp["diffusion_model"]) == {*SETS, "gguf", "file:diffusion_model"}
    for comp, paths in by_comp.items():
        assert len(paths) >= 5, (comp, sorted(paths))
        reports = {form: type_report(p) for form, p in paths.items()}
        ref_form = "bundle"
        for form, report in reports.items():
            assert report == reports[ref_form], f"{fx}/{comp}: types from {form} differ from the bundle's"
        digests = {form: sha256(p) for form, p in paths.items()}
        assert len(set(digests.values())) == 1, f"{fx}/{comp}: {digests}"
        assert any(t not in ("F32", "F16", "BF16") for t, _ in reports[ref_form].values())


@pytest.mark.parametrize("fx", FAMILIES)
def test_plan_report_is_the_same_from_every_set_and_matches_the_files(quantized, fx):
    files, results = quantized
    policies = {form: {c: v["policy"] for c, v in results[fx, form]["manifest"]["components"].items()}
                for form in SETS}
    for form in SETS:
        assert policies[form] == policies["bundle"], form
    pol = policies["bundle"]
    assert pol["diffusion_model"]["requested"] == "q4_k_m"
    for comp, t in COMPONENT_TYPES[fx].items():
        assert pol[comp]["requested"] == t and pol[comp]["format"] == "gguf"
    assert pol["vae"] == {"requested": "keep", "format": "safetensors", "quantized_tensors": 0,
                          "types": pol["vae"]["types"], "kept_high_precision": {}, "fallbacks": {}}
    for comp in ["diffusion_model", *COMPONENT_TYPES[fx]]:
        reader = gguf.GGUFReader(files[fx]["bundle"][comp])
        actual: dict[str, dict] = {}
        for t in reader.tensors:
            e = actual.setdefault(t.tensor_type.name, {"tensors": 0, "bytes": 0})
            e["tensors"] += 1
            e["bytes"] += int(t.n_bytes)
        assert pol[comp]["types"] == actual, comp  # tensors and bytes per type, as written
        quant = sum(v["tensors"] for k, v in actual.items() if k not in ("F32", "F16", "BF16"))
        assert pol[comp]["quantized_tensors"] == quant > 0
        kept = pol[comp]["kept_high_precision"]
        assert sum(kept.values()) == sum(v["tensors"] for k, v in actual.items() if k in ("F32", "F16", "BF16"))
        manifest = results[fx, "bundle"]["manifest"]["components"][comp]
        assert manifest["dtypes"] == {k: v["tensors"] for k, v in actual.items()}
        assert manifest["file"] == f"{comp}.gguf"
    dm_kept = pol["diffusion_model"]["kept_high_precision"]
    assert dm_kept["1-D or <= 1024 elements"] > 0
    hp = {"sdxl": "high precision: time_embed.", "flux_dev": "high precision: img_in.",
          "sd3": "high precision: t_embedder."}[fx]
    assert dm_kept[hp] >= 1


def test_sdxl_clip_g_split_from_fused_in_proj_is_quantized(forms, tmp_path):
    """#605: the bundle's clip_g holds OpenCLIP's fused in_proj; the q/k/v split from it (final names)
    are quantized, and their bytes are Q8_0 of the fused weight's slices (a CLIP GGUF: for sd.cpp)."""
    res = run("quantize", forms["sdxl"]["bundle"], "-o", tmp_path / "q", "--client", "sdcpp",
              "--component", "clip_g=q8_0", "--component", "clip_l=q8_0")
    assert res.exit_code == 0, res.output
    assert {p.name for p in (tmp_path / "q").glob("*.gguf")} == {"clip_g.gguf", "clip_l.gguf"}
    path = tmp_path / "q" / "clip_g.gguf"
    report = type_report(path)
    qkv = {n: t for n, t in report.items() if re.search(r"self_attn\.[qkv]_proj\.weight$", n)}
    assert len(qkv) == 6 and all(t == ("Q8_0", (1280, 1280)) for t in qkv.values())
    bundle = open_checkpoint(forms["sdxl"]["bundle"])
    fused = bundle.load("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight")
    assert tuple(fused.shape) == (3840, 1280)
    reader = open_checkpoint(path)
    for i, part in enumerate("qkv"):
        want = ggml.quantize(fused[i * 1280:(i + 1) * 1280].float(), "Q8_0").reshape(-1)
        got = reader.raw(f"text_model.encoder.layers.0.self_attn.{part}_proj.weight")
        assert np.array_equal(got, want), part
    # sd.cpp's own rules (--client sdcpp): the projection is no name its convert keeps, embeddings are
    assert report["text_projection.weight"][0] == "Q8_0"
    assert report["text_model.embeddings.token_embedding.weight"][0] in ("F16", "F32")
    bundle.close()
    clip = gguf.GGUFReader(path)
    assert field(clip, "general.architecture") == "clip"
    assert field(clip, "general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q8_0)


# --- GGUF conventions ----------------------------------------------------------------------------


@pytest.mark.parametrize("fx", FAMILIES)
def test_gguf_metadata_and_names(quantized, fx):
    files, _ = quantized
    comps = files[fx]["bundle"]
    reader = gguf.GGUFReader(comps["diffusion_model"])
    assert field(reader, "general.architecture") == ARCH[fx]
    assert field(reader, "general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q4_K_M) == 15
    assert field(reader, "general.quantization_version") == 2
    names = [t.name for t in reader.tensors]
    assert not any(n.startswith(("model.diffusion_model.", "diffusion_model.")) for n in names)
    assert max(len(n.encode()) for n in names) <= 127
    if "t5xxl" in comps:
        t5 = gguf.GGUFReader(comps["t5xxl"])
        assert field(t5, "general.architecture") == "t5encoder"
        assert field(t5, "general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q5_K_M) == 17
        t5_names = {t.name: t.tensor_type.name for t in t5.tensors}
        assert {"token_embd.weight", "enc.output_norm.weight", "enc.blk.0.attn_q.weight",
                "enc.blk.0.attn_rel_b.weight", "enc.blk.1.ffn_down.weight"} <= set(t5_names)
        assert not any(n.startswith("encoder.") for n in t5_names)
        # q5_k_m: attention v and FFN down up-typed to Q6_K (rows of 128 fall back Q6_K -> Q8_0)
        assert t5_names["enc.blk.0.attn_v.weight"] == "Q8_0" and t5_names["enc.blk.0.attn_q.weight"] == "Q5_1"
        assert t5_names["enc.blk.0.attn_rel_b.weight"] == "F32"
        # read back in transformers names, as ComfyUI-GGUF's T5 loader does
        assert "encoder.block.0.layer.0.SelfAttention.q.weight" in open_checkpoint(comps["t5xxl"]).tensors


def test_sdxl_conv_reshape_with_orig_shape(forms, quantized):
    files, _ = quantized
    path = files["sdxl"]["bundle"]["diffusion_model"]
    reader = gguf.GGUFReader(path)
    name = "input_blocks.1.0.in_layers.2.weight"  # (64, 64, 3, 3): 36864 = 144 x 256, last dim 3
    t = next(t for t in reader.tensors if t.name == name)
    assert tuple(int(d) for d in reversed(t.shape.tolist())) == (144, 256)
    assert t.tensor_type.name == "Q4_K"
    f = reader.get_field(f"comfy.gguf.orig_shape.{name}")
    assert f.types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32] and f.contents() == [64, 64, 3, 3]
    # the family's input conv stays high precision, with its own shape and no orig_shape key
    first = next(t for t in reader.tensors if t.name == "input_blocks.0.0.weight")
    assert first.tensor_type.name == "F16" and reader.get_field("comfy.gguf.orig_shape.input_blocks.0.0.weight") is None
    ck = open_checkpoint(path)
    assert ck.tensors[name].shape == (64, 64, 3, 3)
    with open_checkpoint(forms["sdxl"]["bundle"]) as bundle:
        src = bundle.load("model.diffusion_model." + name).float()
    want = ggml.dequantize(ggml.quantize(src.reshape(144, 256), "Q4_K"), "Q4_K", (144, 256)).reshape(64, 64, 3, 3)
    assert torch.equal(ck.load(name), torch.from_numpy(want))
    # flux / sd3: no reshape
    for fx in ("flux_dev", "sd3"):
        r = gguf.GGUFReader(files[fx]["bundle"]["diffusion_model"])
        assert not [k for k in r.fields if k.startswith("comfy.gguf.orig_shape.")]


def test_gguf_py_reads_every_file_and_dequantizes_like_us(quantized):
    files, _ = quantized
    seen_types = set()
    for fx in FAMILIES:
        for path in files[fx]["bundle"].values():
            reader = gguf.GGUFReader(path)
            for t in reader.tensors:
                shape = tuple(int(d) for d in reversed(t.shape.tolist()))
                theirs = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
                ours = ggml.dequantize(np.asarray(t.data).reshape(-1).view(np.uint8), t.tensor_type.name, shape)
                assert np.array_equal(theirs, ours), (path.name, t.name)
                assert np.isfinite(ours).all()
                seen_types.add(t.tensor_type.name)
    assert {"Q4_K", "Q6_K", "Q5_0", "Q8_0", "Q5_1", "F16", "F32"} <= seen_types


# --- policy --------------------------------------------------------------------------------------


def _decide(fx: str, comp: str, name: str, shape, request: str, rules=(), src="F16"):
    spec = factory.FIXTURES[fx].spec.component(comp)
    pol = Policy(rules=list(rules))
    return decide(name, tuple(shape), src, spec, parse_request(request), pol.compiled_rules(),
                  conv_reshape=fx in ("sdxl", "sd1"))


@pytest.mark.parametrize("name, shape, request_, want, reason", [
    # the mix as ComfyUI-GGUF's lcpp.patch makes it for arch flux: fused qkv Q4_K_M -> Q5_K, Q3_K_M -> Q4_K,
    # Q5_K_M -> Q6_K; single-block linear1 / linear2 and the double blocks' mlp.2 at the base type
    ("double_blocks.0.img_attn.qkv.weight", (9216, 3072), "q4_k_m", "Q5_K", "q4_k_m: fused qkv up-typed"),
    ("double_blocks.0.txt_attn.qkv.weight", (9216, 3072), "q5_k_m", "Q6_K", "q5_k_m: fused qkv up-typed"),
    ("double_blocks.0.img_attn.qkv.weight", (9216, 3072), "q3_k_m", "Q4_K", "q3_k_m: fused qkv up-typed"),
    ("double_blocks.0.img_attn.qkv.weight", (9216, 3072), "q4_k_s", "Q4_K", "requested"),
    ("double_blocks.0.img_attn.qkv.weight", (9216, 3072), "q2_k", "Q2_K", "requested"),
    ("single_blocks.3.linear1.weight", (21504, 3072), "q3_k_m", "Q3_K", "requested"),
    ("single_blocks.3.linear2.weight", (3072, 15360), "q4_k_m", "Q4_K", "requested"),
    ("double_blocks.0.img_mlp.2.weight", (3072, 12288), "q4_k_m", "Q4_K", "requested"),
    ("double_blocks.0.img_mlp.2.weight", (3072, 12288), "q3_k_m", "Q3_K", "requested"),
    ("double_blocks.0.img_mlp.0.weight", (12288, 3072), "q4_k_m", "Q4_K", "requested"),
    ("double_blocks.0.img_mlp.0.bias", (12288,), "q4_k_m", "F32", "1-D"),
    ("double_blocks.0.img_attn.norm.key_norm.scale", (128,), "q8_0", "F32", "1-D"),
    ("img_in.weight", (3072, 64), "q4_k_m", "F16", "high precision: img_in."),
    ("guidance_in.in_layer.weight", (3072, 256), "q8_0", "F16", "high precision: guidance_in."),
    ("final_layer.linear.weight", (64, 3072), "q8_0", "F16", "high precision: final_layer."),
    ("double_blocks.0.img_mod.lin.weight", (18432, 3072), "q2_k", "Q2_K", "requested"),
    ("double_blocks.0.img_mod.lin.weight", (18432, 320), "q4_k_m", "Q5_0", "fallback Q4_K->Q5_0: row of 320"),
    ("double_blocks.0.img_mod.lin.weight", (18432, 100), "q4_k_m", "F16", "fallback Q4_K->F16: row of 100"),
    ("double_blocks.0.img_mod.lin.weight", (32, 32), "q4_0", "F32", "1-D or <= 1024 elements"),
])
def test_flux_decisions(name, shape, request_, want, reason):
    d = _decide("flux_dev", "diffusion_model", name, shape, request_)
    assert d.type == want and reason in d.reason, d


def test_unet_t5_and_clip_decisions():
    d = _decide("sdxl", "diffusion_model", "input_blocks.4.1.transformer_blocks.0.attn1.to_v.weight", (640, 640), "q4_k_m")
    assert (d.type, d.stored_shape) == ("Q8_0", (640, 640))
    assert d.reason == "q4_k_m: attention v/qkv up-typed; fallback Q6_K->Q8_0: row of 640"
    d = _decide("sdxl", "diffusion_model", "output_blocks.2.1.conv.weight", (1280, 1280, 3, 3), "q4_k_s")
    assert (d.type, d.stored_shape, d.reshaped) == ("Q4_K", (57600, 256), True)
    d = _decide("sdxl", "diffusion_model", "time_embed.0.weight", (1280, 320), "q4_k_s")
    assert (d.type, d.reason) == ("F16", "high precision: time_embed.")
    d = _decide("sdxl", "diffusion_model", "label_emb.0.0.weight", (1280, 2816), "q8_0", src="BF16")
    assert d.type == "BF16"  # bf16 high-precision linear weights stay bf16
    d = _decide("sdxl", "diffusion_model", "out.2.weight", (4, 320, 3, 3), "q8_0", src="BF16")
    assert d.type == "F32"  # a bf16 conv kernel: F32 (lossless), loaders take BF16 only in linear layers
    d = _decide("sdxl", "diffusion_model", "out.2.weight", (4, 320, 3, 3), "q8_0", src="F32")
    assert d.type == "F16"
    # T5 in llama.cpp names: relative attention bias kept whatever its size, embeddings kept
    d = _decide("flux_dev", "t5xxl", "enc.blk.0.attn_rel_b.weight", (32, 64), "q8_0")
    assert d.type == "F16" and "attn_rel_b" in d.reason
    d = _decide("flux_dev", "t5xxl", "token_embd.weight", (32128, 4096), "q4_k_m")
    assert (d.type, d.reason) == ("F16", "embedding")
    d = _decide("flux_dev", "t5xxl", "enc.blk.3.attn_v.weight", (4096, 4096), "q5_k_m")
    assert d.type == "Q6_K"
    d = _decide("flux_dev", "t5xxl", "enc.blk.3.ffn_down.weight", (4096, 10240), "q5_k_s")
    assert d.type == "Q5_K"
    # OpenCLIP tower (sdxl clip_g) decided in the transformers names it is written in
    d = _decide("sdxl", "clip_g", "text_projection.weight", (1280, 1280), "q8_0")
    assert (d.type, d.reason) == ("F16", "high precision: text_projection.")
    d = _decide("sdxl", "clip_g", "text_model.encoder.layers.0.self_attn.v_proj.weight", (1280, 1280), "q4_k_m")
    assert (d.type, d.reason) == ("Q6_K", "q4_k_m: attention v/qkv up-typed")
    d = _decide("sana", "diffusion_model", "blocks.0.scale_shift_table", (6, 2240), "q8_0")
    assert (d.type, d.reason) == ("F16", "not a layer weight")


def test_user_rules_first_match_wins_and_never_force_unholdable():
    rules = [(r"img_attn\.qkv", "q8_0"), (r"double_blocks\.0\.", "f16"), (r"\.bias$", "q4_0"), (r"mlp\.0", "q4_k")]
    qkv = _decide("flux_dev", "diffusion_model", "double_blocks.0.img_attn.qkv.weight", (9216, 3072), "q4_k_m", rules)
    assert (qkv.type, qkv.reason) == ("Q8_0", r"rule img_attn\.qkv")
    mlp = _decide("flux_dev", "diffusion_model", "double_blocks.0.img_mlp.0.weight", (12288, 3072), "q4_k_m", rules)
    assert mlp.type == "F16"  # the earlier rule wins
    bias = _decide("flux_dev", "diffusion_model", "double_blocks.1.img_mlp.0.bias", (12288,), "q4_k_m", rules)
    assert bias.type == "F32"  # a rule never quantizes a 1-D tensor
    narrow = _decide("flux_dev", "diffusion_model", "double_blocks.1.img_mlp.0.weight", (512, 128), "q8_0", rules)
    assert narrow.type == "Q5_0" and "fallback Q4_K->Q5_0" in narrow.reason  # nor a row that does not fit
    hp = _decide("flux_dev", "diffusion_model", "img_in.weight", (3072, 64), "q8_0", [(r"img_in", "q4_0")])
    assert hp.type == "Q4_0"  # a rule may override a high-precision default
    with pytest.raises(CkptError, match="not a valid regex"):
        Policy(rules=[("(", "q8_0")]).compiled_rules()
    with pytest.raises(CkptError, match="unknown GGUF type"):
        Policy(rules=[("x", "q7_k")]).compiled_rules()


def test_toml_policy_equals_command_line(forms, tmp_path):
    src = forms["flux_dev"]["comfy"]
    toml = tmp_path / "policy.toml"
    toml.write_text('type = "q4_k_s"\n[components]\nclip_l = "q8_0"\nt5xxl = "q5_k_m"\n'
                    '[[rule]]\npattern = "single_blocks\\\\.1\\\\."\ntype = "q8_0"\n'
                    '[[rule]]\npattern = "linear2"\ntype = "f16"\n')
    a = run("quantize", src, "-o", tmp_path / "a", "--policy", toml, "--dry-run", "--json")
    b = run("quantize", src, "-o", tmp_path / "b", "--type", "q4_k_s", "--component", "clip_l=q8_0",
            "--component", "t5xxl=q5_k_m", "--rule", r"single_blocks\.1\.=q8_0", "--rule", "linear2=f16",
            "--dry-run", "--json")
    assert a.exit_code == b.exit_code == 0, a.output + b.output
    pa, pb = json.loads(a.stdout)["plan"], json.loads(b.stdout)["plan"]
    assert pa["outputs"] == pb["outputs"] and pa["info"] == pb["info"]
    dm = {t["name"]: t["dtype"] for t in pa["outputs"][0]["tensors"]}
    assert dm["single_blocks.1.linear2.weight"] == "Q8_0"  # first rule wins
    assert dm["single_blocks.0.linear2.weight"] == "F16"
    assert dm["single_blocks.0.linear1.weight"] == "Q5_0"  # q4_k_s: not up-typed; row 128 falls back
    assert not (tmp_path / "a").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text('typ = "q8_0"\n')
    res = run("quantize", src, "-o", tmp_path / "c", "--policy", bad)
    assert res.exit_code == 2 and "unknown keys ['typ']" in res.output


# --- VAE, zero-quantized, non-finite -------------------------------------------------------------


def test_vae_never_quantized_and_fp32_vae_kept_without_force(forms, tmp_path):
    res = run("quantize", forms["sdxl"]["comfy"], "-o", tmp_path / "a", "--type", "q8_0", "--component", "vae=q8_0")
    assert res.exit_code == 2 and "a VAE is never quantized below fp16" in res.output
    f32 = factory.write_bundle("sd3", tmp_path / "sd3_f32.safetensors", dtype=None)
    res = run("quantize", f32, "-o", tmp_path / "b", "--type", "q8_0", "--component", "vae=f16")
    assert res.exit_code == 2 and "--force-vae" in res.output and not (tmp_path / "b" / "vae.safetensors").exists()
    res = run("quantize", f32, "-o", tmp_path / "c", "--type", "q8_0", "--component", "vae=f16", "--force-vae")
    assert res.exit_code == 0, res.output
    vae = open_checkpoint(tmp_path / "c" / "vae.safetensors")
    assert {i.dtype for i in vae.tensors.values()} == {"F16"}
    manifest = json.loads((tmp_path / "c" / "ckptkit.json").read_text())
    assert manifest["components"]["vae"]["policy"]["requested"] == "f16"
    res = run("quantize", f32, "-o", tmp_path / "d", "--type", "q8_0", "--component", "vae=bf16")
    assert res.exit_code == 0, res.output  # bf16 keeps fp32's range: no force needed


def test_component_asked_but_nothing_quantized_is_an_error(forms, tmp_path):
    res = run("quantize", forms["flux_dev"]["comfy"], "-o", tmp_path / "a", "--type", "q8_0", "--rule", ".*=f16")
    assert res.exit_code == 2
    assert "diffusion_model: asked for q8_0 but no tensor can be quantized" in res.output
    assert not (tmp_path / "a").exists() or not list((tmp_path / "a").glob("*.gguf"))


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """An fp32 FLUX transformer with NaN in one weight, 1e9 in another and 1e6 in a third."""
    state = dict(factory.original_state("flux_dev", "diffusion_model"))
    state["double_blocks.0.img_attn.qkv.weight"] = state["double_blocks.0.img_attn.qkv.weight"].clone()
    state["double_blocks.0.img_attn.qkv.weight"][5, 7] = float("nan")
    state["double_blocks.0.txt_mlp.0.weight"] = state["double_blocks.0.txt_mlp.0.weight"].clone()
    state["double_blocks.0.txt_mlp.0.weight"][3, 0] = 1e9
    state["single_blocks.0.linear1.weight"] = state["single_blocks.0.linear1.weight"].clone()
    state["single_blocks.0.linear1.weight"][1, 1] = -1e6
    path = tmp_path_factory.mktemp("poison") / "flux_poisoned.safetensors"
    save_safetensors(path, state)
    return path, state


@pytest.mark.parametrize("qtype", ["q8_0", "q4_k_m"])
def test_non_finite_and_overflowing_tensors_fall_back_with_a_warning(poisoned, tmp_path, qtype):
    src, state = poisoned
    out = tmp_path / "q.gguf"
    res = run("quantize", src, "-o", out, "--type", qtype)
    assert res.exit_code == 0, res.output
    assert "double_blocks.0.img_attn.qkv.weight: non-finite values" in res.output
    assert "double_blocks.0.txt_mlp.0.weight: |x| up to 1e+09" in res.output
    report = type_report(out)
    assert report["double_blocks.0.img_attn.qkv.weight"][0] == "F32"
    assert report["double_blocks.0.txt_mlp.0.weight"][0] == "F32"
    # 1e6 fits every fp16 scale of Q8_0 (1e6 / 127) and of the fallback Q5_0 (1e6 / 16): stays quantized
    assert report["single_blocks.0.linear1.weight"][0] == {"q8_0": "Q8_0", "q4_k_m": "Q5_0"}[qtype]  # q4_k_m: Q4_K, its row falls back
    ck = open_checkpoint(out)
    assert torch.equal(ck.load("double_blocks.0.txt_mlp.0.weight"), state["double_blocks.0.txt_mlp.0.weight"])
    reader = gguf.GGUFReader(out)
    for t in reader.tensors:  # no non-finite scale anywhere: every quantized tensor dequantizes finite
        if t.tensor_type.name in ("F32", "F16", "BF16"):
            continue
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        assert np.isfinite(ggml.dequantize(np.asarray(t.data).reshape(-1).view(np.uint8), t.tensor_type.name, shape)).all()
        assert np.isfinite(gguf.quants.dequantize(t.data, t.tensor_type)).all(), t.name
    big = ck.load("single_blocks.0.linear1.weight")
    assert float(big[1, 1]) == pytest.approx(-1e6, rel=1e-2)


def test_an_fp16_overflow_met_while_writing_is_planned_again(tmp_path):
    """The scan is deferred: a run writes without it and, on meeting what it would have changed
    (here an fp32 weight asked to be F16 that overflows fp16), scans, plans again and writes again.
    The file and the warning are those of a scanned plan; --no-scan refuses instead."""
    state = dict(factory.original_state("flux_dev", "diffusion_model"))
    state["txt_in.weight"] = state["txt_in.weight"].clone().float()
    state["txt_in.weight"][0, 0] = 1e6
    src = tmp_path / "flux.safetensors"
    save_safetensors(src, state)
    res = run("quantize", src, "-o", tmp_path / "q.gguf", "--type", "q8_0", "--rule", r"txt_in\.weight=f16")
    assert res.exit_code == 0, res.output
    assert "txt_in.weight: |x| up to 1e+06 overflows fp16; stored as F32" in " ".join(res.output.split())
    report = type_report(tmp_path / "q.gguf")
    assert report["txt_in.weight"][0] == "F32"
    with open_checkpoint(tmp_path / "q.gguf") as ck:
        assert torch.equal(ck.load("txt_in.weight"), state["txt_in.weight"])
    res = run("quantize", src, "-o", tmp_path / "n.gguf", "--type", "q8_0", "--rule", r"txt_in\.weight=f16",
              "--no-scan")
    assert res.exit_code == 2 and "txt_in.weight: values beyond fp16's range cannot be stored as F16" in res.output
    assert not (tmp_path / "n.gguf").exists()


def test_no_scan_refuses_instead_of_writing_bad_scales(poisoned, tmp_path):
    src, _ = poisoned
    res = run("quantize", src, "-o", tmp_path / "q.gguf", "--type", "q8_0", "--no-scan")
    assert res.exit_code == 2
    assert re.search(r"(img_attn\.qkv\.weight: non-finite values cannot be quantized to Q8_0"
                     r"|txt_mlp\.0\.weight: values up to 1e\+09 overflow Q8_0's fp16 block scales)", res.output), res.output
    assert not (tmp_path / "q.gguf").exists() and not list(tmp_path.glob(".*partial"))


def test_names_over_127_bytes_refused(tmp_path):
    state = dict(factory.original_state("flux_dev", "diffusion_model"))
    long = "double_blocks.0." + "x" * 120 + ".weight"
    state[long] = torch.randn(64, 256)
    src = tmp_path / "flux_long.safetensors"
    save_safetensors(src, state)
    res = run("quantize", src, "-o", tmp_path / "q.gguf", "--type", "q8_0")
    assert res.exit_code == 2 and "is 143 bytes; ggml cannot load GGUF tensor names over 127 bytes" in res.output
    with pytest.raises(CkptError, match="over 127 bytes"):
        GGUFStreamWriter(tmp_path / "x.gguf", "flux", [(long, (64, 256), "F32", 64 * 256 * 4)])


# --- the command ---------------------------------------------------------------------------------


def test_dry_run_shows_the_full_type_plan(forms, tmp_path):
    out = tmp_path / "dry"
    res = run("quantize", forms["sd3"]["bundle"], "-o", out, "--type", "q4_k_m", "--component", "t5xxl=q8_0", "--dry-run")
    assert res.exit_code == 0, res.output
    assert not out.exists()
    lines = res.output.splitlines()
    dm = open_checkpoint(forms["sd3"]["comfy"] / "diffusion_model.safetensors")
    for name in dm.tensors:  # every tensor, with its type and why
        assert any(line.strip().startswith(name + " ") for line in lines), name
    assert any(re.match(r"\s+joint_blocks\.0\.x_block\.mlp\.fc2\.weight\s+64x256\s+Q6_K .*FFN down up-typed", line)
               for line in lines)
    assert any(re.match(r"\s+enc\.blk\.0\.attn_q\.weight\s+128x128\s+Q8_0 .*requested", line) for line in lines)
    assert "kept high precision (why)" in res.output and "fallbacks (row length)" in res.output
    js = run("quantize", forms["sd3"]["bundle"], "-o", out, "--type", "q4_k_m", "--dry-run", "--json")
    plan = json.loads(js.stdout)["plan"]
    assert plan["kind"] == "quantize" and not out.exists()
    dm_out = next(o for o in plan["outputs"] if o["component"] == "diffusion_model")
    assert dm_out["format"] == "gguf" and dm_out["path"] == "diffusion_model.gguf"
    assert all("dtype" in t and "note" in t for t in dm_out["tensors"])
    assert plan["info"]["components"]["diffusion_model"]["policy"]["requested"] == "q4_k_m"


def test_outputs_single_file_and_usage_errors(forms, tmp_path):
    comfy = forms["flux_dev"]["comfy"]
    # one text encoder file: --type applies to it
    res = run("quantize", comfy / "t5xxl.safetensors", "-o", tmp_path / "t5.gguf", "--type", "q8_0")
    assert res.exit_code == 0, res.output
    assert gguf.GGUFReader(tmp_path / "t5.gguf").get_field("general.architecture").contents() == "t5encoder"
    # a plain type into a .gguf file gives an F16 GGUF
    res = run("quantize", comfy / "diffusion_model.safetensors", "-o", tmp_path / "f16.gguf", "--type", "f16")
    assert res.exit_code == 0, res.output
    assert {t for t, _ in type_report(tmp_path / "f16.gguf").values()} == {"F16", "F32"}
    cases = [
        (("--type", "q8_0", "-o", tmp_path / "x.safetensors"), comfy / "diffusion_model.safetensors",
         "q8_0 is a GGUF type; name the output .gguf"),
        (("--type", "q8_0", "-o", tmp_path / "x.gguf"), forms["flux_dev"]["bundle"],
         "the source holds 4 components"),
        (("--type", "q8_0", "--component", "clip_g=q8_0", "-o", tmp_path / "d"), comfy,
         "--component clip_g: not in this source"),
        (("-o", tmp_path / "e"), comfy, "nothing to quantize"),
        (("--type", "q9_k", "-o", tmp_path / "f"), comfy, "unknown GGUF type 'q9_k'"),
        (("--type", "q8_0", "-o", tmp_path / "g.gguf"), comfy / "t5xxl.safetensors", None),
        (("--type", "q8_0", "-o", tmp_path / "g.gguf"), comfy / "t5xxl.safetensors", "exists (use --force"),
    ]
    for args, src, msg in cases:
        res = run("quantize", src, *args)
        if msg is None:
            assert res.exit_code == 0, res.output
            continue
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output, (args, res.output)
    only_te = tmp_path / "te_only"
    only_te.mkdir()
    for name, file in (("clip_l", "clip_l"), ("t5xxl", "t5xxl_fp16"), ("diffusion_model", "flux1-dev")):
        (only_te / f"{file}.safetensors").write_bytes((comfy / f"{name}.safetensors").read_bytes())
    res = run("quantize", only_te, "-o", tmp_path / "h", "--component", "t5xxl=q8_0")
    assert res.exit_code == 0, res.output  # a set without ckptkit.json: files named by their makers
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == [
        "ckptkit.json", "clip_l.safetensors", "diffusion_model.safetensors", "t5xxl.gguf"]


def test_policy_file_loader_merges_under_command_line(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text('type = "q4_k_m"\nforce_vae = true\n[components]\nclip_l = "q8_0"\nt5xxl = "q4_0"\n')
    pol = load_policy_file(toml, Policy(components={"t5xxl": "q5_k_m"}))
    assert pol.diffusion_model == "q4_k_m" and pol.force_vae
    assert pol.components == {"clip_l": "q8_0", "t5xxl": "q5_k_m"}  # the command line wins


# --- real clients: diffusers from_single_file ----------------------------------------------------


def _diffusers_load(cls_name: str, path: Path, config_dir: Path, subfolder: str):
    import diffusers
    from diffusers import GGUFQuantizationConfig

    cls = getattr(diffusers, cls_name)
    return cls.from_single_file(str(path), config=str(config_dir), subfolder=subfolder, local_files_only=True,
                                quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32)).eval()


def _compare_with_ours(model, path: Path, family: str, inputs: dict, exact: bool):
    """diffusers' model (its own dequantization) against one built from our dequantized weights."""
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    from ckptkit.convert.components import load_component

    ck = open_checkpoint(path)
    from ckptkit.families.detect import detect

    ours = load_component(ck, get_family(family).diffusion_model, names=detect(ck).names)
    theirs_state = dict(model.named_parameters())
    ours_state = ours.state_dict()
    seen = set()
    for name, p in theirs_state.items():
        w = dequantize_gguf_tensor(p).float() if hasattr(p, "quant_type") else p.detach().float()
        o = ours_state[name].float()
        qt = getattr(p, "quant_type", None)
        seen.add(qt.name if qt is not None else str(p.dtype))
        if qt is None or qt.name in ("BF16",) or exact:
            assert torch.equal(w, o), name
        elif qt.name in ("Q8_0", "Q4_0", "Q5_0"):
            # diffusers multiplies d (fp16) by q in fp16: ours (exact in fp32) rounded to fp16
            assert torch.equal(w, o.half().float()), name
        else:  # K-quants / _1 types: fp16 intermediates in diffusers' dequant
            assert float((w - o).norm() / o.norm()) < 2e-3, name
    with torch.no_grad():
        a, b = model(**inputs).sample, ours(**inputs).sample
    if exact:
        assert torch.equal(a, b)
    else:
        assert float((a - b).norm() / b.norm()) < 1e-3
    return seen


SD3_INPUTS = dict(hidden_states=torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0)),
                  encoder_hidden_states=torch.randn(1, 7, 128, generator=torch.Generator().manual_seed(1)),
                  pooled_projections=torch.randn(1, 128, generator=torch.Generator().manual_seed(2)),
                  timestep=torch.tensor([500.0]))
# one file holding every block type diffusers dequantizes (rules on a wide SD3: rows of 256)
MIXED_RULES = {
    r"joint_blocks\.0\.x_block\.attn\.qkv": "q2_k", r"joint_blocks\.0\.x_block\.attn\.proj": "q3_k_s",
    r"joint_blocks\.0\.x_block\.mlp\.fc1": "q4_k_s", r"joint_blocks\.0\.x_block\.mlp\.fc2": "q5_k_s",
    r"joint_blocks\.0\.x_block\.adaLN": "q6_k", r"joint_blocks\.0\.context_block\.attn\.qkv": "q4_0",
    r"joint_blocks\.0\.context_block\.attn\.proj": "q4_1", r"joint_blocks\.0\.context_block\.mlp\.fc1": "q5_0",
    r"joint_blocks\.0\.context_block\.mlp\.fc2": "q5_1", r"joint_blocks\.0\.context_block\.adaLN": "q8_0",
    r"joint_blocks\.1\.x_block\.attn\.qkv": "bf16", r"joint_blocks\.1\.x_block\.mlp": "f16",
}


@pytest.fixture(scope="module")
def wide_sd3(tmp_path_factory):
    """SD3 with 4 heads of 64 (rows of 256, so every K-quant fits), in diffusers and GGUF forms."""
    root = tmp_path_factory.mktemp("wide")
    factory.FIXTURES["sd3_wide"] = factory.Fixture("sd3_wide", "sd3", "sd3-medium",
                                                   {"diffusion_model": {"num_attention_heads": 4,
                                                                        "caption_projection_dim": 256}})
    try:
        dm = root / "dm.safetensors"
        save_safetensors(dm, {k: v.half() for k, v in factory.original_state("sd3_wide", "diffusion_model").items()},
                         factory.shipped_configs("sd3_wide", ["diffusion_model"]))
        folder = root / "diffusers" / "transformer"
        folder.mkdir(parents=True)
        model = factory.component_model("sd3_wide", "diffusion_model")
        (folder / "config.json").write_text(json.dumps({"_class_name": "SD3Transformer2DModel", **dict(model.config)},
                                                       default=list))
    finally:
        del factory.FIXTURES["sd3_wide"]
    return dm, root / "diffusers"


def test_diffusers_loads_every_block_type_sd3(wide_sd3, tmp_path):
    dm, config_dir = wide_sd3
    mixed = tmp_path / "mixed.gguf"
    args = ["quantize", dm, "-o", mixed, "--type", "q4_k_m"]
    for pattern, t in MIXED_RULES.items():
        args += ["--rule", f"{pattern}={t}"]
    res = run(*args)
    assert res.exit_code == 0, res.output
    types = {t for t, _ in type_report(mixed).values()}
    assert {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "BF16", "F16", "F32"} <= types
    seen = _compare_with_ours(_diffusers_load("SD3Transformer2DModel", mixed, config_dir, "transformer"), mixed,
                              "sd3", SD3_INPUTS, exact=False)
    assert {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "BF16"} <= seen
    for t in ("f16", "bf16"):  # plain GGUFs: diffusers' weights and outputs equal ours exactly
        path = tmp_path / f"{t}.gguf"
        assert run("quantize", dm, "-o", path, "--type", t).exit_code == 0
        _compare_with_ours(_diffusers_load("SD3Transformer2DModel", path, config_dir, "transformer"), path, "sd3",
                           SD3_INPUTS, exact=True)


def test_diffusers_loads_sd3_and_sana_requests(quantized, forms, tmp_path):
    files, _ = quantized
    path = files["sd3"]["bundle"]["diffusion_model"]  # q4_k_m of the tiny SD3
    _compare_with_ours(_diffusers_load("SD3Transformer2DModel", path, forms["sd3"]["diffusers"], "transformer"),
                       path, "sd3", SD3_INPUTS, exact=False)
    sana = factory.write_gguf("sana", tmp_path / "sana_f16.gguf")
    factory.write_diffusers("sana", tmp_path / "sana_diffusers")
    q = tmp_path / "sana_q8.gguf"
    res = run("quantize", sana, "-o", q, "--type", "q8_0")  # ComfyUI-GGUF loads no Sana: written for diffusers
    assert res.exit_code == 0, res.output
    assert "written for diffusers instead" in res.output
    report = type_report(q)  # in SanaTransformer2DModel's own names
    assert report["transformer_blocks.0.scale_shift_table"][0] == "F16"  # raw parameter: diffusers would use its bytes
    assert report["transformer_blocks.0.attn1.to_q.weight"][0] == report["transformer_blocks.0.attn2.to_q.weight"][0] == "Q8_0"
    inputs = dict(hidden_states=torch.randn(1, 32, 8, 8, generator=torch.Generator().manual_seed(0)),
                  encoder_hidden_states=torch.randn(1, 7, 24, generator=torch.Generator().manual_seed(1)),
                  timestep=torch.tensor([500.0]))
    _compare_with_ours(_diffusers_load("SanaTransformer2DModel", q, tmp_path / "sana_diffusers", "transformer"),
                       q, "sana", inputs, exact=False)


def test_diffusers_flux(quantized, forms):
    files, _ = quantized
    try:
        _diffusers_load("FluxTransformer2DModel", files["flux_dev"]["bundle"]["diffusion_model"],
                        forms["flux_dev"]["diffusers"], "transformer")
    except RuntimeError as exc:
        if "split_with_sizes" in str(exc) and "3072" in str(exc):
            pytest.xfail("diffusers' convert_flux_transformer_checkpoint_to_diffusers hard-codes inner_dim = 3072 "
                         "for the single-block linear1 split, so it cannot convert a tiny FLUX (domain notes, sec. 7); "
                         "--client diffusers writes the class's own names, which it loads: tests/quant/test_clients.py")
        raise
    pytest.fail("diffusers now converts a tiny FLUX: replace this xfail by a forward comparison")


def test_diffusers_unet(quantized, forms):
    files, _ = quantized
    try:
        _diffusers_load("UNet2DConditionModel", files["sdxl"]["bundle"]["diffusion_model"],
                        forms["sdxl"]["diffusers"], "unet")
    except KeyError as exc:
        pytest.xfail(f"diffusers' convert_ldm_unet_checkpoint reads only keys under 'model.diffusion_model.' "
                     f"(LDM_UNET_KEY), while ComfyUI-GGUF files hold prefix-stripped names (KeyError {exc}); it "
                     "also ignores comfy.gguf.orig_shape, so reshaped conv weights would not fit either: a ComfyUI-GGUF "
                     "file is not for diffusers (--client diffusers writes one that is: tests/quant/test_clients.py)")
    pytest.fail("diffusers now loads a prefix-stripped UNet GGUF: replace this xfail by a forward comparison")
