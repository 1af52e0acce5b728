"""LLM text encoders (Qwen2.5-VL, Qwen3, Gemma-2, Llama-3.1, Mistral-Small-3.x) in transformers'
own names, kept as they are: the file's names are the original names and the class's names alike
(whichever prefix the file uses: `model.`, `model.language_model.`, `language_model.model.` or none).

The config rule reads what the shapes decide: vocab_size, hidden_size, intermediate_size,
num_hidden_layers, and the key/value width (num_key_value_heads x head_dim). Head counts are in
the shapes only where the model has per-head q/k norms (Qwen3: q_norm is head_dim wide); elsewhere
they, the rope parameters and the norm epsilon are `undetermined` and come from a config
(`--config`, or the one a file carries), never guessed.
"""

from __future__ import annotations

import torch

from ckptkit.convert.layouts import num_blocks, register
from ckptkit.engine.expr import Expr, src

UNDETERMINED = {
    "num_attention_heads": "head count: q/k/v are [heads x head_dim, hidden] whatever the split "
                           "(only per-head q/k norms, as Qwen3's, show head_dim)",
    "num_key_value_heads": "key/value head count: k/v rows are kv_heads x head_dim whatever the split",
    "head_dim": "the per-head width is not in the weights without per-head q/k norms",
    "rope_parameters": "rope theta and scaling are not in the weights",
    "rms_norm_eps": "the norm epsilon is not in the weights",
}
_LAYER = "layers.0."


def _text_prefix(shapes) -> str:
    from ckptkit.quant.llm_names import text_prefix

    return text_prefix(shapes)


class HFLLM:
    kind = "hf_llm"
    shape_keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")
    undetermined = UNDETERMINED

    def placeholders(self, shapes: dict[str, tuple[int, ...]]) -> dict:
        """Stand-ins for what nothing gave (names and shapes do not depend on them): only for reading
        names and shapes (convert/configs.py, not strict)."""
        return {"num_attention_heads": None, "num_key_value_heads": None, "head_dim": None,
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "rms_norm_eps": 1e-6}

    def determined(self, shapes: dict[str, tuple[int, ...]]) -> set[str]:
        """The `undetermined` keys these shapes do decide: the head counts, where per-head q/k norms
        give head_dim."""
        p = _text_prefix(shapes)
        return {"num_attention_heads", "num_key_value_heads", "head_dim"} \
            if p + _LAYER + "self_attn.q_norm.weight" in shapes else set()

    def to_original(self, shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, Expr]:
        return {n: src(n) for n in shapes}

    def to_diffusers(self, state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
        return dict(state_dict)

    def config_from_original(self, shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
        """The text tower's config from its shapes; `base` (the resolved config) for the rest."""
        p = _text_prefix(shapes)
        layer = p + _LAYER
        embed = shapes[p + "embed_tokens.weight"]
        config = {"vocab_size": embed[0], "hidden_size": embed[1],
                  "intermediate_size": shapes[layer + "mlp.gate_proj.weight"][0],
                  "num_hidden_layers": num_blocks(shapes, p + "layers.")}
        q_rows, kv_rows = shapes[layer + "self_attn.q_proj.weight"][0], shapes[layer + "self_attn.k_proj.weight"][0]
        q_norm = shapes.get(layer + "self_attn.q_norm.weight")
        if q_norm is not None:  # per-head norms: their width is head_dim
            head_dim = q_norm[0]
            config.update(head_dim=head_dim, num_attention_heads=q_rows // head_dim,
                          num_key_value_heads=kv_rows // head_dim)
        else:
            heads, kv = base.get("num_attention_heads"), base.get("num_key_value_heads")
            head_dim = base.get("head_dim") or (q_rows // heads if isinstance(heads, int) and heads > 0 else None)
            if isinstance(heads, int) and heads > 0 and isinstance(head_dim, int) and head_dim > 0:
                if q_rows != heads * head_dim or (isinstance(kv, int) and kv > 0 and kv_rows != kv * head_dim):
                    raise ValueError(f"q/k rows {q_rows}/{kv_rows} do not fit {heads}/{kv} heads of {head_dim}")
            config.update({k: base.get(k) for k in ("num_attention_heads", "num_key_value_heads", "head_dim")})
        config.update({k: base.get(k) for k in ("rope_parameters", "rms_norm_eps")})
        return {**base, **config}

    def expected_shapes(self, shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, tuple[int, ...]]:
        """The tensors such a text tower has at this config, under the file's own prefix, without
        building the class (its state-dict names depend on the transformers version; these files'
        on who saved them): every layer as layer 0 is (its optional biases, q/k norms and Gemma-2's
        extra norms), each sized by the config. A vision tower or lm_head beside it is taken as it is."""
        from ckptkit.quant.llm_names import is_vision

        p = _text_prefix(shapes)
        h, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
        first = p + _LAYER
        q_rows, kv_rows = shapes[first + "self_attn.q_proj.weight"][0], shapes[first + "self_attn.k_proj.weight"][0]
        layer = {"self_attn.q_proj.weight": (q_rows, h), "self_attn.k_proj.weight": (kv_rows, h),
                 "self_attn.v_proj.weight": (kv_rows, h), "self_attn.o_proj.weight": (h, q_rows),
                 "mlp.gate_proj.weight": (inter, h), "mlp.up_proj.weight": (inter, h), "mlp.down_proj.weight": (h, inter),
                 "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,)}
        head_dim = config.get("head_dim") or (shapes.get(first + "self_attn.q_norm.weight") or (None,))[0]
        optional = {"self_attn.q_proj.bias": (q_rows,), "self_attn.k_proj.bias": (kv_rows,),
                    "self_attn.v_proj.bias": (kv_rows,), "self_attn.q_norm.weight": (head_dim,),
                    "self_attn.k_norm.weight": (head_dim,), "pre_feedforward_layernorm.weight": (h,),
                    "post_feedforward_layernorm.weight": (h,)}
        layer.update({k: s for k, s in optional.items() if first + k in shapes})
        out = {p + "embed_tokens.weight": (vocab, h)}
        for i in range(config["num_hidden_layers"]):
            out.update({f"{p}layers.{i}.{k}": s for k, s in layer.items()})
        out[p + "norm.weight"] = (h,)
        for head in ("lm_head.weight", "language_model.lm_head.weight"):
            if head in shapes:
                out[head] = (vocab, h)
        out.update({n: tuple(s) for n, s in shapes.items() if is_vision(n)})
        return out


register(HFLLM())
