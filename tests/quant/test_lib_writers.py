"""`quantize --to bnb` and `--to quanto`: files in the state-dict layout bitsandbytes and
optimum-quanto load, checked with the libraries' own loaders on the CPU: the same values as the
library quantizing the same weights itself, and forward outputs close to the unquantized model.
Also read back by formats/scaled.py and passed by `verify`."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from ckptkit import pipeline
from ckptkit.fixtures.configs import TINY
from ckptkit.fixtures.factory import diffusers_state, shipped_configs, write_bundle
from ckptkit.formats import open_checkpoint
from ckptkit.formats.safetensors import save_safetensors
from ckptkit.formats.scaled import dequantizing
from ckptkit.quant.policy import Policy


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A CLIP-L text encoder file in transformers names (bf16), and its state."""
    folder = tmp_path_factory.mktemp("libq")
    state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
             for k, v in diffusers_state("sd1", "clip_l").items()}
    path = folder / "clip_l.safetensors"
    save_safetensors(path, state, shipped_configs("sd1", ["clip_l"]))
    return path, state


def _quantize(clip, tmp_path, backend, type_name):
    path, _ = clip
    out = tmp_path / f"{backend}-{type_name}.safetensors"
    pipeline.quantize(path, out, Policy(diffusion_model=type_name, backend=backend))
    ck = open_checkpoint(out)
    return ck, {n: ck.load(n).clone() for n in ck.tensors}


def _layers(state, suffix):
    return sorted(n[: -len(suffix)] for n in state if n.endswith(suffix))


@pytest.mark.parametrize("type_name", ["nf4", "fp4", "nf4_dq", "fp4_dq"])
def test_bitsandbytes_4bit_loads_in_bitsandbytes(clip, tmp_path, type_name):
    import bitsandbytes.functional as F

    _, source = clip
    ck, out = _quantize(clip, tmp_path, "bnb", type_name)
    base = type_name[:3]
    layers = _layers(out, f".weight.quant_state.bitsandbytes__{base}")
    assert layers
    view = dequantizing(ck)
    for layer in layers:
        prefix = f"{layer}.weight."
        stats = {n[len(prefix):]: t for n, t in out.items() if n.startswith(prefix)}
        state = F.QuantState.from_dict(stats, device=torch.device("cpu"))  # what Params4bit.from_prequantized does
        ours = F.dequantize_4bit(out[f"{layer}.weight"], state)
        theirs = F.dequantize_4bit(*F.quantize_4bit(source[f"{layer}.weight"], blocksize=64, quant_type=base,
                                                    compress_statistics=type_name.endswith("_dq")))
        assert ours.dtype == torch.bfloat16 and torch.equal(ours, theirs), layer
        assert torch.equal(view.load(f"{layer}.weight"), theirs), layer
    ck.close()


def test_bitsandbytes_int8_as_int8params_quantizes(clip, tmp_path):
    import bitsandbytes.functional as F

    _, source = clip
    ck, out = _quantize(clip, tmp_path, "bnb", "int8")
    layers = _layers(out, ".SCB")
    assert layers
    for layer in layers:
        cb, scb, _ = F.int8_vectorwise_quant(source[f"{layer}.weight"].to(torch.float16))
        assert torch.equal(out[f"{layer}.weight"], cb) and torch.equal(out[f"{layer}.SCB"], scb), layer
        assert int(out[f"{layer}.weight_format"]) == 0
    ck.close()


