"""Text encoders that are stored in transformers' own layout: CLIP (HF) and T5.

Original and diffusers-folder names are the same here, with one twist: transformers >= 5.6
flattened `CLIPTextModel`, so a state_dict from it lacks the `text_model.` level that real
files carry. We always write the `text_model.`-prefixed form (transformers 5 still loads it),
so the installed transformers version never decides the names in our files.
"""

from __future__ import annotations

import re
from typing import Iterable

import torch

from ckptkit.engine.expr import Expr, src
from ckptkit.convert.layouts import register
from ckptkit.errors import CkptError

CLIP_TOP_LEVEL = ("text_model.", "text_projection.", "logit_scale")
T5_TIED_COPY = "encoder.embed_tokens.weight"  # a stored duplicate of shared.weight

# Configs from original-layout shapes (`config_from_original`): {config key: (tensor name, dim)}.
# Head counts and the activation are not in the shapes (q/k/v are [hidden, hidden] whatever the
# split): they come from the resolved config (convert/configs.py).
CLIP_SHAPE_KEYS = ("vocab_size", "hidden_size", "max_position_embeddings", "intermediate_size", "projection_dim",
                   "num_hidden_layers")
CLIP_PLACEHOLDERS = {"num_attention_heads": 1, "hidden_act": "gelu"}
CLIP_UNDETERMINED = {"num_attention_heads": "head count: q/k/v are [hidden, hidden] whatever the head split",
                     "hidden_act": "the activation is not in the weights (quick_gelu in OpenAI CLIP, gelu in OpenCLIP)"}
HF_CLIP_DIMS = {
    "vocab_size": ("text_model.embeddings.token_embedding.weight", 0),
    "hidden_size": ("text_model.embeddings.token_embedding.weight", 1),
    "max_position_embeddings": ("text_model.embeddings.position_embedding.weight", 0),
    "intermediate_size": ("text_model.encoder.layers.0.mlp.fc1.weight", 0),
    "projection_dim": ("text_projection.weight", 0),  # nn.Linear: [projection_dim, hidden]
}
HF_CLIP_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.")
CLIP_OPTIONAL = frozenset({"projection_dim"})  # a CLIPTextModel has no projection: base decides

T5_BIAS = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"  # [buckets, heads]
T5_DIMS = {
    "vocab_size": ("shared.weight", 0),
    "d_model": ("shared.weight", 1),
    "d_ff": ("encoder.block.0.layer.1.DenseReluDense.wi_0.weight", 0),
    "relative_attention_num_buckets": (T5_BIAS, 0),
    "num_heads": (T5_BIAS, 1),
    "inner_dim": ("encoder.block.0.layer.0.SelfAttention.q.weight", 0),  # num_heads * d_kv; not a key
}
T5_LAYER = re.compile(r"encoder\.block\.(\d+)\.")


def clip_original_name(name: str) -> str:
    return name if name.startswith(CLIP_TOP_LEVEL) else "text_model." + name


def read_dims(shapes: dict[str, tuple[int, ...]], dims: dict[str, tuple[str, int]], kind: str,
              optional: Iterable[str] = ()) -> dict[str, int]:
    """{key: shapes[name][dim]} for each `key: (name, dim)`; an absent tensor is an error unless
    its key is `optional` (then the key is left out)."""
    out = {}
    for key, (name, dim) in dims.items():
        if name in shapes:
            out[key] = shapes[name][dim]
        elif key not in optional:
            raise CkptError(f"{kind} layout: no {name!r} to read {key} from")
    return out


def layer_indices(names: Iterable[str], pattern: re.Pattern) -> list[int]:
    """The sorted distinct block numbers that `pattern` (group 1) finds at the start of names."""
    return sorted({int(m.group(1)) for n in names if (m := pattern.match(n))})


def head_count(hidden: int, head_dim, kind: str) -> int:
    """Heads of a given width; a width they do not divide is an error."""
    if not isinstance(head_dim, int) or head_dim <= 0:
        raise CkptError(f"{kind} layout: attention_head_dim {head_dim!r} is not a positive integer")
    if hidden % head_dim:
        raise CkptError(f"{kind} layout: width {hidden} is not a whole number of {head_dim}-wide heads")
    return hidden // head_dim


def clip_config(shapes: dict[str, tuple[int, ...]], base: dict, dims: dict[str, tuple[str, int]],
                layer: re.Pattern, kind: str) -> dict:
    """A CLIPTextConfig from shapes, for both CLIP layouts (they differ only in names)."""
    config = read_dims(shapes, dims, kind, CLIP_OPTIONAL)
    config["num_hidden_layers"] = len(layer_indices(shapes, layer))
    heads = base.get("num_attention_heads")
    if isinstance(heads, int) and heads > 0 and config["hidden_size"] % heads:
        raise CkptError(f"{kind} layout: width {config['hidden_size']} does not split into {heads} heads")
    return {**base, **config}


