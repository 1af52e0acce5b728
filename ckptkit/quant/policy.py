"""Quantization policy: per component a requested type, then per tensor a decision, always on
the FINAL tensor names (after every rename and split of the layout conversion), so a file gives
the same types whatever format it came in (stable-diffusion.cpp #605 keyed its rules by names
before the OpenCLIP split, and SDXL's CLIP silently stayed F32).

Order of the per-tensor decision:
  1. tensors the format cannot quantize (1-D, <= 1024 elements, not 2-D after the conv reshape)
  2. user rules (`--rule REGEX=TYPE`, first match wins)
  3. high-precision layers: biases, embeddings, the family's input/output/time/guidance layers
  4. the mix: attention-v / fused qkv and FFN-down weights up-typed for _M/_L requests
  5. the requested base type
  then a row length that does not divide into the type's blocks falls back (reported).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ckptkit.errors import CkptError
from ckptkit.families.spec import ComponentSpec
from ckptkit.quant.types import PLAIN, Request, fallback_for, fits, parse_request

SMALL = 1024  # tensors this small stay F32 (ComfyUI-GGUF's QUANTIZATION_THRESHOLD)
RESHAPE_ROW = 256  # SD1/SDXL conv weights are stored as (n/256, 256) rows (ComfyUI-GGUF)

# Sensitive weights of each network kind, in the names the GGUF files use.
ATTN_V = {
    "ldm_unet": r"\.attn[12]\.to_v\.weight$",
    "mmdit": r"\.attn2?\.qkv\.weight$",
    "flux": r"(_attn\.qkv|single_blocks\.\d+\.linear1)\.weight$",
    "sana": r"(\.attn\.qkv|\.cross_attn\.kv_linear)\.weight$",
    "hf_clip": r"self_attn\.v_proj\.weight$",
    "open_clip": r"self_attn\.v_proj\.weight$",  # quantized in transformers names
    "hf_t5": r"\.attn_v\.weight$",  # llama.cpp names
}
FFN_DOWN = {
    "ldm_unet": r"\.ff\.net\.2\.weight$",
    "mmdit": r"\.mlp\.fc2\.weight$",
    "flux": r"(_mlp\.2|single_blocks\.\d+\.linear2)\.weight$",
    "sana": r"\.mlp\.point_conv\.conv\.weight$",
    "hf_clip": r"mlp\.fc2\.weight$",
    "open_clip": r"mlp\.fc2\.weight$",
    "hf_t5": r"\.ffn_down\.weight$",
}


@dataclass
class Policy:
    """What the user asked for. `components` maps a component name to a request name."""

    diffusion_model: str | None = None  # --type
    components: dict[str, str] = field(default_factory=dict)  # --component NAME=TYPE
    rules: list[tuple[str, str]] = field(default_factory=list)  # --rule REGEX=TYPE
    force_vae: bool = False  # allow an SDXL VAE below its stored fp32/bf16

    def request_for(self, comp: ComponentSpec) -> Request | None:
        name = self.components.get(comp.name)
        if name is None and comp.role == "diffusion_model":
            name = self.diffusion_model
        return parse_request(name) if name else None

    def compiled_rules(self) -> list[tuple[re.Pattern, str]]:
        out = []
        for pattern, type_name in self.rules:
            try:
                out.append((re.compile(pattern), parse_request(type_name).base))
            except re.error as exc:
                raise CkptError(f"--rule {pattern!r}: not a valid regex ({exc})") from None
        return out


def load_policy_file(path: str | Path, base: Policy | None = None) -> Policy:
    """A TOML policy: `type = "q4_k_m"`, `[components] clip_l = "q8_0"`,
    `[[rule]] pattern = "..." type = "f16"`. Command-line options given too take precedence."""
    try:
        data = tomllib.loads(Path(path).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CkptError(f"{path}: not a readable TOML policy ({exc})") from None
    policy = base or Policy()
    unknown = set(data) - {"type", "components", "rule", "force_vae"}
    if unknown:
        raise CkptError(f"{path}: unknown keys {sorted(unknown)}")
    policy.diffusion_model = policy.diffusion_model or data.get("type")
    policy.components = {**dict(data.get("components", {})), **policy.components}
    policy.rules = policy.rules + [(r["pattern"], r["type"]) for r in data.get("rule", [])]
    policy.force_vae = policy.force_vae or bool(data.get("force_vae", False))
    return policy


@dataclass(frozen=True)
class Decision:
    type: str  # ggml type name
    reason: str  # why: "requested", "1-D", "high precision: time_embed.", "fallback: row 320 % 256", ...
    stored_shape: tuple[int, ...]  # shape as stored (the conv reshape changes it)
    reshaped: bool = False

    @property
    def quantized(self) -> bool:
        return self.type not in PLAIN


def keep_type(src_dtype: str) -> str:
    """High-precision layers keep 16-bit storage as they came (bf16 stays bf16; no overflow risk),
    and fp32 ones are stored as F16."""
    return src_dtype if src_dtype in ("F16", "BF16") else "F16"


def decide(name: str, shape: tuple[int, ...], src_dtype: str, comp: ComponentSpec, request: Request,
           rules: list[tuple[re.Pattern, str]], conv_reshape: bool) -> Decision:
    numel = 1
    for d in shape:
        numel *= d
    if not request.quantized:
        if len(shape) <= 1 or numel <= SMALL:
            return Decision("F32", "1-D or small", shape)
        return Decision(request.base, "requested", shape)
    stored, reshaped = shape, False
    if len(shape) > 2 and conv_reshape and numel % RESHAPE_ROW == 0 and shape[-1] % RESHAPE_ROW:
        stored, reshaped = (numel // RESHAPE_ROW, RESHAPE_ROW), True
    if len(shape) <= 1 or numel <= SMALL:
        return Decision("F32", "1-D or <= 1024 elements", shape)
    if len(stored) != 2:
        return Decision(keep_type(src_dtype), f"{len(shape)}-D, not quantizable as rows", shape)
    for pattern, type_name in rules:
        if pattern.search(name):
            return _fit(Decision(type_name, f"rule {pattern.pattern}", stored, reshaped), f"rule {pattern.pattern}")
    if name.endswith(".bias"):
        return Decision("F32", "bias", shape)
    if "embedding" in name or "token_embd" in name:
        return Decision(keep_type(src_dtype), "embedding", shape)
    for prefix in comp.high_precision:
        if name.startswith(prefix):
            return Decision(keep_type(src_dtype), f"high precision: {prefix or 'whole component'}", shape)
    type_name, reason = request.base, "requested"
    if request.attn_v and (p := ATTN_V.get(comp.layout)) and re.search(p, name):
        type_name, reason = request.attn_v, f"{request.name}: attention v/qkv up-typed"
    elif request.ffn_down and (p := FFN_DOWN.get(comp.layout)) and re.search(p, name):
        type_name, reason = request.ffn_down, f"{request.name}: FFN down up-typed"
    return _fit(Decision(type_name, reason, stored, reshaped), reason)


def _fit(d: Decision, reason: str) -> Decision:
    if d.type in PLAIN or fits(d.type, d.stored_shape):
        return d
    fallback = fallback_for(d.type, d.stored_shape)
    return Decision(fallback, f"{reason}; fallback {d.type}->{fallback}: row of {d.stored_shape[-1]}",
                    d.stored_shape, d.reshaped)


def check_component_request(comp: ComponentSpec, request: Request, src_dtypes: set[str], force_vae: bool) -> None:
    """VAEs are never quantized, and an fp32/bf16 VAE (SDXL's overflows in fp16) stays so unless forced."""
    if comp.role != "vae":
        return
    if request.quantized:
        raise CkptError(f"{comp.name}: a VAE is never quantized below fp16 (asked {request.name})")
    if request.base == "F16" and src_dtypes & {"F32", "BF16"} and not force_vae:
        raise CkptError(f"{comp.name}: this VAE is stored in {'/'.join(sorted(src_dtypes))}; SDXL-class VAEs "
                        "overflow in fp16 (NaN/black images). Pass --force-vae to convert anyway")
