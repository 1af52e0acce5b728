"""LLM text encoders (Qwen2.5-VL, Qwen3, Llama-3.1, Mistral-Small-3.x, Gemma-2) in llama.cpp's
names, which is what ComfyUI-GGUF's text-encoder loader reads back.

Names: the text tower's transformers names (any of the prefixes transformers and ComfyUI use) are
brought to the `model.`-prefixed form llama.cpp's converter reads, then named by gguf-py's own
tensor map (`gguf.get_tensor_name_map`), as convert_hf_to_gguf.py does. ComfyUI-GGUF maps them
back with LLAMA_SD_MAP (city96/ComfyUI-GGUF@795e45156ece99afbc3efef911e63fcb46e6a20d loader.py),
a sequence of `str.replace` calls, which `to_hf` reproduces; every name we write is checked to
come back exactly that way.

Architectures: ComfyUI-GGUF main's TXT_ARCH_LIST is {t5, t5encoder, llama, qwen2vl, qwen3, qwen3vl}.
Llama-3.1 and Mistral-Small are written as "llama" (ComfyUI-GGUF main rejects "mistral3") with
llama.cpp's q/k permute (`LlamaModel.permute`); the loader undoes it with `llama_permute(sd, 32, 8)`,
head counts hard-coded, so a model whose heads are not 32/8 is refused, never written to be
un-permuted wrongly. Gemma-2 has no loader on ComfyUI-GGUF main (only the unmerged `gemma_tenc`
branch): it has no architecture here, and quantize keeps it as safetensors.
"""

from __future__ import annotations

import numpy as np
import torch

from ckptkit.engine import expr
from ckptkit.errors import CkptError

# ComfyUI-GGUF main loader.py's LLAMA_SD_MAP, verbatim and in its order (the order matters:
# "attn_norm" before "attn_q", "attn_q_norm." before "attn_q").
LLAMA_SD_MAP = (
    ("blk.", "model.layers."), ("attn_norm", "input_layernorm"), ("attn_q_norm.", "self_attn.q_norm."),
    ("attn_k_norm.", "self_attn.k_norm."), ("attn_v_norm.", "self_attn.v_norm."), ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"),
    ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj"), ("ffn_gate", "mlp.gate_proj"),
    ("ffn_norm", "post_attention_layernorm"), ("token_embd", "model.embed_tokens"), ("output_norm", "model.norm"),
    ("output.weight", "lm_head.weight"),
)

# Component name -> (general.architecture, gguf-py MODEL_ARCH member, llama.cpp q/k permute).
# gemma2: None, no client loads it from GGUF (see the module docstring).
ARCHS = {
    "qwen25vl": ("qwen2vl", "QWEN2VL", False),
    "qwen3": ("qwen3", "QWEN3", False),
    "llama": ("llama", "LLAMA", True),
    "mistral3": ("llama", "LLAMA", True),  # "mistral3" is newer llama.cpp's, which ComfyUI-GGUF main refuses
    "gemma2": None,
}
READ_BACK_ARCHS = frozenset({"llama", "qwen2vl", "qwen3", "qwen3vl"})  # LLAMA_SD_MAP archs of the loader
COMFY_HEADS = (32, 8)  # llama_permute(sd, 32, 8): "L3 / Mistral"
# token_embd shapes for which ComfyUI-GGUF's arch-llama loader rebuilds Mistral's tekken tokenizer from
# the file's tokenizer.ggml.* metadata (gguf_tekken_tokenizer_loader), raising NotImplementedError
# ("Unknown model, can't set tokenizer!") when it is not there: quantize writes it only from the model's
# own tokenizer (llm_tokenizer.py, --tokenizer), and keeps such an encoder as safetensors without one
COMFY_TEKKEN_SHAPES = frozenset({(131072, 5120)})

# Where the text tower sits in the files transformers and ComfyUI write, longest first:
# transformers-5 state dicts of the *ForConditionalGeneration classes, their save_pretrained (legacy)
# names, *ForCausalLM / ComfyUI files, and bare *Model saves (diffusers' Z-Image / Lumina 2 folders).
TEXT_PREFIXES = ("model.language_model.", "language_model.model.", "model.", "")
LM_HEADS = ("lm_head.weight", "language_model.lm_head.weight")
# Towers that are no part of the LLM GGUF: Qwen2.5-VL's vision (ComfyUI-GGUF reads it from a sibling
# mmproj GGUF), Mistral-3's vision and projector (llama.cpp leaves them out of the text model too).
VISION_PREFIXES = ("visual.", "model.visual.", "vision_tower.", "model.vision_tower.",
                   "multi_modal_projector.", "model.multi_modal_projector.")
TOWER_PARTS = ("layers.", "embed_tokens.", "norm.")


def text_prefix(names) -> str:
    """The prefix the text tower's layers sit under in these names."""
    names = list(names)
    for p in TEXT_PREFIXES:
        if any(n.startswith(p + "layers.") for n in names):
            return p
    raise CkptError("no LLM text tower (`layers.N.` under any known prefix) in these names")


def is_vision(name: str) -> bool:
    return name.startswith(VISION_PREFIXES)