def clip_state_shapes(config: dict, with_projection: bool) -> dict[str, tuple[int, ...]]:
    """The state-dict names (`text_model.` form), in order, and shapes of transformers' CLIPTextModel
    (`with_projection`: CLIPTextModelWithProjection) at `config`, without importing transformers or
    building the model: importing it and building a meta model costs ~2.5 s, most of a comfy split
    of SDXL's planning. tests/convert/test_config_text_mmdit.py checks these against the real class."""
    h, inner = config["hidden_size"], config["intermediate_size"]
    t = "text_model."
    out = {t + "embeddings.token_embedding.weight": (config["vocab_size"], h),
           t + "embeddings.position_embedding.weight": (config["max_position_embeddings"], h)}
    for i in range(config["num_hidden_layers"]):
        layer = f"{t}encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            out[f"{layer}self_attn.{proj}.weight"], out[f"{layer}self_attn.{proj}.bias"] = (h, h), (h,)
        out[f"{layer}layer_norm1.weight"], out[f"{layer}layer_norm1.bias"] = (h,), (h,)
        out[f"{layer}mlp.fc1.weight"], out[f"{layer}mlp.fc1.bias"] = (inner, h), (inner,)
        out[f"{layer}mlp.fc2.weight"], out[f"{layer}mlp.fc2.bias"] = (h, inner), (h,)
        out[f"{layer}layer_norm2.weight"], out[f"{layer}layer_norm2.bias"] = (h,), (h,)
    out[t + "final_layer_norm.weight"], out[t + "final_layer_norm.bias"] = (h,), (h,)
    if with_projection:
        out["text_projection.weight"] = (config["projection_dim"], h)
    return out


class HFClip:
    kind = "hf_clip"
    shape_keys = CLIP_SHAPE_KEYS
    undetermined = CLIP_UNDETERMINED

    def placeholders(self, shapes: dict[str, tuple[int, ...]]) -> dict:
        """Stand-ins for `undetermined` that give the right names and shapes whatever the real values
        are (one head): only for reading names and shapes (convert/configs.py, not strict)."""
        return CLIP_PLACEHOLDERS

    def to_original(self, shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, Expr]:
        return {clip_original_name(n): src(n) for n in shapes}

    def to_diffusers(self, state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
        return {clip_original_name(n): t for n, t in state_dict.items()}

    def config_from_original(self, shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
        """The config of a component from its original-layout (prefix-stripped) shapes. `base` is the
        resolved config (convert/configs.py): used only for what shapes cannot tell (heads, hidden_act,
        token ids, projection_dim when there is no text_projection)."""
        shapes = {clip_original_name(n): s for n, s in shapes.items()}  # also transformers-5 names
        return clip_config(shapes, base, HF_CLIP_DIMS, HF_CLIP_LAYER, self.kind)


class HFT5:
    kind = "hf_t5"
    shape_keys = ("vocab_size", "d_model", "d_ff", "relative_attention_num_buckets", "num_heads", "d_kv", "num_layers")
    undetermined = {"feed_forward_proj": "the feed-forward activation is not in the weights (gated-gelu in T5 v1.1)",
                    "relative_attention_max_distance": "the relative-position range is not in the weights"}

    def placeholders(self, shapes: dict[str, tuple[int, ...]]) -> dict:
        """Stand-ins for `undetermined` that give the right names and shapes whatever the real values
        are (one head): only for reading names and shapes (convert/configs.py, not strict)."""
        gated = any(".DenseReluDense.wi_0." in n for n in shapes)
        return {"feed_forward_proj": "gated-gelu" if gated else "relu", "relative_attention_max_distance": 128}
    tied = frozenset({T5_TIED_COPY})  # diffusers-side names that to_original leaves out on purpose

    def to_original(self, shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, Expr]:
        return {n: src(n) for n in shapes if n != T5_TIED_COPY}

    def to_diffusers(self, state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
        out = dict(state_dict)
        if "shared.weight" not in out and T5_TIED_COPY in out:
            out["shared.weight"] = out[T5_TIED_COPY]
        out.pop(T5_TIED_COPY, None)
        return out

    def config_from_original(self, shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
        """The config of a component from its original-layout (prefix-stripped) shapes. `base` is the
        resolved config (convert/configs.py): used only for what shapes cannot tell (activation,
        epsilon, relative_attention_max_distance, ...)."""
        if "shared.weight" not in shapes and T5_TIED_COPY in shapes:
            shapes = {**shapes, "shared.weight": shapes[T5_TIED_COPY]}
        config = read_dims(shapes, T5_DIMS, self.kind)
        config["d_kv"] = config.pop("inner_dim") // config["num_heads"]
        config["num_layers"] = len(layer_indices(shapes, T5_LAYER))
        return {**base, **config}


register(HFClip())
register(HFT5())
