"""OpenCLIP text towers as bundles store them: SD2.x ViT-H (`cond_stage_model.model.`) and SDXL bigG
(`conditioner.embedders.1.model.`). Names here are component-local (no bundle prefix).

    open_clip                                   transformers CLIPTextModel(WithProjection)
    token_embedding.weight                      text_model.embeddings.token_embedding.weight
    positional_embedding                        text_model.embeddings.position_embedding.weight
    transformer.resblocks.N.ln_1 / ln_2         text_model.encoder.layers.N.layer_norm1 / layer_norm2
    transformer.resblocks.N.attn.in_proj_*      cat(self_attn.q_proj, k_proj, v_proj)   (fused, dim 0)
    transformer.resblocks.N.attn.out_proj       text_model.encoder.layers.N.self_attn.out_proj
    transformer.resblocks.N.mlp.c_fc / c_proj   text_model.encoder.layers.N.mlp.fc1 / fc2
    ln_final                                    text_model.final_layer_norm
    text_projection  [width, proj]              text_projection.weight  [proj, width]  (transposed)

open_clip applies `x @ text_projection`, transformers an `nn.Linear` (`x @ W.T`), hence the
transpose (Stability-AI/generative-models #111). `logit_scale` (open_clip's CLIP parameter, kept
after `.visual` was deleted) is unused junk: it is not produced and is dropped on the way in.

The diffusers side is always written in the `text_model.`-prefixed form; input may also use the
names of transformers >= 5.6's flattened `CLIPTextModel` (no `text_model.` level).

SD2.x files store 24 resblocks, while diffusers' SD2 text_encoder config has 23 layers (SD2
conditions on the penultimate layer, so the last one is dead weight). `to_diffusers` drops every
resblock at or beyond `config["num_hidden_layers"]`, so its output loads into the model the config
describes; our CLIP_H_CONFIG keeps all 24, so nothing is dropped there. `text_projection` is kept
whenever the file has it (SD2's is a real but unused weight): a `CLIPTextModel` (no projection)
must not be loaded strictly with it.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch

from ckptkit.engine.expr import Expr, cat, src, transpose
from ckptkit.convert.layouts import register
from ckptkit.convert.layouts.hf_text import CLIP_PLACEHOLDERS, CLIP_SHAPE_KEYS, CLIP_UNDETERMINED, clip_config, clip_original_name
from ckptkit.errors import CkptError

TOP_LEVEL = {  # open_clip name: HF name
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
PROJECTION = ("text_projection", "text_projection.weight")  # (open_clip, HF): transposed
LAYER = {  # transformer.resblocks.N.<open_clip>: text_model.encoder.layers.N.<HF>
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
FUSED_QKV = {"attn.in_proj_weight": "weight", "attn.in_proj_bias": "bias"}  # cat(q, k, v) along dim 0
NOT_STORED = {"text_model.embeddings.position_ids"}  # a buffer, with no open_clip counterpart
JUNK = {"logit_scale"}

HF_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.")
OPEN_CLIP_LAYER = re.compile(r"transformer\.resblocks\.(\d+)\.")
CONFIG_DIMS = {  # CLIPTextConfig key: (open_clip name, dim); heads: see hf_text.CLIP_UNDETERMINED
    "vocab_size": ("token_embedding.weight", 0),
    "hidden_size": ("token_embedding.weight", 1),
    "max_position_embeddings": ("positional_embedding", 0),
    "intermediate_size": ("transformer.resblocks.0.mlp.c_fc.weight", 0),
    "projection_dim": ("text_projection", 1),  # [width, projection_dim]
}
# Any bundle prefix but SD2's: convert_open_clip_checkpoint skips a hard-coded list of
# `cond_stage_model.model.` names (resblocks.23.*, text_projection); we decide drops from the config.
CONVERT_PREFIX = "conditioner.embedders.1.model."


class OpenClip:
    kind = "open_clip"
    shape_keys = CLIP_SHAPE_KEYS
    undetermined = CLIP_UNDETERMINED

    def placeholders(self, shapes: dict[str, tuple[int, ...]]) -> dict:
        """Stand-ins for `undetermined` that give the right names and shapes whatever the real values
        are (one head): only for reading names and shapes (convert/configs.py, not strict)."""
        return CLIP_PLACEHOLDERS

    def to_original(self, shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, Expr]:
        hf = {clip_original_name(n): n for n in shapes}  # `text_model.` form -> name as given
        out: dict[str, Expr] = {}
        for orig, name in TOP_LEVEL.items():
            out[orig] = src(_need(hf, name))
        if PROJECTION[1] in hf:
            out[PROJECTION[0]] = transpose(hf[PROJECTION[1]])
        for i in sorted({int(m.group(1)) for n in hf if (m := HF_LAYER.match(n))}):
            hf_layer, orig_layer = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
            for orig, name in LAYER.items():
                out[orig_layer + orig] = src(_need(hf, hf_layer + name))
            for orig, kind in FUSED_QKV.items():
                out[orig_layer + orig] = cat([_need(hf, f"{hf_layer}self_attn.{x}_proj.{kind}") for x in "qkv"])

        used = {s for e in out.values() for s in e.sources()}
        left = sorted(n for t, n in hf.items() if n not in used and t not in NOT_STORED)
        if left:
            raise CkptError(f"open_clip layout: {len(left)} tensor(s) have no open_clip name, e.g. {left[:3]}")
        return out

    def to_diffusers(self, state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
        layers = config["num_hidden_layers"]
        known = set(TOP_LEVEL) | {PROJECTION[0]} | JUNK
        unknown = sorted(n for n in state_dict if n not in known and not OPEN_CLIP_LAYER.match(n))
        if unknown:
            raise CkptError(f"open_clip layout: unexpected tensor(s) {unknown[:3]}")
        checkpoint = {CONVERT_PREFIX + n: t for n, t in state_dict.items()
                      if not ((m := OPEN_CLIP_LAYER.match(n)) and int(m.group(1)) >= layers)}
        # The converter reads only `text_model.config.hidden_size` (and only when the file lacks
        # text_projection, whose shape[0] is the same width): a stand-in spares building the model.
        text_model = SimpleNamespace(config=SimpleNamespace(hidden_size=config["hidden_size"]))
        from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint  # late: importing diffusers costs ~3 s
        return convert_open_clip_checkpoint(text_model, checkpoint, prefix=CONVERT_PREFIX)

    def config_from_original(self, shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
        """The config of a component from its original-layout (prefix-stripped) shapes. `base` is the
        resolved config (convert/configs.py): used only for what shapes cannot tell (heads, hidden_act, token ids,
        projection_dim when there is no text_projection). Every stored resblock counts: see the
        module doc for SD2's 24th."""
        return clip_config(shapes, base, CONFIG_DIMS, OPEN_CLIP_LAYER, self.kind)


def _need(names: dict[str, str], name: str) -> str:
    if name not in names:
        raise CkptError(f"open_clip layout: the text encoder has no {name!r}")
    return names[name]


register(OpenClip())