@pytest.mark.parametrize("type_name", ["qint8", "qfloat8", "qint4"])
def test_quanto_loads_with_requantize(clip, tmp_path, type_name):
    import optimum.quanto as quanto
    from transformers import CLIPTextConfig, CLIPTextModel

    _, source = clip
    ck, out = _quantize(clip, tmp_path, "quanto", type_name)
    ck.close()
    qtype = {"qint8": quanto.qint8, "qfloat8": quanto.qfloat8_e4m3fn, "qint4": quanto.qint4}[type_name]

    def names(state):  # this transformers' CLIPTextModel holds its text_model's tensors at the top
        keys = set(CLIPTextModel(CLIPTextConfig(**TINY["sd1"]["clip_l"])).state_dict())
        return {n if n in keys else n.removeprefix("text_model."): t for n, t in state.items()}

    def fresh():
        model = CLIPTextModel(CLIPTextConfig(**TINY["sd1"]["clip_l"])).to(torch.bfloat16).eval()
        missing, unexpected = model.load_state_dict(names(source), strict=False)
        assert not unexpected and all(m.endswith("position_ids") for m in missing)
        return model

    reference = fresh()
    theirs = fresh()
    quanto.quantize(theirs, weights=qtype)
    quanto.freeze(theirs)
    ours_state = names(out)
    qmap = {n.split(".weight._data")[0]: {"weights": str(qtype.name), "activations": "none"}
            for n in ours_state if ".weight._data" in n}
    ours = fresh()
    quanto.requantize(ours, state_dict=ours_state, quantization_map=qmap, device=torch.device("cpu"))
    # requantize loads with strict=False: the key sets must agree by themselves
    assert {n for n in theirs.state_dict() if not n.endswith("position_ids")} == set(ours_state)
    ids = torch.arange(1, 17)[None]
    with torch.no_grad():
        a = ours(ids).last_hidden_state.float()
        b = theirs(ids).last_hidden_state.float()
        r = reference(ids).last_hidden_state.float()
    assert torch.equal(a, b)  # the same file quanto would have written itself
    cos = torch.nn.functional.cosine_similarity(a.reshape(-1), r.reshape(-1), dim=0)
    assert cos > {"qint8": 0.999, "qfloat8": 0.995, "qint4": 0.97}[type_name], float(cos)
    with open_checkpoint(tmp_path / f"quanto-{type_name}.safetensors") as ck:  # read back: quanto's own values
        view = dequantizing(ck)
        for name in qmap:
            assert torch.equal(view.load(f"text_model.{name}.weight" if not name.startswith("text_model.") else
                                         f"{name}.weight"), dict(theirs.named_modules())[name].weight.dequantize())


@pytest.mark.parametrize("backend, type_name", [("bnb", "nf4"), ("bnb", "int8"), ("quanto", "qint8"),
                                                ("quanto", "qint4")])
def test_verify_passes_library_sets(tmp_path, backend, type_name):
    from ckptkit.fixtures.factory import write_bundle
    from ckptkit.verify import VerifyOptions, run_verify

    bundle = write_bundle("sd1", tmp_path / "sd1.safetensors", dtype=torch.bfloat16)
    pipeline.quantize(bundle, tmp_path / "set", Policy(diffusion_model=type_name, backend=backend))
    report = run_verify(tmp_path / "set", VerifyOptions(against=str(bundle), device="cpu"))
    assert report.passed, [(r.check, r.component, r.metric, r.detail) for r in report.results if r.passed is False]
    assert report.exit_code == 0


