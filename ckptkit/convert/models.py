"""Model classes by name, and their state-dict shapes at any config without allocating memory."""

from __future__ import annotations

import torch

TRANSFORMERS_CONFIGS = {"CLIPTextModel": "CLIPTextConfig", "CLIPTextModelWithProjection": "CLIPTextConfig",
                        "T5EncoderModel": "T5Config", "UMT5EncoderModel": "UMT5Config",
                        # LLM text encoders (layout hf_llm), as the files hold them
                        "Qwen2_5_VLForConditionalGeneration": "Qwen2_5_VLConfig",
                        "Qwen2_5_VLTextModel": "Qwen2_5_VLTextConfig",
                        "Qwen3Model": "Qwen3Config", "Qwen3ForCausalLM": "Qwen3Config",
                        "Gemma2Model": "Gemma2Config", "Gemma2ForCausalLM": "Gemma2Config",
                        "LlamaModel": "LlamaConfig", "LlamaForCausalLM": "LlamaConfig",
                        "Mistral3ForConditionalGeneration": "Mistral3Config"}


# The text encoders' weights that are 2-D but not nn.Linear (embeddings), and the modules the class
# keeps in float32 (`_keep_in_fp32_modules`), by module name: the Linear weights of these classes
# without importing transformers (seconds, most of a small component's quantize time). Checked
# against the classes themselves in tests/quant/test_lib_writers.py; other classes are built on the
# meta device (quant/layerwise.py linear_sources).
NOT_LINEAR = {
    "CLIPTextModel": ({"token_embedding", "position_embedding"}, set()),
    "CLIPTextModelWithProjection": ({"token_embedding", "position_embedding"}, set()),
    "T5EncoderModel": ({"shared", "embed_tokens", "relative_attention_bias"}, {"wo"}),
    "UMT5EncoderModel": ({"shared", "embed_tokens", "relative_attention_bias"}, {"wo"}),
}


def library_of(name: str) -> str:
    """"transformers" or "diffusers": the library that holds the class (without importing either)."""
    return "transformers" if name in TRANSFORMERS_CONFIGS else "diffusers"


def model_class(name: str):
    """(model class, config class or None for diffusers models that take kwargs). Only the owning
    library is imported (each takes seconds)."""
    if library_of(name) == "transformers":
        import transformers

        return getattr(transformers, name), getattr(transformers, TRANSFORMERS_CONFIGS[name])
    import diffusers

    return getattr(diffusers, name), None


def _init_parameters(class_name: str) -> dict:
    import inspect

    cls, config_cls = model_class(class_name)
    return dict(inspect.signature((config_cls or cls).__init__).parameters)


def _kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        return "seq"
    if isinstance(value, dict):
        return "dict"
    return "other"


# What a JSON value may be for a constructor default of each kind. Loose on purpose: diffusers
# takes `Union[int, Tuple[int]]` per-block values and None for many fields; what it catches is a
# value of the wrong kind altogether (a string for a width, a number for a block type).
ACCEPTS = {"number": {"number", "seq"}, "bool": {"bool"}, "str": {"str", "seq"}, "seq": {"seq", "number", "str", "bool"},
           "dict": {"dict"}}


def _fits(value, default) -> bool:
    """Does a JSON value fit a constructor default's kind (numbers also bounded to +-2^31)?"""
    if value is None:
        return True
    want, got = _kind(default), _kind(value)
    if want not in ACCEPTS:
        return True
    if got not in ACCEPTS[want]:
        return False
    stack = [value]
    while stack:  # no number anywhere in it beyond what any real model uses
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (int, float)) and not isinstance(item, bool) and not abs(item) <= 2**31:
            return False
    return True


def check_config(class_name: str, config: dict, where: str) -> dict:
    """The config a model is built from, checked against its class's constructor: every field the
    class takes must have the type of its default (a field `in_channels: "four"` is refused with one
    line naming `where` and the field); fields a diffusers class does not take are left out, as
    diffusers' own from_config does (e.g. `auto_map`, `_name_or_path`)."""
    from ckptkit.errors import CkptError
    from ckptkit.formats.files import printable
    from ckptkit.formats.schema import describe

    if not isinstance(config, dict):
        raise CkptError(f"{where}: the config is not a JSON object")
    params = _init_parameters(class_name)
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    _, config_cls = model_class(class_name)
    clean = {}
    for key, value in config.items():
        if not isinstance(key, str) or key.startswith("_") or key in ("self", "auto_map"):
            continue
        param = params.get(key)
        if param is None:
            if config_cls is not None and takes_any:  # transformers configs keep extra fields
                clean[key] = value
            continue
        default = param.default
        if default is not param.empty and default is not None and not _fits(value, default):
            raise CkptError(f"{where}: field {printable(key)!r} of {class_name} must be like {default!r}, "
                            f"got {describe(value)}")
        clean[key] = value
    return clean


