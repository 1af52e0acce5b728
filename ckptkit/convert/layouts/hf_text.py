"""Text encoders that are stored in transformers' own layout: CLIP (HF) and T5.

Original and diffusers-folder names are the same here, with one twist: transformers >= 5.6
flattened `CLIPTextModel`, so a state_dict from it lacks the `text_model.` level that real
files carry. We always write the `text_model.`-prefixed form (transformers 5 still loads it),
so the installed transformers version never decides the names in our files.
"""

from __future__ import annotations

import torch

from ckptkit.convert.expr import Expr, src
from ckptkit.convert.layouts import register

CLIP_TOP_LEVEL = ("text_model.", "text_projection.", "logit_scale")
T5_TIED_COPY = "encoder.embed_tokens.weight"  # a stored duplicate of shared.weight


def clip_original_name(name: str) -> str:
    return name if name.startswith(CLIP_TOP_LEVEL) else "text_model." + name


class HFClip:
    kind = "hf_clip"

    def to_original(self, shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, Expr]:
        return {clip_original_name(n): src(n) for n in shapes}

    def to_diffusers(self, state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
        return {clip_original_name(n): t for n, t in state_dict.items()}


class HFT5:
    kind = "hf_t5"
    tied = frozenset({T5_TIED_COPY})  # diffusers-side names that to_original leaves out on purpose

    def to_original(self, shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, Expr]:
        return {n: src(n) for n in shapes if n != T5_TIED_COPY}

    def to_diffusers(self, state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
        out = dict(state_dict)
        if "shared.weight" not in out and T5_TIED_COPY in out:
            out["shared.weight"] = out[T5_TIED_COPY]
        out.pop(T5_TIED_COPY, None)
        return out


register(HFClip())
register(HFT5())
