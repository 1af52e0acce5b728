"""Model classes by name, and their state-dict shapes at any config without allocating memory."""

from __future__ import annotations

import torch

TRANSFORMERS_CONFIGS = {"CLIPTextModel": "CLIPTextConfig", "CLIPTextModelWithProjection": "CLIPTextConfig",
                        "T5EncoderModel": "T5Config"}


def model_class(name: str):
    """(model class, config class or None for diffusers models that take kwargs)."""
    import diffusers
    import transformers

    if hasattr(diffusers, name):
        return getattr(diffusers, name), None
    return getattr(transformers, name), getattr(transformers, TRANSFORMERS_CONFIGS[name])


def instantiate(class_name: str, config: dict):
    cls, config_cls = model_class(class_name)
    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    return cls(**clean) if config_cls is None else cls(config_cls(**clean))


def meta_model(class_name: str, config: dict):
    """The model on the meta device: names, shapes and dtypes at no memory cost."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=True):
        return instantiate(class_name, config)


def diffusers_shapes(class_name: str, config: dict) -> dict[str, tuple[int, ...]]:
    """The state-dict names and shapes of a model built from `config` (text encoders with their
    `text_model.` names, as we write them)."""
    from ckptkit.convert.layouts.hf_text import clip_original_name

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
    return model.eval()
