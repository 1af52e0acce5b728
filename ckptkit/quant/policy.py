"""Quantization policy: per component a requested type, then per tensor a decision, always on
the FINAL tensor names (after every rename and split of the layout conversion), so a file gives
the same types whatever format it came in (stable-diffusion.cpp #605 keyed its rules by names
before the OpenCLIP split, and SDXL's CLIP silently stayed F32).

Order of the per-tensor decision:
  1. tensors the format cannot quantize (1-D, <= 1024 elements, not 2-D after the conv reshape)
  2. user rules (`--rule REGEX=TYPE`, first match wins)
  3. high-precision layers: biases, raw parameters (not `.weight`), embeddings, the family's
     input/output/time/guidance layers
  4. the mix: attention-v, fused qkv and FFN-down weights (and a family's first/last block) up-typed
     for _M/_L requests
  5. the requested base type
  then a row length that does not divide into the type's blocks falls back (reported).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from ckptkit.errors import CkptError
from ckptkit.families.spec import ComponentSpec
from ckptkit.quant.types import PLAIN, Request, fallback_for, fits, parse_request

SMALL = 1024  # tensors this small stay F32 (ComfyUI-GGUF's QUANTIZATION_THRESHOLD)
# more than 4 dimensions: stored whole as F32 with all its dimensions, as ComfyUI-GGUF's
# tools/fix_5d_tensors.py writes them back after quantizing (its loader reads the shape as stored)
FIVE_D = "5-D: F32 with its 5 dimensions (ComfyUI-GGUF's fix_5d_tensors.py form)"
RESHAPE_ROW = 256  # SD1/SDXL conv weights are stored as (n/256, 256) rows (ComfyUI-GGUF)

# Sensitive weights of each network kind, in the names the GGUF files use.
ATTN_V = {
    "ldm_unet": r"\.attn[12]\.to_v\.weight$",
    "mmdit": r"\.attn2?\.qkv\.weight$",
    "sana": r"(\.attn\.qkv|\.cross_attn\.kv_linear)\.weight$",
    "hf_clip": r"self_attn\.v_proj\.weight$",
    "open_clip": r"self_attn\.v_proj\.weight$",  # quantized in transformers names
    "hf_t5": r"\.attn_v\.weight$",  # llama.cpp names
    "hf_llm": r"^blk\.\d+\.attn_v\.weight$",  # llama.cpp names (LLM text encoders)
    "qwen_image": r"\.attn\.(to_v|add_v_proj)\.weight$",
    "hidream": r"\.attn1\.to_v\.weight$",  # lcpp.patch: ".to_v.weight" (the text stream's to_v_t is not)
    "auraflow": r"\.attn\.w[12]v\.weight$",
    "wan": r"\.(self|cross)_attn\.v\.weight$",  # lcpp.patch: ".v.weight"
    "ltxv": r"\.to_v\.weight$",  # lcpp.patch: ".to_v.weight" (attn1 and attn2)
    "ltx2": r"\.to_v\.weight$",  # written as arch ltxv: lcpp.patch LTXV ".to_v.weight" (every attention, audio too)
}
# Fused q/k/v weights, raised less than a v projection: ComfyUI-GGUF's lcpp.patch (img_tensor_get_type)
# takes "attn_qkv.weight", "attn.qkv.weight" and "attention.qkv.weight" from Q4_K_M to Q5_K (Request.qkv),
# a separate v projection to Q6_K, and leaves FLUX's single-block linear1 / linear2 and its `_mlp.2`
# at the base type: its published FLUX.2-dev Q4_K_M is 18.7 GB, not the 26 GB that raising those
# to Q6_K gives (docs/BENCHMARKS.md, planned GGUF sizes).
QKV = {
    "flux": r"_attn\.qkv\.weight$",
    "chroma": r"_attn\.qkv\.weight$",  # FLUX.1's names
    "flux2": r"_attn\.qkv\.weight$",
    "z_image": r"\.attention\.qkv\.weight$",
    "lumina2": r"\.attention\.qkv\.weight$",
    "hunyuan_video": r"attn_qkv\.weight$",  # lcpp.patch "attn_qkv.weight": img_/txt_attn_qkv, the refiner's self_attn_qkv
}
FFN_DOWN = {
    "ldm_unet": r"\.ff\.net\.2\.weight$",
    "mmdit": r"\.mlp\.fc2\.weight$",
    "sana": r"\.mlp\.point_conv\.conv\.weight$",
    "hf_clip": r"mlp\.fc2\.weight$",
    "open_clip": r"mlp\.fc2\.weight$",
    "hf_t5": r"\.ffn_down\.weight$",
    "hf_llm": r"^blk\.\d+\.ffn_down\.weight$",
    "qwen_image": r"\.(img|txt)_mlp\.net\.2\.weight$",
    "hidream": r"\.ff_[it]\.(shared_experts\.|experts\.\d+\.)?w2\.weight$",
    "z_image": r"\.feed_forward\.w2\.weight$",
    "lumina2": r"\.feed_forward\.w2\.weight$",
    "wan": r"\.ffn\.2\.weight$",  # lcpp.patch: ".ffn.2.weight"
    "ltxv": r"\.ff\.net\.2\.weight$",  # lcpp.patch: ".ff.net.2.weight"
    "ltx2": r"\.ff\.net\.2\.weight$",  # lcpp.patch LTXV ".ff.net.2.weight" (not audio_ff.net.2: no dot before ff)
}


@dataclass
class Policy:
    """What the user asked for. `components` maps a component name to a request name."""

    diffusion_model: str | None = None  # --type
    components: dict[str, str] = field(default_factory=dict)  # --component NAME=TYPE
    rules: list[tuple[str, str]] = field(default_factory=list)  # --rule REGEX=TYPE
    force_vae: bool = False  # allow an SDXL VAE below its stored fp32/bf16
    arch: str | None = None  # --arch: general.architecture of the GGUF files (default: the family's)
    client: str | None = None  # --client: who loads the GGUF files (quant/clients.py); None: comfy
    imatrix: str | None = None  # --imatrix ones|FILE[,FILE]: ggml's weighted search (quant/imatrix.py)
    backend: str = "gguf"  # --to: gguf | comfy | bnb | quanto (quantized safetensors, quant/layerwise.py)
    layout: str | None = None  # --layout for the safetensors backends: comfy (default) | diffusers
    tokenizer: str | None = None  # --tokenizer: an arch-llama LLM text encoder's (quant/llm_tokenizer.py)

    def request_for(self, comp: ComponentSpec, single: bool = False) -> Request | None:
        """`--component NAME=TYPE` first; `--type` applies to the diffusion model, or to the one
        component of a single-component source whatever its role."""
        name = self.components.get(comp.name)
        if name is None and (comp.role == "diffusion_model" or single):
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
    from ckptkit.formats.files import read_toml_file
    from ckptkit.formats.schema import Bool, List, Map, Obj, Str

    schema = Obj({"type": Str(), "components": Map(Str()), "force_vae": Bool(),
                  "rule": List(Obj({"pattern": Str(), "type": Str()}, required=("pattern", "type"), closed=True))})
    data = read_toml_file(path, schema, "TOML policy")
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
    fallback: str | None = None  # "Q4_K->Q5_0" when the row length forced another type

    @property
    def quantized(self) -> bool:
        return self.type not in PLAIN


# Per network kind, the family's high-precision prefixes in the names the GGUF file uses: OpenCLIP
# towers are written in transformers names, T5 in llama.cpp names (the specs list them in their own
# source names). Prefixes already in final names pass through.
HF_CLIP_HIGH_PRECISION = ("text_model.embeddings.", "text_model.final_layer_norm.", "text_projection.")
# Kept whatever their size: T5's relative attention bias (llama.cpp never quantizes `attn_rel_b`).
KEEP_PATTERNS = {"hf_t5": re.compile(r"(^|\.)attn_rel_b\.weight$"),
                 # HiDream's MoE gate is a raw nn.Parameter named like a layer weight (ComfyUI-GGUF keys_hiprec)
                 "hidream": re.compile(r"\.ff_i\.gate\.weight$"),
                 # an unknown model: norms and embeddings by the names every codebase gives them
                 "generic": re.compile(r"(^|[._])((\w+_)?(norm|layernorm|rmsnorm|groupnorm)\d*|ln(_\w+|\d*))\.weight$"
                                        r"|embed|(^|\.)wte\.|(^|\.)wpe\.")}


def final_high_precision(comp: ComponentSpec) -> tuple[str, ...]:
    if comp.layout == "open_clip":
        return HF_CLIP_HIGH_PRECISION
    if comp.layout == "hf_t5":
        from ckptkit.quant.t5_names import prefix_to_llama

        return tuple(dict.fromkeys(prefix_to_llama(p) for p in comp.high_precision))
    return comp.high_precision


def keep_type(src_dtype: str, shape: tuple[int, ...] = (), name: str = "") -> str:
    """High-precision layers keep 16-bit storage as they came (no overflow risk), and fp32 ones are
    stored as F16. BF16 stays BF16 only for 2-D layer weights: loaders treat BF16 as a block type
    they dequantize in linear layers only (diffusers' GGUFLinear), so a BF16 conv kernel or raw
    parameter would reach the model as bytes; those become F32 (lossless from bf16)."""
    if src_dtype == "BF16":
        return "BF16" if _bf16_ok(shape, name) else "F32"
    return "F16"


def _bf16_ok(shape: tuple[int, ...], name: str) -> bool:
    return len(shape) == 2 and name.endswith(".weight")


def decide(name: str, shape: tuple[int, ...], src_dtype: str, comp: ComponentSpec, request: Request,
           rules: list[tuple[re.Pattern, str]], conv_reshape: bool, edges: tuple[str, ...] = ()) -> Decision:
    """The type of one tensor, by its final name and shape (see the module docstring for the order)."""
    numel = 1
    for d in shape:
        numel *= d
    if len(shape) > 4:  # a Conv3d kernel (video patch embeddings): no ggml type holds it as rows
        return Decision("F32", FIVE_D, shape)
    if not request.quantized:
        if len(shape) <= 1 or numel <= SMALL:
            return Decision("F32", "1-D or <= 1024 elements", shape)
        if request.base == "BF16" and not _bf16_ok(shape, name):
            return Decision("F32", "BF16 only for layer weights: F32 (lossless)", shape)
        return Decision(request.base, "requested", shape)
    stored, reshaped = shape, False
    if len(shape) > 2 and conv_reshape and numel % RESHAPE_ROW == 0 and shape[-1] % RESHAPE_ROW:
        stored, reshaped = (numel // RESHAPE_ROW, RESHAPE_ROW), True
    if len(shape) <= 1 or numel <= SMALL:
        return Decision("F32", "1-D or <= 1024 elements", shape)
    if len(stored) != 2:
        return Decision(keep_type(src_dtype, shape, name), f"{len(shape)}-D, not quantizable as rows", shape)
    for pattern, type_name in rules:
        if pattern.search(name):
            reason = f"rule {pattern.pattern}"
            if type_name in PLAIN:  # a plain rule keeps the tensor's own shape (no conv reshape)
                return Decision(type_name, reason, shape)
            return _fit(Decision(type_name, reason, stored, reshaped))
    if name.endswith(".bias"):
        return Decision("F32", "bias", shape)
    if not name.endswith(".weight"):
        # a raw nn.Parameter (Sana's scale_shift_table, ...): loaders dequantize only layer weights
        # (diffusers' GGUFLinear, ComfyUI-GGUF's ops), so a quantized one would be used as raw bytes
        return Decision(keep_type(src_dtype, shape, name), "not a layer weight", shape)
    if "embedding" in name or "token_embd" in name:
        return Decision(keep_type(src_dtype, shape, name), "embedding", shape)
    keep = KEEP_PATTERNS.get(comp.layout)
    if keep is not None and keep.search(name):
        return Decision(keep_type(src_dtype, shape, name), f"high precision: {keep.pattern}", shape)
    for prefix in final_high_precision(comp):
        if name.startswith(prefix):
            return Decision(keep_type(src_dtype, shape, name), f"high precision: {prefix or 'whole component'}", shape)
    type_name, reason = mixed_type(name, comp, request, edges)
    return _fit(Decision(type_name, reason, stored, reshaped))


def mixed_type(name: str, comp: ComponentSpec, request: Request, edges: tuple[str, ...] = ()) -> tuple[str, str]:
    """(type, reason) of a layer weight by the request's mix: v projections, fused qkv, FFN down and
    the first/last block raised where the request says, else the base type."""
    for type_name, table, what in ((request.attn_v, ATTN_V, "attention v/qkv up-typed"),
                                   (request.qkv, QKV, "fused qkv up-typed"),
                                   (request.ffn_down, FFN_DOWN, "FFN down up-typed")):
        if type_name and (p := table.get(comp.layout)) and re.search(p, name):
            return type_name, f"{request.name}: {what}"
    if request.edge and name.startswith(edges):
        return request.edge, f"{request.name}: first/last block up-typed"
    return request.base, "requested"


def edge_prefixes(comp: ComponentSpec, names) -> tuple[str, ...]:
    """The first and last of the component's `edge_blocks` among `names` (final names), or ()."""
    if not comp.edge_blocks:
        return ()
    from ckptkit.convert.layouts import num_blocks

    n = num_blocks(names, comp.edge_blocks)
    return tuple(dict.fromkeys((f"{comp.edge_blocks}0.", f"{comp.edge_blocks}{n - 1}."))) if n else ()


# stable-diffusion.cpp's ModelLoader::tensor_should_be_converted (src/model.cpp): a tensor whose
# name ends or contains one of these keeps its stored type, whatever the request or a rule says.
SDCPP_KEEP_SUFFIXES = (".bias", ".scale")
SDCPP_KEEP_PARTS = ("img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.", "final_layer.",  # FLUX
                    "x_embedder.", "t_embedder.", "y_embedder.", "pos_embed", "context_embedder.",  # MMDiT
                    "time_embed.", "label_emb.", "embedding")  # UNet, and every embedding


def decide_sdcpp(name: str, shape: tuple[int, ...], src_dtype: str, comp: ComponentSpec, request: Request,
                 rules: list[tuple[re.Pattern, str]]) -> Decision:
    """stable-diffusion.cpp's convert, tensor by tensor: the first rule that matches (else the
    request, with its _M/_L mix), applied only where sd.cpp would convert: rows that divide into the
    type's blocks, and none of its excluded names. 1-D tensors are converted too (norm weights),
    and nothing falls back to another type: a tensor sd.cpp does not convert keeps its stored type.
    A tensor of more than 4 dimensions (a Conv3d kernel) is stored as sd.cpp reads one: its readers fold
    the leading dims into ggml's outermost, (O, I, kt, kh, kw) -> (O x I, kt, kh, kw) (src/model_io/
    safetensors_io.cpp; gguf_reader_ext.h for a 5-D GGUF), its Conv3d weight being ne [kw, kh, kt, I x O]."""
    folded = len(shape) > 4
    if folded:
        shape = sdcpp_folded(shape)
    d = _decide_sdcpp(name, shape, src_dtype, comp, request, rules)
    return replace(d, reshaped=True) if folded else d


def sdcpp_folded(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape of more than 4 dims as stable-diffusion.cpp folds it: the leading dims multiplied into one."""
    return (math.prod(shape[:-3]), *shape[-3:])


def _decide_sdcpp(name: str, shape: tuple[int, ...], src_dtype: str, comp: ComponentSpec, request: Request,
                  rules: list[tuple[re.Pattern, str]]) -> Decision:
    type_name, reason = request.base, "requested"
    for pattern, rule_type in rules:
        if pattern.search(name):
            type_name, reason = rule_type, f"rule {pattern.pattern}"
            break
    else:
        type_name, reason = mixed_type(name, comp, request)
    keep = src_dtype if src_dtype in PLAIN else "F32"
    if type_name not in PLAIN and not fits(type_name, shape):
        return Decision(keep, f"sd.cpp: row of {shape[-1] if shape else 0} does not divide into {type_name} blocks", shape)
    if name.endswith(SDCPP_KEEP_SUFFIXES) or any(part in name for part in SDCPP_KEEP_PARTS):
        return Decision(keep, "sd.cpp: kept (tensor_should_be_converted)", shape)
    return Decision(type_name, reason, shape)


def _fit(d: Decision) -> Decision:
    """A row length that does not divide into the type's blocks falls back to the nearest type
    whose blocks fit (llama.cpp's fallbacks, then F16). A reshaped conv has rows of 256, which
    every type fits, so only unreshaped tensors reach a plain fallback."""
    if d.type in PLAIN or fits(d.type, d.stored_shape):
        return d
    fallback = fallback_for(d.type, d.stored_shape)
    row = d.stored_shape[-1]
    return Decision(fallback, f"{d.reason}; fallback {d.type}->{fallback}: row of {row}", d.stored_shape,
                    d.reshaped, f"{d.type}->{fallback}")


def check_component_request(comp: ComponentSpec, request: Request, src_dtypes: set[str], force_vae: bool) -> None:
    """VAEs are never quantized, and an fp32/bf16 VAE (SDXL's overflows in fp16) stays so unless forced."""
    if comp.role != "vae":
        return
    if request.quantized:
        raise CkptError(f"{comp.name}: a VAE is never quantized below fp16 (asked {request.name})")
    if request.base == "F16" and src_dtypes & {"F32", "BF16"} and not force_vae:
        raise CkptError(f"{comp.name}: this VAE is stored in {'/'.join(sorted(src_dtypes))}; SDXL-class VAEs "
                        "overflow in fp16 (NaN/black images). Pass --force-vae to convert anyway")
