"""Round trips through the real libraries, on the CPU: each class's file written by `quantize --to
bnb|quanto` is loaded with the library's own loader, and its forward output compared with
(a) the same library quantizing the same weights itself: equal, and
(b) the unquantized model: within the backend's usual error (cosine similarity bounds below).

Loaders: transformers' from_pretrained for bitsandbytes text encoders; diffusers' from_pretrained
for quanto denoisers; quanto's own `requantize` for quanto text encoders (transformers 5 does not
load pre-quantized quanto weights); and for bitsandbytes denoisers, which diffusers' from_pretrained
refuses without a GPU, diffusers' own bitsandbytes quantizer driven on the CPU (its
preprocess_model / create_quantized_param, what from_pretrained calls per weight)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from ckptkit import pipeline
from ckptkit.convert.split import SplitOptions
from ckptkit.fixtures.factory import write_bundle
from ckptkit.quant.policy import Policy

# fixture, component, diffusers folder, library class
CASES = [
    ("sd1", "clip_l", "text_encoder", "CLIPTextModel"),
    ("sdxl", "clip_g", "text_encoder_2", "CLIPTextModelWithProjection"),
    ("sd3", "t5xxl", "text_encoder_3", "T5EncoderModel"),
    ("sd1", "diffusion_model", "unet", "UNet2DConditionModel"),
    ("flux_dev", "diffusion_model", "transformer", "FluxTransformer2DModel"),
    ("sd3", "diffusion_model", "transformer", "SD3Transformer2DModel"),
    ("sana", "diffusion_model", "transformer", "SanaTransformer2DModel"),
]
TYPES = [("bnb", "nf4"), ("bnb", "int8"), ("quanto", "qint8"), ("quanto", "qint4")]
# cosine similarity of the output with the unquantized model's, at least (tiny random models)
CLOSE = {"nf4": 0.98, "int8": 0.999, "qint8": 0.999, "qint4": 0.97}
TEXT = {"CLIPTextModel", "CLIPTextModelWithProjection", "T5EncoderModel"}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Per fixture: its bf16 bundle and that bundle split into diffusers folders (the plain model)."""
    root = tmp_path_factory.mktemp("round_trips")
    made = {}

    def get(fixture):
        if fixture not in made:
            bundle = write_bundle(fixture, root / f"{fixture}.safetensors", dtype=torch.bfloat16)
            pipeline.split(bundle, root / f"{fixture}-plain", SplitOptions(layout="diffusers"))
            made[fixture] = bundle, root / f"{fixture}-plain"
        return made[fixture]
    return get


def _class(name):
    import diffusers
    import transformers

    return getattr(transformers, name, None) or getattr(diffusers, name)


def _plain(cls_name, folder: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _class(cls_name).from_pretrained(folder, torch_dtype=torch.bfloat16).eval()


def _forward(cls_name, model, fixture):
    """The model's output on seeded inputs (float32)."""
    from ckptkit.verify.conditioning import random_conditioning
    from ckptkit.verify.recipes import recipe_for
    from ckptkit.verify.samplers import DENOISERS, guidance_value

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if cls_name in TEXT:
            ids = torch.randint(1, model.config.vocab_size, (1, 12), generator=g)
            return model(ids).last_hidden_state.float()
        family = {"sd1": "sd1", "flux_dev": "flux", "sd3": "sd3", "sana": "sana"}[fixture]
        recipe = recipe_for(family, "dev" if fixture == "flux_dev" else None)
        call = DENOISERS[recipe.denoiser]
        cfg = dict(model.config)
        side = 2 * call.multiple(cfg)
        x = torch.randn(1, call.latent_channels(cfg), side, side, generator=g).to(torch.bfloat16)
        cond = random_conditioning(call.cond_shapes(cfg, recipe, 8), recipe, 0, side * 8, side * 8)
        cond = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in cond.items()}
        return call(model, x, 500.0 if recipe.denoiser == "unet" else 0.5, cond, guidance_value(recipe, model)).float()


def _kept_linears(model, quantized_names):
    """Linear modules our file leaves unquantized (the policy's high-precision layers)."""
    return sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in quantized_names)