def test_quanto_diffusers_folder_loads_with_from_pretrained(tmp_path):
    """`--layout diffusers`: diffusers' own from_pretrained builds the quantized UNet from our
    folder, and its forward equals diffusers quantizing the same weights itself (QuantoConfig)."""
    import warnings

    from diffusers import QuantoConfig, UNet2DConditionModel

    from ckptkit.convert.split import SplitOptions
    from ckptkit.fixtures.factory import write_bundle

    # bfloat16: quanto's int8 x bfloat16 CPU kernel crashes (segfault, torch 2.13) on int8 data a
    # mapping of the file leaves unaligned, and from_pretrained maps the file as it is: our quanto files
    # lay their quantized data out 64-byte aligned (quant/layerwise.py)
    bundle = write_bundle("sd1", tmp_path / "sd1.safetensors", dtype=torch.bfloat16)
    pipeline.quantize(bundle, tmp_path / "q", Policy(diffusion_model="qint8", backend="quanto", layout="diffusers"))
    pipeline.split(bundle, tmp_path / "plain", SplitOptions(layout="diffusers"))
    config = json.loads((tmp_path / "q" / "unet" / "config.json").read_text())["quantization_config"]
    raw = (tmp_path / "q" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = [v["data_offsets"][0] for k, v in header.items() if k.endswith(".weight._data")]
    assert data and all((8 + n + off) % 64 == 0 for off in data)  # aligned in any mapping of the file
    assert config["quant_method"] == "quanto" and config["weights_dtype"] == "int8"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers deprecates QuantoConfig (still its loader in 0.42)
        ours = UNet2DConditionModel.from_pretrained(tmp_path / "q" / "unet", torch_dtype=torch.bfloat16).eval()
        theirs = UNet2DConditionModel.from_pretrained(
            tmp_path / "plain" / "unet", torch_dtype=torch.bfloat16,
            quantization_config=QuantoConfig(weights_dtype="int8", modules_to_not_convert=config["modules_to_not_convert"])
        ).eval()
    qlinears = [n for n, m in ours.named_modules() if type(m).__name__ == "QLinear"]
    assert qlinears and qlinears == [n for n, m in theirs.named_modules() if type(m).__name__ == "QLinear"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g).to(torch.bfloat16)
    ctx = torch.randn(1, 7, ours.config.cross_attention_dim, generator=g).to(torch.bfloat16)
    with torch.no_grad():
        a = ours(x, 999, encoder_hidden_states=ctx).sample
        b = theirs(x, 999, encoder_hidden_states=ctx).sample
    assert torch.equal(a, b)


def test_quanto_text_encoder_in_diffusers_layout_is_refused(tmp_path):
    from ckptkit.errors import CkptError
    from ckptkit.fixtures.factory import write_bundle

    bundle = write_bundle("sd1", tmp_path / "sd1.safetensors", dtype=torch.bfloat16)
    with pytest.raises(CkptError, match="does not load pre-quantized optimum-quanto"):
        pipeline.quantize(bundle, tmp_path / "q", Policy(diffusion_model="qint8", components={"clip_l": "qint8"},
                                                         backend="quanto", layout="diffusers"))
    assert not (tmp_path / "q").exists()


def test_bitsandbytes_diffusers_folder_needs_a_gpu_in_diffusers_but_verifies_here(tmp_path):
    """Trap: diffusers refuses bitsandbytes without a GPU. Our own reader (verify's) dequantizes the
    same folder on the CPU."""
    from diffusers import UNet2DConditionModel

    from ckptkit.fixtures.factory import write_bundle
    from ckptkit.verify import VerifyOptions, run_verify

    bundle = write_bundle("sd1", tmp_path / "sd1.safetensors", dtype=torch.bfloat16)
    pipeline.quantize(bundle, tmp_path / "q", Policy(diffusion_model="nf4", backend="bnb", layout="diffusers"))
    config = json.loads((tmp_path / "q" / "unet" / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "bitsandbytes" and config["load_in_4bit"] and config["bnb_4bit_quant_type"] == "nf4"
    if not torch.cuda.is_available():
        with pytest.raises(Exception, match="GPU"):
            UNet2DConditionModel.from_pretrained(tmp_path / "q" / "unet")
    report = run_verify(tmp_path / "q", VerifyOptions(against=str(bundle), device="cpu"))
    assert report.passed, [(r.check, r.component, r.metric, r.detail) for r in report.results if r.passed is False]


def test_only_linear_weights_are_quantized(tmp_path):
    """A 2-D weight is not always a Linear's: T5's relative_attention_bias and token embeddings are
    nn.Embedding, which quanto leaves alone; so do we (the key set then matches quanto's own)."""
    import optimum.quanto as quanto
    from transformers import T5Config, T5EncoderModel

    from ckptkit.fixtures.factory import write_bundle

    bundle = write_bundle("sd3", tmp_path / "sd3.safetensors", dtype=torch.bfloat16)
    pipeline.quantize(bundle, tmp_path / "q", Policy(components={"t5xxl": "qint8"}, backend="quanto"))
    with open_checkpoint(tmp_path / "q" / "t5xxl.safetensors") as ck:
        names = set(ck.tensors)
    assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in names
    model = T5EncoderModel(T5Config(**TINY["sd3"]["t5xxl"])).to(torch.bfloat16)
    keep = [n for n, _ in model.named_modules() if n.split(".")[-1] in model._keep_in_fp32_modules]  # T5's `wo`
    assert keep
    quanto.quantize(model, weights=quanto.qint8, exclude=keep)  # as transformers' quanto quantizer skips them
    quanto.freeze(model)
    theirs = {n for n in model.state_dict() if "_data" in n}
    assert {n for n in names if "_data" in n} == theirs
    pipeline.quantize(bundle, tmp_path / "b", Policy(components={"t5xxl": "int8"}, backend="bnb"))
    with open_checkpoint(tmp_path / "b" / "t5xxl.safetensors") as ck:
        assert not any(n.endswith(".wo.SCB") for n in ck.tensors) and any(n.endswith(".SCB") for n in ck.tensors)


@pytest.mark.parametrize("backend, type_name, function", [("bnb", "nf4_dq", "bnb_layer"),
                                                          ("quanto", "qint4", "quanto_layer"),
                                                          ("comfy", "fp8_e4m3", "comfy_layer")])
def test_each_layer_is_quantized_once(clip, tmp_path, monkeypatch, backend, type_name, function):
    """A layer's 2-6 tensors come from one quantization (expr.part, engine/produce.py), with or
    without worker threads."""
    from ckptkit.engine import expr
    from ckptkit.quant.layerwise import get_backend

    get_backend(backend)  # registers its function
    calls = []
    make, shape = expr.FUNCTIONS[function]
    monkeypatch.setitem(expr.FUNCTIONS, function, (lambda w, *a: calls.append(1) or make(w, *a), shape))
    for workers in (1, 2):
        calls.clear()
        out = tmp_path / f"{workers}.safetensors"
        result = pipeline.quantize(clip[0], out, Policy(diffusion_model=type_name, backend=backend), workers=workers)
        quantized = result.plan.info["components"]["clip_l"]["policy"]["quantized_tensors"]
        assert quantized > 0 and len(calls) == quantized, workers


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("type_name", ["qint8", "qfloat8"])
def test_quanto_8bit_steps_give_quantos_bytes(dtype, type_name):
    """8-bit weights are quantized by quanto's steps written out in quant/quanto.py (importing
    quanto costs seconds): the bytes of a frozen QLinear's state dict, zero rows, outliers and a
    single-row weight (quanto scales it per tensor) included; qint8 by the C kernel where no row is
    zero, by the torch steps where one is."""
    import optimum.quanto as quanto

    from ckptkit.quant.quanto import _quantize

    qtype = {"qint8": quanto.qint8, "qfloat8": quanto.qfloat8_e4m3fn}[type_name]
    g = torch.Generator().manual_seed(0)
    for shape in [(64, 96), (3, 5), (257, 128), (1, 16), (31, 70), (130, 96)]:
        w = (torch.randn(shape, generator=g) * 0.05).to(dtype)
        if shape in [(64, 96), (3, 5), (257, 128)]:
            w[1] = 0
            w[2, 3] = 7.0
        linear = torch.nn.Linear(shape[1], shape[0], bias=False, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(w)
        holder = torch.nn.Sequential(linear)
        quanto.quantize(holder, weights=qtype)
        quanto.freeze(holder)
        theirs = {k.removeprefix("0."): v for k, v in holder.state_dict().items() if "._" in k}
        ours = _quantize(w, type_name)
        assert set(ours) == set(theirs)
        for key, t in ours.items():
            assert t.dtype == theirs[key].dtype and t.shape == theirs[key].shape, (shape, key)
            assert torch.equal(t.reshape(-1).view(torch.uint8), theirs[key].reshape(-1).view(torch.uint8)), (shape, key)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_qint8_kernel_gives_the_steps_bytes(dtype):
    """The one-pass qint8 kernel (quant/_libkernels.c) against quanto's torch steps it replaces
    (quant/quanto.py _steps_8bit, checked against quanto above): every finite magnitude of a 16-bit
    dtype under row maxima from subnormal to the largest, random rows, a single row; a row that is
    zero or not finite is left to the steps."""
    from ckptkit.quant import _libkernels
    from ckptkit.quant.quanto import KERNEL_DTYPES, _quantize_8bit, _steps_8bit

    g = torch.Generator().manual_seed(0)
    cases = [(torch.randn(shape, generator=g) * 0.02).to(dtype) for shape in [(3, 5), (1, 1), (1, 4096), (257, 129)]]
    if dtype != torch.float32:
        finite = 0x7C00 if dtype == torch.float16 else 0x7F80
        every = torch.arange(0, finite, dtype=torch.int32).to(torch.int16).view(dtype)
        for top in [1.0, 0.01, 3e-5, 6e-8, 0.3333, 1e-30, 60000.0, 1e30]:
            t = torch.tensor(top).to(dtype)
            if torch.isfinite(t) and t != 0:
                m = torch.stack([every, -every.flip(0)]).clamp(-t.item(), t.item())
                m[:, -1] = t
                cases.append(m)
    else:
        cases.append(torch.randn((64, 4096), generator=g) * torch.logspace(-40, 38, 64).unsqueeze(1))
    for w in cases:
        ours, theirs = _quantize_8bit(w, "qint8"), _steps_8bit(w, "qint8")
        for key in theirs:
            assert ours[key].shape == theirs[key].shape and torch.equal(ours[key], theirs[key]), (w.shape, key)
    raw = {torch.float32: torch.int32}.get(dtype, torch.int16)
    for bad in [0.0, float("inf"), float("nan")]:
        w = (torch.randn((4, 8), generator=g) * 0.02).to(dtype)
        w[2] = 0.0
        w[2, 3] = bad
        data, scale = torch.empty((4, 8), dtype=torch.int8), torch.empty((4, 1), dtype=dtype)
        assert _libkernels.quantize_qint8(w.view(raw).numpy(), KERNEL_DTYPES[dtype], 4, 8, data.numpy(),
                                          scale.view(raw).numpy()) is False


def _cli_without(library: str, *args, env=None):
    """`ckptkit ARGS` in a subprocess where `library` cannot be imported."""
    import subprocess
    import sys

    code = (f"import sys; sys.modules[{library!r}] = None; from ckptkit.cli import main; "
            "sys.argv = ['ckptkit'] + sys.argv[1:]; main()")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.parametrize("backend, type_name, library", [("quanto", "qint4", "optimum.quanto"),
                                                         ("bnb", "nf4", "bitsandbytes")])
def test_files_verify_without_their_library_or_a_compiler(tmp_path, backend, type_name, library):
    """Trap: quanto compiles a C++ extension (g++ and ninja) on the first int4 forward. verify never
    runs quanto or bitsandbytes: it dequantizes their files itself (formats/scaled.py). Here it
    passes such a set with the library unimportable and nothing on PATH (no compiler to find)."""
    import os

    from ckptkit.fixtures.factory import write_bundle

    bundle = write_bundle("sd1", tmp_path / "sd1.safetensors", dtype=torch.bfloat16)
    pipeline.quantize(bundle, tmp_path / "set", Policy(diffusion_model=type_name, backend=backend))
    res = _cli_without(library, "verify", tmp_path / "set", "--against", bundle, "--device", "cpu", "--json",
                       env={**os.environ, "PATH": str(tmp_path / "empty")})
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout)
    assert report["passed"] and any(r["check"] == "onestep" for r in report["results"])


@pytest.mark.parametrize("backend, type_name, library", [("quanto", "qint4", "optimum.quanto"),
                                                         ("bnb", "nf4", "bitsandbytes")])
def test_writing_without_the_library_is_one_line(clip, tmp_path, backend, type_name, library):
    res = _cli_without(library, "quantize", clip[0], "-o", tmp_path / "o.safetensors", "--to", backend,
                       "--type", type_name)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [f"ckptkit: error: --to {backend} quantizes with {library}, which is not "
                                               "installed: pip install 'ckptkit[quant]'"]
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("backend, type_name, scheme, aux", [("quanto", "qint8", "optimum-quanto", 3),
                                                            ("quanto", "qint4", "optimum-quanto", 4),
                                                            ("bnb", "nf4", "bitsandbytes", 3),
                                                            ("bnb", "int8", "bitsandbytes", 2),
                                                            ("comfy", "fp8_e4m3", "comfy-mixed", 1)])
def test_inspect_sees_the_model_under_its_quantization(clip, tmp_path, backend, type_name, scheme, aux):
    """quanto renames the weights it quantizes (weight._data) and bitsandbytes packs them: inspect
    finds the family, parameters and config in the file as values, and counts the stored tensors."""
    from ckptkit.inspect import inspect_checkpoint

    plain = inspect_checkpoint(clip[0])
    ck, out = _quantize(clip, tmp_path, backend, type_name)
    ck.close()
    report = inspect_checkpoint(tmp_path / f"{backend}-{type_name}.safetensors")
    assert report.standalone == plain.standalone and report.standalone is not None
    (comp,), (ref,) = report.components, plain.components
    assert (comp.name, comp.params, comp.tensors) == (ref.name, ref.params, len(out))
    assert comp.bytes == sum(t.numel() * t.element_size() for t in out.values())
    q = comp.quantization
    assert q["scheme"] == scheme and q["quantized"] > 0 and q["scales"] == aux * q["quantized"]
    assert {v["source"] for v in comp.config.values()} == {v["source"] for v in ref.config.values()}
    assert [p.kind for p in report.problems] == [p.kind for p in plain.problems]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("nested", [False, True])
def test_4bit_kernel_gives_bitsandbytes_bytes(dtype, quant_type, nested):
    """ckptkit's one-pass 4-bit kernel (quant/_libkernels.c) against bitsandbytes' own quantize_4bit:
    packed data and the whole serialized quant state equal, for full and partial blocks, odd
    counts, all-zero blocks and outliers; values that are not finite go to bitsandbytes itself."""
    import bitsandbytes.functional as F

    from ckptkit.quant import _libkernels  # noqa: F401 (built by pip install: the fallback is not what is tested)
    from ckptkit.quant.bnb import _code, _quantize_4bit

    assert torch.equal(_code(quant_type), F.get_4bit_type(quant_type, device="cpu"))

    g = torch.Generator().manual_seed(0)
    for shape in [(64, 96), (3, 5), (257, 129), (1, 1), (7, 64), (33, 31)]:
        w = (torch.randn(shape, generator=g) * 0.05).to(dtype)
        if w.numel() > 200:
            w.view(-1)[:64] = 0
            w.view(-1)[70] = 3.0
        if shape == (33, 31) and nested:
            w[0, 0] = float("inf")
        ours, d1 = _quantize_4bit(w.contiguous(), quant_type, nested)
        theirs, s2 = F.quantize_4bit(w.contiguous(), blocksize=64, quant_type=quant_type, compress_statistics=nested)
        assert torch.equal(ours, theirs), shape
        d2 = s2.as_dict(packed=True)
        assert d1.keys() == d2.keys()
        for key, value in d1.items():
            assert torch.equal(value, d2[key]) if isinstance(value, torch.Tensor) else value == d2[key], (shape, key)


def test_int8_kernel_gives_bitsandbytes_bytes():
    """ckptkit's one-pass int8 kernel (quant/_libkernels.c) against bitsandbytes' own int8_vectorwise_quant:
    int8 data and row statistics equal for every finite fp16 magnitude under row maxima from the
    smallest subnormal to 65504, odd shapes and single rows; an all-zero row or a value that is not
    finite hands the matrix to bitsandbytes (the kernel reports it)."""
    import bitsandbytes.functional as F

    from ckptkit.quant import _libkernels
    from ckptkit.quant.bnb import _quantize_int8

    every = torch.arange(0, 0x7C00, dtype=torch.int32).to(torch.int16).view(torch.float16)
    cases = []
    for top in [1.0, 0.01, 3e-5, 6e-8, 65504.0, 0.3333]:
        m = torch.stack([every, -every.flip(0)]).clamp(-top, top)
        m[:, -1] = top
        cases.append(m)
    g = torch.Generator().manual_seed(0)
    cases += [(torch.randn(shape, generator=g) * 0.02).half() for shape in [(3, 5), (1, 1), (1, 4096), (257, 129)]]
    for w in cases:
        ours = _quantize_int8(w.contiguous())
        theirs = F.int8_vectorwise_quant(w.contiguous())[:2]
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1]), w.shape
    for bad in [0.0, float("inf"), float("nan")]:
        w = (torch.randn((4, 8), generator=g) * 0.02).half()
        w[2] = 0.0
        w[2, 3] = bad
        out, stats = torch.empty((4, 8), dtype=torch.int8), torch.empty(4)
        assert _libkernels.quantize_int8(w.view(torch.int16).numpy(), 4, 8, out.numpy(), stats.numpy()) is False
        ours, theirs = _quantize_int8(w), F.int8_vectorwise_quant(w.clone())[:2]
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1].view(torch.int32), theirs[1].view(torch.int32))


