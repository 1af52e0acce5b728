"""T5 encoder names as llama.cpp writes them (`enc.blk.N.attn_q.weight`, arch `t5encoder`), which
is what ComfyUI-GGUF's T5 loader reads back (its T5_SD_MAP maps them to transformers' names)."""

from __future__ import annotations

# llama.cpp piece -> transformers piece, in the order ComfyUI-GGUF applies them (llama -> HF).
LLAMA_TO_HF = (
    ("enc.", "encoder."), (".blk.", ".block."), ("token_embd", "shared"), ("output_norm", "final_layer_norm"),
    ("attn_q", "layer.0.SelfAttention.q"), ("attn_k", "layer.0.SelfAttention.k"),
    ("attn_v", "layer.0.SelfAttention.v"), ("attn_o", "layer.0.SelfAttention.o"),
    ("attn_norm", "layer.0.layer_norm"), ("attn_rel_b", "layer.0.SelfAttention.relative_attention_bias"),
    ("ffn_up", "layer.1.DenseReluDense.wi_1"), ("ffn_down", "layer.1.DenseReluDense.wo"),
    ("ffn_gate", "layer.1.DenseReluDense.wi_0"), ("ffn_norm", "layer.1.layer_norm"),
)

# token_embd shapes for which ComfyUI-GGUF's T5 loader (gguf_clip_loader) rebuilds UMT5's sentencepiece
# tokenizer from the file's tokenizer.ggml.* metadata (gguf_tokenizer_loader), raising NotImplementedError
# ("Unknown model, can't set tokenizer!") when it is not there: quantize writes it only from the model's
# own tokenizer (t5_tokenizer.py, --tokenizer), and keeps such an encoder as safetensors without one
COMFY_SPIECE_SHAPES = frozenset({(256384, 4096)})  # UMT5-XXL (Wan 2.1 / 2.2)


def to_hf(name: str) -> str:
    for llama, hf in LLAMA_TO_HF:
        name = name.replace(llama, hf)
    return name


def to_llama(name: str) -> str:
    """transformers' T5 name -> llama.cpp's; longest pieces first so `...SelfAttention.relative_...`
    is not taken for `...SelfAttention.` + something shorter."""
    out = name
    for llama, hf in sorted(LLAMA_TO_HF, key=lambda p: -len(p[1])):
        out = out.replace(hf, llama)
    if to_hf(out) != name:  # ComfyUI-GGUF must read back exactly the name we started from
        raise ValueError(f"T5 tensor {name!r} has no llama.cpp name")
    return out


def prefix_to_llama(prefix: str) -> str:
    """A transformers name prefix ("shared.", "encoder.final_layer_norm.") in llama.cpp's pieces,
    for matching final names; no round-trip check (a prefix need not be a whole name)."""
    out = prefix
    for llama, hf in sorted(LLAMA_TO_HF, key=lambda p: -len(p[1])):
        out = out.replace(hf, llama)
    return out
