"""Layout maps between original (bundled / ComfyUI / stable-diffusion.cpp) and diffusers names.

One module per kind of component network. Each module defines a `Layout` with:
  kind            the key family specs use (`ComponentSpec.layout`)
  to_original(shapes, config) -> {original name: Expr over diffusers names}   (ours, streamable)
  to_diffusers(state_dict, config) -> {diffusers name: tensor}                (diffusers' converter)
Names on both sides are component-local: no bundle prefix.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ckptkit.engine.expr import Expr


class Layout(Protocol):
    kind: str

    def to_original(self, shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, Expr]: ...

    def to_diffusers(self, state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]: ...


def num_blocks(names, prefix: str) -> int:
    """How many numbered blocks (`<prefix>N.`) the names hold: one more than the highest N."""
    return 1 + max((int(n[len(prefix):].split(".", 1)[0]) for n in names if n.startswith(prefix)), default=-1)


_LAYOUTS: dict[str, Layout] = {}


def register(layout: Layout) -> Layout:
    _LAYOUTS[layout.kind] = layout
    return layout


def get_layout(kind: str) -> Layout:
    if kind not in _LAYOUTS:
        _load_all()  # a module imported directly registers only itself
    try:
        return _LAYOUTS[kind]
    except KeyError:
        from ckptkit.errors import CkptError

        raise CkptError(f"no layout map for {kind!r} components") from None


def _load_all() -> None:
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