def _bnb_config(type_name, skip):
    from transformers import BitsAndBytesConfig

    if type_name == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip or None)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=type_name, bnb_4bit_compute_dtype=torch.bfloat16,
                              llm_int8_skip_modules=skip or None)


def _diffusers_bnb(cls_name, folder: Path, config: dict, state: dict, pre_quantized: bool):
    """diffusers' bitsandbytes loading, its own quantizer's steps, on the CPU (from_pretrained stops
    at its GPU check first): replace the Linear layers, then create_quantized_param per weight."""
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from diffusers.quantizers import DiffusersAutoQuantizer

    cls = _class(cls_name)
    quantizer = DiffusersAutoQuantizer.from_config(config, pre_quantized=pre_quantized)
    with init_empty_weights():
        model = cls.from_config(cls.load_config(folder)).to(torch.bfloat16)  # as torch_dtype=bfloat16
    quantizer.preprocess_model(model=model, device_map=None, keep_in_fp32_modules=[])
    unexpected = list(state)  # what from_pretrained hands it: the keys the bare model does not hold
    for name, value in state.items():
        if name not in unexpected:
            continue  # a quantized weight's statistics, taken with it
        if quantizer.check_if_quantized_param(model, value, name, state):
            quantizer.create_quantized_param(model, value, name, torch.device("cpu"), state, unexpected_keys=unexpected)
        else:
            set_module_tensor_to_device(model, name, "cpu", value=value)
        if name in unexpected:
            unexpected.remove(name)
    quantizer.postprocess_model(model)
    return model.eval()