@pytest.mark.parametrize("fixture", ["sd1", "sd3"])
def test_text_encoder_linears_from_the_table_are_the_classes(fixture, tmp_path, monkeypatch):
    """convert/models.py NOT_LINEAR (embeddings and float32-kept modules of CLIPTextModel,
    CLIPTextModelWithProjection, T5EncoderModel) gives the Linear weights the classes themselves
    give: the same plan either way, and no class is built for the table's encoders."""
    from ckptkit import pipeline
    from ckptkit.convert import models
    from ckptkit.quant import layerwise
    from ckptkit.quant.policy import Policy

    bundle = write_bundle(fixture, tmp_path / "bundle.safetensors")
    encoders = {"sd1": ["clip_l"], "sd3": ["clip_l", "clip_g", "t5xxl"]}[fixture]
    built = []
    real = layerwise._class_linears
    monkeypatch.setattr(layerwise, "_class_linears", lambda *a: built.append(a[0]) or real(*a))

    def plan():
        policy = Policy(components={name: "qint8" for name in encoders}, backend="quanto")
        p = pipeline.quantize(bundle, tmp_path / "out", policy, dry_run=True).plan
        return [(o.path, [(t.name, t.shape, t.dtype, t.note) for t in o.tensors]) for o in p.outputs]

    from_table = plan()
    assert built == []
    monkeypatch.setattr(models, "NOT_LINEAR", {})
    from_class = plan()
    assert len(built) == len(encoders)
    assert from_table == from_class
    assert sum(t[3].startswith("quanto:") for _, ts in from_table for t in ts) > 0


