"""The GGUF types a user can ask for: plain types, single quant types and llama.cpp-style mixes.

A request names a base type and, for the `_M`/`_L` mixes, the types that attention-value / fused
qkv weights and FFN-down weights are raised to (these are the most sensitive to quantization).
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf

from ckptkit.errors import CkptError


@dataclass(frozen=True)
class Request:
    name: str  # what the user typed, normalised: "q4_k_m"
    base: str  # ggml type name for ordinary weights: "Q4_K"
    attn_v: str | None = None  # attention v weights (and fused qkv where policy.QKV names none)
    ffn_down: str | None = None  # FFN down-projection weights
    file_type: int = gguf.LlamaFileType.GUESSED
    # the first and last block of a family that names its `edge_blocks` (Qwen-Image: ComfyUI-GGUF's
    # lcpp.patch raises transformer_blocks.0. and .59.), where the mix leaves them at the base type
    edge: str | None = None
    # fused q/k/v weights of the families policy.QKV names (lcpp.patch: Q3_K_M/L -> Q4_K, Q4_K_M -> Q5_K,
    # Q5_K_M -> Q6_K; no other request raises them)
    qkv: str | None = None

    @property
    def quantized(self) -> bool:
        return self.base not in PLAIN


PLAIN = ("F32", "F16", "BF16")
LFT = gguf.LlamaFileType
REQUESTS: dict[str, Request] = {r.name: r for r in (
    Request("f32", "F32", file_type=LFT.ALL_F32),
    Request("f16", "F16", file_type=LFT.MOSTLY_F16),
    Request("bf16", "BF16", file_type=LFT.MOSTLY_BF16),
    Request("q8_0", "Q8_0", file_type=LFT.MOSTLY_Q8_0),
    Request("q5_1", "Q5_1", file_type=LFT.MOSTLY_Q5_1),
    Request("q5_0", "Q5_0", file_type=LFT.MOSTLY_Q5_0),
    Request("q4_1", "Q4_1", file_type=LFT.MOSTLY_Q4_1),
    Request("q4_0", "Q4_0", file_type=LFT.MOSTLY_Q4_0),
    Request("q6_k", "Q6_K", file_type=LFT.MOSTLY_Q6_K),
    Request("q5_k_m", "Q5_K", "Q6_K", "Q6_K", LFT.MOSTLY_Q5_K_M, edge="Q6_K", qkv="Q6_K"),
    Request("q5_k_s", "Q5_K", file_type=LFT.MOSTLY_Q5_K_S),
    Request("q4_k_m", "Q4_K", "Q6_K", "Q6_K", LFT.MOSTLY_Q4_K_M, edge="Q5_K", qkv="Q5_K"),
    Request("q4_k_s", "Q4_K", file_type=LFT.MOSTLY_Q4_K_S),
    Request("q3_k_l", "Q3_K", "Q5_K", "Q5_K", LFT.MOSTLY_Q3_K_L, edge="Q4_K", qkv="Q4_K"),
    Request("q3_k_m", "Q3_K", "Q5_K", "Q4_K", LFT.MOSTLY_Q3_K_M, edge="Q4_K", qkv="Q4_K"),
    Request("q3_k_s", "Q3_K", file_type=LFT.MOSTLY_Q3_K_S, edge="Q4_K"),
    Request("q2_k", "Q2_K", "Q4_K", "Q3_K", LFT.MOSTLY_Q2_K, edge="Q4_K"),
    # Q2_K throughout (stable-diffusion.cpp's --type q2_K; q5_k_s .. q3_k_s are its q5_K .. q3_K)
    Request("q2_k_s", "Q2_K", file_type=LFT.MOSTLY_Q2_K_S),
)}
ALIASES = {"q4_k": "q4_k_m", "q5_k": "q5_k_m", "q3_k": "q3_k_m", "fp16": "f16", "fp32": "f32"}

# When a row does not divide into a type's blocks: llama.cpp's fallbacks, then F16.
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
            "Q4_0": "F16", "Q4_1": "F16", "Q5_0": "F16", "Q5_1": "F16", "Q8_0": "F16"}


def parse_request(text: str) -> Request:
    key = ALIASES.get(text.lower(), text.lower())
    if key not in REQUESTS:
        raise CkptError(f"unknown GGUF type {text!r}; choose one of {', '.join(REQUESTS)}")
    return REQUESTS[key]


def block_size(type_name: str) -> int:
    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][0]


def nbytes(type_name: str, shape: tuple[int, ...]) -> int:
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    n = 1
    for d in shape:
        n *= d
    return n // block * size


def fits(type_name: str, shape: tuple[int, ...]) -> bool:
    return bool(shape) and shape[-1] % block_size(type_name) == 0


def fallback_for(type_name: str, shape: tuple[int, ...]) -> str:
    """The nearest type whose blocks fit the row length."""
    t = type_name
    while not fits(t, shape):
        t = FALLBACK.get(t, "F16")
    return t
