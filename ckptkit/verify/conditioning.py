"""Conditioning for the 1-step check: deterministic token ids (no tokenizer needed), the text
encoder outputs a recipe asks for, and the pipelines' assembly of them into the denoiser's inputs
(context, pooled, SDXL time ids). A seeded random stand-in replaces text encoders a set lacks
(Sana ships none; FLUX and SD3 files often carry the transformer alone)."""

from __future__ import annotations

import zlib

import torch

from ckptkit.verify.recipes import AESTHETIC_SCORE, TIME_IDS, OneStepRecipe, TextUse

CLIP_LENGTH = 77
CONTENT_TOKENS = 12  # "words" before EOS: a short prompt, as real prompts are


def generator(seed: int, tag: str) -> torch.Generator:
    """A CPU generator per (seed, purpose), so every input is fixed by the seed alone."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(tag.encode()))


def token_ids(scheme: str, vocab_size: int, seed: int, length: int | None = None, tag: str = "") -> torch.Tensor:
    """(1, length) token ids.
    clip: BOS (vocab - 2) + 12 random tokens + EOS (vocab - 1), padded with EOS to 77 (CLIP's
          tokenizer ids, 49406/49407, at any vocab size; EOS is the largest id, so pooling by argmax
          or by eos_token_id finds it);
    t5:   12 random tokens + EOS (1), padded with 0 to `length` (32 unless given)."""
    gen = generator(seed, f"tokens:{scheme}:{tag}")
    if scheme == "clip":
        length = length or CLIP_LENGTH
        words = torch.randint(0, vocab_size - 2, (min(CONTENT_TOKENS, length - 2),), generator=gen)
        ids = torch.full((length,), vocab_size - 1, dtype=torch.long)
        ids[0] = vocab_size - 2
        ids[1:1 + len(words)] = words
    elif scheme == "t5":
        length = length or 32
        words = torch.randint(3, min(vocab_size, 32000), (min(CONTENT_TOKENS, length - 1),), generator=gen)
        ids = torch.zeros(length, dtype=torch.long)
        ids[:len(words)] = words
        ids[len(words)] = 1
    else:
        raise ValueError(f"unknown token scheme {scheme!r}")
    return ids[None]


def _final_norm(model):
    return getattr(model, "text_model", model).final_layer_norm


def encode(model, use: TextUse, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs `use` names, as float32: {"hidden": (1, L, D), "pooled": (1, P)} (either may be absent)."""
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        if use.tokens == "t5":
            out["hidden"] = model(ids).last_hidden_state.float()
            return out
        res = model(ids, output_hidden_states=True)
        if use.hidden == "last":
            out["hidden"] = res.last_hidden_state
        elif use.hidden == "penultimate":
            out["hidden"] = res.hidden_states[-2]
        elif use.hidden == "penultimate_ln":
            out["hidden"] = _final_norm(model)(res.hidden_states[-2])
        elif use.hidden is not None:
            raise ValueError(f"unknown hidden selection {use.hidden!r}")
        if use.pooled == "projected":
            out["pooled"] = res.text_embeds if getattr(res, "text_embeds", None) is not None else res.pooler_output
        elif use.pooled == "pooler":
            out["pooled"] = res.pooler_output
    return {k: v.float() for k, v in out.items()}


def time_ids(kind: str | None, height: int, width: int) -> torch.Tensor | None:
    """SDXL's add_time_ids: (orig h, orig w, crop top, crop left, target h, target w); the
    refiner's: (orig h, orig w, crop top, crop left, aesthetic score)."""
    if kind is None:
        return None
    if kind == "sdxl":
        vals = [height, width, 0, 0, height, width]
    elif kind == "refiner":
        vals = [height, width, 0, 0, AESTHETIC_SCORE]
    else:
        raise ValueError(f"unknown time ids {kind!r}")
    assert len(vals) == TIME_IDS[kind]
    return torch.tensor([vals], dtype=torch.float32)


def missing_encoders(recipe: OneStepRecipe, available) -> list[str]:
    """Text encoders the recipe needs that are neither available nor replaced by zeros."""
    return [u.component for u in recipe.text if u.component not in available
            and u.component not in recipe.zeros_when_absent]


def assemble(recipe: OneStepRecipe, outputs: dict[str, dict[str, torch.Tensor]], context_width: int | None,
             text_length: int, height: int, width: int) -> dict[str, torch.Tensor]:
    """The denoiser's conditioning from the text encoder outputs, as the family's pipeline builds
    it. `context_width`: the denoiser's context width, for encoders the pipeline zero-fills (SD3
    without T5: zeros of (text_length, joint_attention_dim))."""
    groups = []
    for group in recipe.context:
        parts = []
        for name in group:
            if name in outputs:
                parts.append(outputs[name]["hidden"])
            elif name in recipe.zeros_when_absent:
                parts.append(torch.zeros(1, text_length, context_width))
            else:
                raise KeyError(name)
        groups.append(torch.cat(parts, -1))
    widest = max(g.shape[-1] for g in groups)
    groups = [torch.nn.functional.pad(g, (0, widest - g.shape[-1])) for g in groups]
    cond = {"context": torch.cat(groups, 1)}
    if recipe.pooled:
        cond["pooled"] = torch.cat([outputs[n]["pooled"] for n in recipe.pooled], -1)
    ids = time_ids(recipe.time_ids, height, width)
    if ids is not None:
        cond["time_ids"] = ids
    return cond


def random_conditioning(shapes: dict[str, tuple[int, ...]], recipe: OneStepRecipe, seed: int,
                        height: int, width: int) -> dict[str, torch.Tensor]:
    """Seeded N(0, 1) stand-ins of the shapes the denoiser takes (Sana's caption embedding, or
    any family whose set lacks its text encoders), plus SDXL time ids."""
    cond = {k: torch.randn((1, *shape), generator=generator(seed, f"random:{k}")) for k, shape in shapes.items()}
    ids = time_ids(recipe.time_ids, height, width)
    if ids is not None:
        cond["time_ids"] = ids
    return cond
