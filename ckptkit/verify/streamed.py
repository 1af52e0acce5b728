"""Layer-streamed models for the 1-step check: a component's model built on the meta device, each
module's own weights read from the lazy checkpoint (dequantized, cast to the compute dtype) just
before the module runs and dropped right after. Peak memory is one layer's weights plus the
activations, not the model: a real-shape SDXL UNet in float32 is 10.3 GB whole, and runs in well
under 1 GB this way. The arithmetic is the same as a loaded model's (same tensors, same kernels),
so the outputs are bit-identical (tests/verify/test_streamed.py).

Every pass reads the weights again: a model run twice (the diffusion model on two conditionings)
is read twice. That trade is made only for components above STREAM_ABOVE (memory.py decides).
"""

from __future__ import annotations

import torch

from ckptkit.errors import CkptError


def streamed_component(ckpt, comp, prefix: str = "", names: str = "original", config: dict | None = None,
                       exclude: frozenset[str] = frozenset(), dtype: torch.dtype = torch.float32,
                       device: torch.device | str = "cpu") -> torch.nn.Module:
    """The model of `load_component` (same arguments, same strict name and shape checks) with its
    parameters left on the meta device and fetched per module at forward time. Persistent buffers
    (small: position ids, rotary tables) are loaded for real."""
    from accelerate import init_empty_weights

    from ckptkit.convert.components import instantiate, map_component
    from ckptkit.engine.expr import shape_of
    from ckptkit.formats.files import printable

    device = torch.device(device)
    cmap = map_component(ckpt, comp, prefix, names, "diffusers", set(exclude), config)
    ops = dict(cmap.ops)
    with init_empty_weights(include_buffers=False):
        model = instantiate(comp.diffusers_class, cmap.config)
    expected = model.state_dict()
    if comp.diffusers_class.startswith("CLIPTextModel"):
        ops = {n if n in expected else n.removeprefix("text_model."): e for n, e in ops.items()}
    source_shapes = {n: tuple(info.shape) for n, info in ckpt.tensors.items()}
    missing = [n for n in expected if n not in ops and n != "encoder.embed_tokens.weight"]  # T5's tied copy
    unexpected = [n for n in ops if n not in expected]
    if missing or unexpected:
        raise CkptError(f"{comp.name}: {len(missing)} missing, {len(unexpected)} unexpected tensors for "
                        f"{comp.diffusers_class} (e.g. {(missing or unexpected)[0]!r})")
    for name, e in ops.items():
        shape = shape_of(e, source_shapes)
        if tuple(shape) != tuple(expected[name].shape):
            raise CkptError(f"{comp.name}: tensor {printable(name)} has shape {list(shape)}, "
                            f"{comp.diffusers_class} at this config needs {list(expected[name].shape)}")

    def fetch(name: str, floating: bool) -> torch.Tensor:
        t = ops[name].evaluate(ckpt.load)
        if floating and not t.is_floating_point():
            raise CkptError(f"{comp.name}: tensor {printable(name)} is stored as "
                            f"{str(t.dtype).removeprefix('torch.')}; {comp.diffusers_class} needs floating-point weights")
        # a copy always: never a view of the file's mapping (CPU kernels pick paths by alignment)
        return t.to(device=device, dtype=dtype if floating else t.dtype, copy=True).contiguous()

    # a tied parameter (T5's encoder.embed_tokens is shared) is read under the name the file has
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    stored = {id(p): n for n, p in model.named_parameters(remove_duplicate=False) if n in ops}
    owners: dict[int, tuple[torch.nn.Module, dict[str, str]]] = {}  # module -> {param key: state name}
    for full, module in model.named_modules(remove_duplicate=False):
        for key, param in list(module._parameters.items()):
            name = f"{full}.{key}" if full else key
            name = name if name in ops else stored.get(id(param))
            if param is None or name is None:
                continue
            owners.setdefault(id(module), (module, {}))[1].setdefault(key, name)
            module._parameters[key] = _placeholder(param.shape, dtype if param.is_floating_point() else param.dtype)
        for key, buf in module._buffers.items():
            name = f"{full}.{key}" if full else key
            if buf is not None and name in ops:
                module._buffers[key] = fetch(name, buf.is_floating_point())
    for module, keys in owners.values():
        module.register_forward_pre_hook(_materialize(keys, fetch))
        module.register_forward_hook(_release(keys))
    for module in model.modules():  # buffers computed at init (rotary tables) move with the model
        for key, buf in module._buffers.items():
            if buf is not None and buf.device != device:
                module._buffers[key] = buf.to(device)
    model.streamed = True
    return model.eval()


def _placeholder(shape, dtype) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.empty(shape, dtype=dtype, device="meta"), requires_grad=False)


def _materialize(keys: dict[str, str], fetch):
    def hook(module, args):
        for key, name in keys.items():
            p = module._parameters[key]
            if p is not None and p.device.type == "meta":
                module._parameters[key] = torch.nn.Parameter(fetch(name, p.is_floating_point()), requires_grad=False)
    return hook


def _release(keys: dict[str, str]):
    def hook(module, args, output):
        for key in keys:
            p = module._parameters[key]
            if p is not None and p.device.type != "meta":
                module._parameters[key] = _placeholder(p.shape, p.dtype)
    return hook