# constructor fields that describe the file or the run, not the network
BOOKKEEPING = frozenset({"self", "kwargs", "architectures", "transformers_version", "dtype", "torch_dtype",
                         "_name_or_path", "output_hidden_states", "return_dict", "output_attentions"})


# Fields a class sets itself whatever its config says (T5EncoderModel builds an encoder-only stack):
# written as the class uses them, so a config from a bundle and one saved by the library agree.
SET_BY_CLASS = {"T5EncoderModel": {"is_encoder_decoder": False, "use_cache": False}}


def canonical_config(class_name: str, config: dict) -> dict:
    """The config as every field the class takes, defaults filled in: one form whatever wrote it (a
    diffusers/transformers config.json carries bookkeeping fields, a derived config only the keys it
    read), so files that ship it are the same bytes from any input, and a reader needs no defaults."""
    import json

    params = _init_parameters(class_name)
    _, config_cls = model_class(class_name)
    known = {k: v for k, v in config.items() if k in params and k not in BOOKKEEPING}
    if config_cls is not None:  # transformers fills derived fields (T5's num_decoder_layers)
        filled = config_cls(**known).to_dict()
        known = {k: filled[k] for k in params if k in filled and k not in BOOKKEEPING}
    out = {}
    for key, param in sorted(params.items()):
        if key in BOOKKEEPING or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        if key in known:
            out[key] = known[key]
        elif param.default is not param.empty:
            out[key] = param.default
    out.update({k: v for k, v in SET_BY_CLASS.get(class_name, {}).items() if k in out})
    return json.loads(json.dumps(out, default=list))


def instantiate(class_name: str, config: dict, where: str | None = None):
    """A model of `class_name` built from `config` (checked first: check_config)."""
    from ckptkit.errors import CkptError

    cls, config_cls = model_class(class_name)
    clean = check_config(class_name, config, where or f"{class_name} config")
    try:
        return cls(**clean) if config_cls is None else cls(config_cls(**clean))
    except (TypeError, ValueError, AssertionError, KeyError, IndexError, ZeroDivisionError, AttributeError,
            OverflowError, RuntimeError) as exc:  # a config whose values do not make a model
        from ckptkit.formats.files import printable

        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CkptError(f"{where or class_name}: cannot build {class_name} from this config: {printable(text)}") from None


def meta_model(class_name: str, config: dict):
    """The model on the meta device: names, shapes and dtypes at no memory cost."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=True):
        return instantiate(class_name, config)


def diffusers_shapes(class_name: str, config: dict) -> dict[str, tuple[int, ...]]:
    """The state-dict names and shapes of a model built from `config` (text encoders with their
    `text_model.` names, as we write them)."""
    from ckptkit.convert.layouts.hf_text import clip_original_name, clip_state_shapes

    if class_name in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        return clip_state_shapes(config, with_projection=class_name.endswith("WithProjection"))
    state = meta_model(class_name, config).state_dict()
    shapes = {name: tuple(t.shape) for name, t in state.items()}
    if class_name.startswith("CLIPTextModel"):
        shapes = {clip_original_name(n): s for n, s in shapes.items()}
    return shapes


def random_model(class_name: str, config: dict, seed: int) -> torch.nn.Module:
    """Deterministic random weights; no layer left at zero so every tensor matters in checks."""
    torch.manual_seed(seed)
    model = instantiate(class_name, config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 1 and not param.any():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
        for module in model.modules():  # batch-norm statistics away from (0, 1): FLUX.2's VAE de-normalises by them
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.5)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
        # per-channel latent statistics held as buffers (AutoencoderKLLTXVideo's latents_mean / latents_std,
        # zeros / ones at init): away from the identity, as the pipeline de-normalises by them
        mean, std = model._buffers.get("latents_mean"), model._buffers.get("latents_std")
        if isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor) and mean.shape == std.shape:
            mean.copy_(torch.randn(mean.shape, generator=gen) * 0.5)
            std.copy_(torch.rand(std.shape, generator=gen) + 0.5)
    return model.eval()