NEWER = [n for n, fx in __import__("ckptkit.fixtures.factory", fromlist=["FIXTURES"]).FIXTURES.items()
         if fx.family not in ("sd1", "sd2", "sdxl", "sdxl_refiner", "sd3", "flux", "sana")]


LIBRARY_BACKENDS = [("bnb", "nf4"), ("quanto", "qint8"), ("comfy", "fp8")]


# each newer family through one library backend, the backends taken in turn (every backend meets
# several families; all 3 x 8 pairs measured the same, 24 s of the suite's budget)
@pytest.mark.parametrize("fixture, backend, type_name",
                         [(f, *LIBRARY_BACKENDS[i % 3]) for i, f in enumerate(NEWER)])
def test_newer_families_quantize_with_a_library_backend_and_verify(tmp_path, fixture, backend, type_name):
    """The newer families' transformers through bitsandbytes, quanto and ComfyUI's fp8: only their
    Linear weights quantized (raw parameters such as HiDream's MoE gate, AuraFlow's register tokens
    and Z-Image's pad tokens kept), and the set passes verify against its source, 1-step check included."""
    from ckptkit.fixtures.factory import write_bundle
    from ckptkit.verify import VerifyOptions, run_verify

    bundle = write_bundle(fixture, tmp_path / f"{fixture}.safetensors", dtype=torch.bfloat16)
    run = pipeline.quantize(bundle, tmp_path / "set", Policy(diffusion_model=type_name, backend=backend))
    info = run.plan.info["components"]["diffusion_model"]
    assert info["policy"]["quantized_tensors"] > 0
    report = run_verify(tmp_path / "set", VerifyOptions(against=str(bundle), device="cpu"))
    assert report.passed, [(r.check, r.component, r.metric, r.detail) for r in report.results if r.passed is False]
    with open_checkpoint(next((tmp_path / "set").glob("diffusion_model*.safetensors"))) as ck:
        names = set(ck.tensors)
    for raw in ("double_stream_blocks.0.block.ff_i.gate.weight", "register_tokens", "x_pad_token", "cap_pad_token"):
        if raw in names:  # a raw nn.Parameter stays a plain tensor: no library scale beside it
            assert not any(n.startswith(raw.removesuffix(".weight") + ".") and n != raw for n in names), raw