def _ours_and_theirs(backend, type_name, cls_name, fixture, comp, folder_name, sources, tmp_path):
    """(our file loaded by the library, the library's own quantization of the same weights, plain)."""
    from safetensors.torch import load_file

    bundle, plain = sources(fixture)
    text = cls_name in TEXT
    # quanto text encoders: transformers cannot load them pre-quantized; the comfy layout + requantize
    layout = "comfy" if backend == "quanto" and text else "diffusers"
    policy = Policy(**({"components": {comp: type_name}} if text else {"diffusion_model": type_name}),
                    backend=backend, layout=layout)
    out = tmp_path / "q"
    result = pipeline.quantize(bundle, out, policy)
    reference = _plain(cls_name, plain / folder_name)
    if layout == "diffusers":
        qfolder = out / folder_name
        qconfig = json.loads((qfolder / "config.json").read_text())["quantization_config"]
    if backend == "bnb":
        if text:  # transformers loads pre-quantized bitsandbytes on the CPU
            ours = _plain(cls_name, qfolder)
            skip = qconfig["llm_int8_skip_modules"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs = _class(cls_name).from_pretrained(plain / folder_name, dtype=torch.bfloat16,
                                                          quantization_config=_bnb_config(type_name, skip)).eval()
        else:
            from diffusers import BitsAndBytesConfig

            config = BitsAndBytesConfig.from_dict(qconfig)
            weights = next(qfolder.glob("*.safetensors"))
            ours = _diffusers_bnb(cls_name, qfolder, config, load_file(weights), pre_quantized=True)
            theirs = _diffusers_bnb(cls_name, plain / folder_name, config,
                                    load_file(next((plain / folder_name).glob("*.safetensors"))), pre_quantized=False)
        kind = "Linear4bit" if type_name != "int8" else "Linear8bitLt"
    else:
        import optimum.quanto as quanto

        qtype = {"qint8": quanto.qint8, "qint4": quanto.qint4}[type_name]
        if text:
            state = load_file(out / result.plan.info["components"][comp]["file"])
            if not any(k.startswith("text_model.") for k in reference.state_dict()):  # transformers 5's CLIPTextModel
                state = {n.removeprefix("text_model."): t for n, t in state.items()}
            qmap = {n.split(".weight._data")[0]: {"weights": qtype.name, "activations": "none"}
                    for n in state if ".weight._data" in n}
            ours = _plain(cls_name, plain / folder_name)
            quanto.requantize(ours, state_dict=state, quantization_map=qmap, device=torch.device("cpu"))
            theirs = _plain(cls_name, plain / folder_name)
            quanto.quantize(theirs, weights=qtype, exclude=_kept_linears(theirs, set(qmap)))
            quanto.freeze(theirs)
            # requantize loads with strict=False: the key sets must agree by themselves
            assert set(_state(theirs)) - {n for n in _state(theirs) if n.endswith("position_ids")} \
                == set(state) - {n for n in state if n.endswith("position_ids")}
        else:
            from diffusers import QuantoConfig

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ours = _class(cls_name).from_pretrained(qfolder, torch_dtype=torch.bfloat16).eval()
                theirs = _class(cls_name).from_pretrained(
                    plain / folder_name, torch_dtype=torch.bfloat16,
                    quantization_config=QuantoConfig(weights_dtype=qconfig["weights_dtype"],
                                                     modules_to_not_convert=qconfig["modules_to_not_convert"])).eval()
        kind = "QLinear"
    layers = [n for n, m in ours.named_modules() if type(m).__name__ == kind]
    assert layers and layers == [n for n, m in theirs.named_modules() if type(m).__name__ == kind]
    return ours, theirs, reference


def _contiguous_inputs(model):
    """quanto's int8 CPU kernel refuses activations that are not contiguous (Sana's GLUMBConv hands
    it a transposed view: `_weight_int8pack_mm_cpu: A must be contiguous`), whoever quantized the
    weights; the same pre-hook on every model compared. On a CPU with AVX512-BF16, bitsandbytes
    0.50's Linear4bit repacks its weight on the first forward (functional.py
    _convert_weight_packed_for_cpu) and fails on layers narrower than its blocks of 32 rows (the
    tiny models here: "shape '[256, 0]' is invalid"), whoever quantized the weights: that path is
    switched off on every model compared, which then runs bitsandbytes' default 4-bit matmul."""
    for m in model.modules():
        if type(m).__name__ == "QLinear":
            m.register_forward_pre_hook(lambda _m, args: (args[0].contiguous(), *args[1:]))
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False


def _weights_kinds(model) -> dict[str, str]:
    return {n: type(m.weight).__name__ for n, m in model.named_modules() if type(m).__name__ == "QLinear"}


def _state(model) -> dict[str, torch.Tensor]:
    """The state dict without tied copies (T5's encoder.embed_tokens is shared.weight)."""
    out, seen = {}, set()
    for n, t in model.state_dict().items():
        key = (t.data_ptr(), t.shape, t.dtype) if t.device.type != "meta" and t.numel() else None
        if key is not None and key in seen and not n.startswith("shared."):
            continue
        seen.add(key)
        out[n] = t
    return out


@pytest.mark.parametrize("backend, type_name", TYPES, ids=[f"{b}-{t}" for b, t in TYPES])
@pytest.mark.parametrize("fixture, comp, folder, cls_name", CASES, ids=[c[3] for c in CASES])
def test_the_library_loads_our_file(sources, tmp_path, fixture, comp, folder, cls_name, backend, type_name):
    ours, theirs, reference = _ours_and_theirs(backend, type_name, cls_name, fixture, comp, folder, sources, tmp_path)
    mine, lib = _state(ours), _state(theirs)
    assert set(mine) == set(lib)
    for name, t in mine.items():  # the same serialization, byte for byte
        assert t.dtype == lib[name].dtype and torch.equal(t, lib[name]), name
    for m in (ours, theirs):
        _contiguous_inputs(m)
    a, b, r = (_forward(cls_name, m, fixture) for m in (ours, theirs, reference))
    assert torch.isfinite(a).all()
    if _weights_kinds(ours) == _weights_kinds(theirs):
        assert torch.equal(a, b), float((a - b).abs().max())  # (a) what the library computes itself
    else:  # quanto runs int4 weights it quantized itself with its TinyGemm kernel, reloaded ones without
        # (it serializes the kernel-agnostic packing and does not optimize on load): rounding apart
        assert {v for v in _weights_kinds(theirs).values()} >= {"TinyGemmWeightQBitsTensor"}
        assert float((a - b).norm() / b.norm()) < 1e-2
    cos = torch.nn.functional.cosine_similarity(a.reshape(-1), r.reshape(-1), dim=0)
    assert cos > CLOSE[type_name], float(cos)  # (b) the backend's usual error
