"""Caption conditioning for the sampler: the family's text encoders when the model set has them, else a
seeded random caption embedding.

* Text encoders are found by their diffusers folder names (`text_encoder`, `text_encoder_2`, ...), the
  names a component set's specs give them too (FLUX: CLIP-L, T5; SD3: CLIP-L, CLIP-G, T5; Sana: Gemma-2).
* Token ids come from the matching `tokenizer*` folder when the set has one. Component files carry no
  tokenizer (`ckptkit split` copies one only with --tokenizer-from); then the prompt's UTF-8 bytes (mod
  the vocabulary size) stand in for token ids: deterministic and prompt-dependent, but not real text.
* With no text encoder (Sana's Gemma-2 ships separately), the caption embedding is N(0, 1) noise from
  its own generator seeded with the sample's --seed (+1), shaped as the family's pipeline shapes it, with
  an all-ones attention mask. The result is a valid but meaningless conditioning, as the CLI says.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ckptkit.trigflow.adapters import Adapter


def token_ids(prompt: str, encoder, tokenizer, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [1, length], attention mask [1, length])."""
    if tokenizer is not None:
        enc = tokenizer([prompt], padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        return enc.input_ids, enc.attention_mask
    vocab = encoder.config.vocab_size
    ids = [b % vocab for b in prompt.encode("utf-8")][:length]
    mask = [1] * len(ids) + [0] * (length - len(ids))
    ids += [getattr(encoder.config, "pad_token_id", None) or 0] * (length - len(ids))
    return torch.tensor([ids]), torch.tensor([mask])


def _run(encoder, ids, mask=None, **kwargs):
    device = next(encoder.parameters()).device
    with torch.no_grad():
        return encoder(ids.to(device), **({"attention_mask": mask.to(device)} if mask is not None else {}), **kwargs)


def _pooled(out) -> torch.Tensor:
    return out.text_embeds if getattr(out, "text_embeds", None) is not None else out.pooler_output


def _flux(prompt, enc, tok) -> dict:
    clip_ids, _ = token_ids(prompt, enc["text_encoder"], tok.get("tokenizer"), 77)
    t5_ids, _ = token_ids(prompt, enc["text_encoder_2"], tok.get("tokenizer_2"), 256)
    return {"pooled_projections": _pooled(_run(enc["text_encoder"], clip_ids)),
            "encoder_hidden_states": _run(enc["text_encoder_2"], t5_ids).last_hidden_state}


def _sd3(prompt, enc, tok) -> dict:
    """StableDiffusion3Pipeline.encode_prompt: penultimate CLIP states side by side, padded (or cut) to the
    T5 width, then T5's states after them; pooled = both CLIPs' pooled outputs side by side."""
    states, pooled = [], []
    for name, tname in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        ids, _ = token_ids(prompt, enc[name], tok.get(tname), 77)
        out = _run(enc[name], ids, output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled.append(_pooled(out))
    ids, _ = token_ids(prompt, enc["text_encoder_3"], tok.get("tokenizer_3"), 256)
    t5 = _run(enc["text_encoder_3"], ids).last_hidden_state
    clip = torch.cat(states, dim=-1)
    clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return {"encoder_hidden_states": torch.cat([clip, t5], dim=-2), "pooled_projections": torch.cat(pooled, dim=-1)}


def _sana(prompt, enc, tok) -> dict:
    """SanaPipeline without the complex human instruction: Gemma-2's last states of 300 tokens, with mask."""
    ids, mask = token_ids(prompt, enc["text_encoder"], tok.get("tokenizer"), 300)
    return {"encoder_hidden_states": _run(enc["text_encoder"], ids, mask)[0], "encoder_attention_mask": mask}


# family -> (text encoders it needs, by diffusers folder name; how it encodes)
ENCODERS: dict[str, tuple[tuple[str, ...], Callable]] = {
    "flux": (("text_encoder", "text_encoder_2"), _flux),
    "sd3": (("text_encoder", "text_encoder_2", "text_encoder_3"), _sd3),
    "sana": (("text_encoder",), _sana),
}


def random_caption(adapter: Adapter, config: dict, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed + 1)
    out = {}
    for name, shape in adapter.caption(config).items():
        out[name] = (torch.ones((1, *shape), dtype=torch.int64) if name.endswith("attention_mask")
                     else torch.randn((1, *shape), generator=gen))
    return out


def conditioning(adapter: Adapter, config: dict, prompt: str, encoders: dict, tokenizers: dict, seed: int,
                 guidance_scale: float, device, dtype) -> tuple[dict, str]:
    """(model-call kwargs for batch 1, where they came from)."""
    needed, encode = ENCODERS.get(adapter.family, (None, None))
    if needed is None:  # a family whose text encoders ship separately and are not run here
        cond = random_caption(adapter, config, seed)
        how = "seeded random caption embedding (this family's text encoders are not run by ckptkit sample)"
    elif all(n in encoders for n in needed):
        cond = encode(prompt, encoders, tokenizers)
        how = f"text encoders {', '.join(needed)}"
        how += "" if tokenizers else " (no tokenizer: prompt bytes as token ids)"
    else:
        missing = [n for n in needed if n not in encoders]
        cond = random_caption(adapter, config, seed)
        how = f"seeded random caption embedding (no {', '.join(missing)})"
    cond = {k: v.to(device) if k.endswith("attention_mask") else v.to(device=device, dtype=dtype)
            for k, v in cond.items()}
    factor = adapter.guidance(config)
    if factor is not None:  # as the pipelines build it: full([1], guidance_scale, float32) * factor
        cond["guidance"] = torch.full((1,), float(guidance_scale), dtype=torch.float32, device=device) * factor
    return cond, how
