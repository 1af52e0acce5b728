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
    return model.eval()


def load_component(ckpt, comp, prefix: str = "", names: str = "original", config: dict | None = None,
                   exclude: frozenset[str] = frozenset(), dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A diffusers/transformers model built from a component's tensors in any checkpoint and any
    naming (quantized GGUF data comes dequantized), with a strict load: nothing missing."""
    from ckptkit.convert.components import map_component
    from ckptkit.errors import CkptError

    cmap = map_component(ckpt, comp, prefix, names, "diffusers", set(exclude), config)
    state = {}
    for name, e in cmap.ops.items():
        t = e.evaluate(ckpt.load)
        state[name] = t.to(dtype).contiguous() if t.is_floating_point() else t.contiguous()
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):  # parameters on meta, buffers computed for real
        model = instantiate(comp.diffusers_class, cmap.config)
    if comp.diffusers_class.startswith("CLIPTextModel"):
        expected = set(model.state_dict())
        state = {n if n in expected else n.removeprefix("text_model."): t for n, t in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {"encoder.embed_tokens.weight"}
    missing = [m for m in missing if m not in tied]
    if missing or unexpected:
        raise CkptError(f"{comp.name}: {len(missing)} missing, {len(unexpected)} unexpected tensors for "
                        f"{comp.diffusers_class} (e.g. {(missing or unexpected)[0]!r})")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    for buf_name, buf in list(model.named_buffers()):
        if buf.device.type == "meta":  # non-persistent buffers (rotary tables, position ids) are rebuilt
            raise CkptError(f"{comp.name}: buffer {buf_name} was not restored")
    return model.eval()