def to_hf(name: str) -> str:
    """A llama.cpp name as ComfyUI-GGUF's loader renames it (LLAMA_SD_MAP, in order)."""
    for llama, hf in LLAMA_SD_MAP:
        name = name.replace(llama, hf)
    return name


def canonical(name: str, prefix: str) -> str | None:
    """A text-tower name in the `model.`-prefixed form llama.cpp reads; None when not the tower's."""
    if name in LM_HEADS:
        return "lm_head.weight"
    if name.startswith(prefix) and name[len(prefix):].startswith(TOWER_PARTS):
        return "model." + name[len(prefix):]
    return None


def from_canonical(name: str, prefix: str) -> str:
    """The inverse of `canonical` for a file whose tower sat under `prefix`."""
    if name == "lm_head.weight":
        return "language_model.lm_head.weight" if prefix == "language_model.model." else name
    if name.startswith("model."):
        return prefix + name[len("model."):]
    return name


_MAPS: dict = {}


def _tensor_map(gguf_arch: str, n_blocks: int):
    import gguf

    key = (gguf_arch, n_blocks)
    if key not in _MAPS:
        _MAPS[key] = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, gguf_arch), n_blocks)
    return _MAPS[key]


def to_llama(component: str, name: str, prefix: str, n_blocks: int) -> str:
    """A text-tower tensor's llama.cpp name, by gguf-py's tensor map for the component's arch;
    checked to come back as the canonical name through ComfyUI-GGUF's LLAMA_SD_MAP."""
    arch = ARCHS.get(component)
    if arch is None:
        raise CkptError(f"{component}: no GGUF architecture a text-encoder loader takes")
    hf = canonical(name, prefix)
    if hf is None:
        raise ValueError(f"LLM tensor {name!r} is not part of the text tower")
    out = _tensor_map(arch[1], n_blocks).get_name(hf, try_suffixes=(".weight", ".bias"))
    if out is None or to_hf(out) != hf:
        raise ValueError(f"LLM tensor {name!r} has no llama.cpp name ComfyUI-GGUF reads back")
    return out


def n_blocks(names, prefix: str) -> int:
    from ckptkit.convert.layouts import num_blocks

    return num_blocks(names, prefix + "layers.")


# --- llama.cpp's q/k permute (convert_hf_to_gguf.py LlamaModel.permute) and its inverse -------------

def permute(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF rotary layout -> llama.cpp's interleaved one (rows of each head's two halves interleaved)."""
    return t.reshape(n_head, 2, t.shape[0] // n_head // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)


def unpermute(t, n_head: int):
    """ComfyUI-GGUF's llama_permute for one tensor: `x.reshape(h, x.shape[0]//h//2, 2, *x.shape[1:])
    .swapaxes(1, 2).reshape(x.shape)`; works on torch tensors and numpy arrays (rows of stored bytes)."""
    return t.reshape(n_head, t.shape[0] // n_head // 2, 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)


expr.register("llama_permute", lambda t, n: permute(t, n), lambda shape, n: tuple(shape))


def permuted_heads(name: str) -> int | None:
    """The head count llama.cpp permutes a (canonical or llama.cpp) q/k tensor with under arch llama."""
    if ".attn_q." in name or name.endswith("self_attn.q_proj.weight") or name.endswith("self_attn.q_proj.bias"):
        return COMFY_HEADS[0]
    if ".attn_k." in name or name.endswith("self_attn.k_proj.weight") or name.endswith("self_attn.k_proj.bias"):
        return COMFY_HEADS[1]
    return None


def check_comfy_heads(component: str, q_rows: int, k_rows: int, declared: tuple[int | None, int | None]) -> None:
    """Arch "llama" is un-permuted by ComfyUI-GGUF as 32 query / 8 key-value heads whatever the
    file says: refuse a model whose heads are not that (declared in its config, or impossible by
    its q/k shapes), in one line."""
    heads, kv = declared
    want_q, want_kv = COMFY_HEADS
    if (heads is not None and heads != want_q) or (kv is not None and kv != want_kv):
        raise CkptError(f"{component}: {heads} query / {kv} key-value heads; ComfyUI-GGUF un-permutes arch 'llama' "
                        f"q/k as {want_q}/{want_kv} heads (llama_permute(sd, 32, 8)), so this model cannot be written "
                        "as a llama GGUF it reads correctly: keep it as safetensors")
    if q_rows % (2 * want_q) or k_rows % (2 * want_kv) or q_rows // want_q != k_rows // want_kv:
        raise CkptError(f"{component}: q/k projections of {q_rows}/{k_rows} rows are not {want_q}/{want_kv} heads of "
                        f"one even width; ComfyUI-GGUF un-permutes arch 'llama' q/k as {want_q}/{want_kv} heads "
                        "(llama_permute(sd, 32, 8)), so this model cannot be written as a llama GGUF it reads "
                        "correctly: keep it as safetensors")


def unpermute_rows(raw: np.ndarray, rows: int, n_head: int) -> np.ndarray:
    """Stored bytes of a permuted tensor with its rows put back in HF order (each row is whole
    blocks of any ggml type, so this is exact for quantized data too)."""
    return np.ascontiguousarray(unpermute(raw.reshape(rows, -1), n_head)).reshape(-1)
