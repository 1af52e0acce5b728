"""Signatures of standalone component files (a CLIP-L, a T5-XXL, a VAE on their own), so that
`inspect` can name them even though they belong to no single family."""

from __future__ import annotations

from dataclasses import dataclass

from ckptkit.families.spec import ComponentSpec, Condition, Has, Lacks

# Standalone signatures that name no family component: the component of their kind.
GENERIC_COMPONENTS = {"t5": "t5xxl", "clip": "clip_l", "umt5": "pile_t5xl"}


@dataclass(frozen=True)
class ComponentSignature:
    name: str  # the component name families use ("clip_l", "vae", ...)
    layout: str  # original-side layout kind, or "diffusers:<kind>" for diffusers/transformers names
    role: str
    when: tuple[Condition, ...]
    used_by: tuple[str, ...]
    description: str
    diffusers_class: str = ""  # the transformers class whose names the file holds (LLM and UMT5 text encoders)


_HF_Q = "text_model.encoder.layers.0.self_attn.q_proj.weight"
_HF_Q_FLAT = "encoder.layers.0.self_attn.q_proj.weight"  # transformers >= 5.6 CLIPTextModel
_OC_IN = "transformer.resblocks.0.attn.in_proj_weight"
_T5_Q = "encoder.block.0.layer.0.SelfAttention.q.weight"
_UMT5_BIAS_1 = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"

SIGNATURES: tuple[ComponentSignature, ...] = (
    ComponentSignature("clip_l", "hf_clip", "text_encoder", (Has(_HF_Q, 0, 768),), ("sd1", "sdxl", "sd3", "flux"),
                       "CLIP-L text encoder (transformers layout)"),
    ComponentSignature("clip_l", "hf_clip", "text_encoder", (Has(_HF_Q_FLAT, 0, 768),), ("sd1", "sdxl", "sd3", "flux"),
                       "CLIP-L text encoder (flattened transformers>=5.6 layout)"),
    ComponentSignature("clip_g", "hf_clip", "text_encoder", (Has(_HF_Q, 0, 1280),), ("sdxl", "sd3"),
                       "OpenCLIP bigG text encoder (transformers layout)"),
    ComponentSignature("clip_h", "hf_clip", "text_encoder", (Has(_HF_Q, 0, 1024),), ("sd2",),
                       "OpenCLIP ViT-H text encoder (transformers layout)"),
    ComponentSignature("clip_g", "open_clip", "text_encoder", (Has(_OC_IN, 1, 1280),), ("sdxl", "sdxl_refiner"),
                       "OpenCLIP bigG text encoder (open_clip layout)"),
    ComponentSignature("clip_h", "open_clip", "text_encoder", (Has(_OC_IN, 1, 1024),), ("sd2",),
                       "OpenCLIP ViT-H text encoder (open_clip layout)"),
    ComponentSignature("clip", "hf_clip", "text_encoder", (Has(_HF_Q),), (), "CLIP text encoder (transformers layout)"),
    # UMT5 before T5: the same names, but a relative-position bias in every layer (a T5 has it in
    # layer 0 only), which T5EncoderModel would silently not load
    ComponentSignature("pile_t5xl", "hf_t5", "text_encoder", (Has(_UMT5_BIAS_1), Has(_T5_Q, 1, 2048)), ("auraflow",),
                       "Pile-T5-XL encoder (UMT5; AuraFlow's text encoder)", "UMT5EncoderModel"),
    ComponentSignature("umt5xxl", "hf_t5", "text_encoder", (Has(_UMT5_BIAS_1), Has(_T5_Q, 1, 4096)), ("wan",),
                       "UMT5-XXL encoder (Wan 2.1 / 2.2's text encoder)", "UMT5EncoderModel"),
    ComponentSignature("umt5", "hf_t5", "text_encoder", (Has(_UMT5_BIAS_1),), (),
                       "UMT5 encoder (a relative-position bias in every layer)", "UMT5EncoderModel"),
    ComponentSignature("t5xxl", "hf_t5", "text_encoder", (Has("encoder.block.0.layer.0.SelfAttention.q.weight", 1, 4096),),
                       ("sd3", "flux"), "T5-XXL encoder"),
    ComponentSignature("t5", "hf_t5", "text_encoder", (Has("encoder.block.0.layer.0.SelfAttention.q.weight"),), (),
                       "T5 encoder"),
    # FLUX.2's VAE by its structure (batch-norm latent statistics; 32 latent channels as released) before
    # the LDM VAEs its encoder / decoder names share
    ComponentSignature("vae", "flux2_vae", "vae",
                       (Has("bn.running_mean"), Has("encoder.quant_conv.weight"), Has("encoder.down.0.block.0.conv1.weight")),
                       ("flux2",), "FLUX.2 VAE (original layout: batch-norm latent statistics, 32 latent channels)"),
    ComponentSignature("vae", "diffusers:flux2_vae", "vae",
                       (Has("bn.running_mean"), Has("encoder.down_blocks.0.resnets.0.conv1.weight")),
                       ("flux2",), "FLUX.2 VAE (diffusers layout: AutoencoderKLFlux2)"),
    # The Wan 2.1 causal 3-D VAE (5-D conv weights, RMS-norm gammas) with 16 latent channels: Qwen-Image's
    # vae/qwen_image_vae.safetensors in Wan's names, or diffusers' AutoencoderKLQwenImage
    ComponentSignature("vae", "wan_vae", "vae",
                       (Has("encoder.downsamples.0.residual.0.gamma"), Has("decoder.conv1.weight", 1, 16)),
                       ("qwen_image", "wan"), "Wan 2.1 / Qwen-Image VAE (Wan 2.1 layout, 16 latent channels)"),
    ComponentSignature("vae", "diffusers:wan_vae", "vae",
                       (Has("encoder.down_blocks.0.norm1.gamma"), Has("decoder.conv_in.weight", 1, 16)),
                       ("qwen_image", "wan"),
                       "Wan 2.1 / Qwen-Image VAE (diffusers layout: AutoencoderKLWan / AutoencoderKLQwenImage)"),
    # The Wan 2.2 VAE (Wan2.2_VAE.pth, TI2V-5B's: 48 latent channels as released) by its nested residual
    # levels, at any width: Wan's names (vae2_2.py) or diffusers' AutoencoderKLWan(is_residual=True)
    ComponentSignature("vae", "wan_vae", "vae",
                       (Has("encoder.downsamples.0.downsamples.0.residual.0.gamma"), Has("decoder.conv1.weight")),
                       ("wan",), "Wan 2.2 VAE (Wan 2.2 layout: nested residual levels, 48 latent channels as released)"),
    ComponentSignature("vae", "diffusers:wan_vae", "vae",
                       (Has("encoder.down_blocks.0.resnets.0.norm1.gamma"), Has("decoder.conv_in.weight")),
                       ("wan",), "Wan 2.2 VAE (diffusers layout: AutoencoderKLWan with is_residual)"),
    # HunyuanVideo's causal 3-D VAE: the same names in Tencent's and diffusers' files (AutoencoderKLHunyuanVideo),
    # every conv a causal wrapper (`*.conv.conv.weight`, 5-D) and GroupNorms with weights (LTX-Video's VAE wraps
    # its convs alike but normalises without weights)
    ComponentSignature("vae", "hunyuan_video_vae", "vae",
                       (Has("encoder.down_blocks.0.resnets.0.conv1.conv.weight"), Has("encoder.conv_norm_out.weight"),
                        Has("decoder.conv_in.conv.weight")),
                       ("hunyuan_video",), "HunyuanVideo causal 3-D VAE (AutoencoderKLHunyuanVideo)"),
    # LTX-2's video VAE (AutoencoderKLLTX2Video) before LTX-Video's: the same names, and the released 2.0 VAE is
    # 0.9.5's structure without the timestep-conditioned decoder, tensor for tensor (convert/layouts/ltx2_vae.py).
    # Told apart by that: a space-to-depth first down-sampler (0.9.0's is a plain strided conv) and no
    # last_time_embedder (0.9.1 / 0.9.5 = 0.9.7 have it; 0.9.0 has none but fails the first test)
    ComponentSignature("vae", "ltx2_vae", "vae",
                       (Has("encoder.down_blocks.0.res_blocks.0.conv1.conv.weight"),
                        Has("encoder.down_blocks.1.conv.conv.weight"),
                        Has("per_channel_statistics.std-of-means"), Has("decoder.conv_in.conv.weight"),
                        Lacks("decoder.last_time_embedder.timestep_embedder.linear_1.weight")),
                       ("ltx2",), "LTX-2 video VAE (original layout: LTX-Video 0.9.5's names, no timestep-conditioned "
                                  "decoder)"),
    ComponentSignature("vae", "diffusers:ltx2_vae", "vae",
                       (Has("encoder.down_blocks.0.resnets.0.conv1.conv.weight"),
                        Has("encoder.down_blocks.0.downsamplers.0.conv.conv.weight"),
                        Has("decoder.mid_block.resnets.0.conv1.conv.weight"), Has("latents_std"),
                        Lacks("decoder.time_embedder.timestep_embedder.linear_1.weight"),
                        Lacks("encoder.conv_norm_out.weight")),
                       ("ltx2",), "LTX-2 video VAE (diffusers layout: AutoencoderKLLTX2Video)"),
    # LTX-Video 0.9.x's VAE: Lightricks' flat block lists (`res_blocks`, the per-channel latent statistics) or
    # diffusers' AutoencoderKLLTXVideo (levels, the `latents_mean` buffer); causal-conv wrappers as HunyuanVideo's,
    # no norm weights
    ComponentSignature("vae", "ltxv_vae", "vae",
                       (Has("encoder.down_blocks.0.res_blocks.0.conv1.conv.weight"),
                        Has("decoder.up_blocks.0.res_blocks.0.conv1.conv.weight"),
                        Has("per_channel_statistics.std-of-means"), Has("decoder.conv_in.conv.weight")),
                       ("ltxv",), "LTX-Video VAE (original layout)"),
    ComponentSignature("vae", "diffusers:ltxv_vae", "vae",
                       (Has("encoder.down_blocks.0.resnets.0.conv1.conv.weight"),
                        Has("decoder.mid_block.resnets.0.conv1.conv.weight"), Has("latents_std"),
                        Lacks("encoder.conv_norm_out.weight")),
                       ("ltxv",), "LTX-Video VAE (diffusers layout: AutoencoderKLLTXVideo)"),
    ComponentSignature("vae", "ldm_vae", "vae", (Has("decoder.conv_in.weight", 1, 4), Has("encoder.down.0.block.0.conv1.weight")),
                       ("sd1", "sd2", "sdxl", "sdxl_refiner"), "4-channel SD VAE (original layout)"),
    ComponentSignature("vae", "ldm_vae", "vae", (Has("decoder.conv_in.weight", 1, 16), Has("encoder.down.0.block.0.conv1.weight")),
                       ("sd3", "flux"), "16-channel SD3/FLUX.1 VAE (original layout)"),
    ComponentSignature("vae", "diffusers:ldm_vae", "vae",
                       (Has("decoder.conv_in.weight", 1, 4), Has("encoder.down_blocks.0.resnets.0.conv1.weight")),
                       ("sd1", "sd2", "sdxl", "sdxl_refiner"), "4-channel SD VAE (diffusers layout)"),
    ComponentSignature("vae", "diffusers:ldm_vae", "vae",
                       (Has("decoder.conv_in.weight", 1, 16), Has("encoder.down_blocks.0.resnets.0.conv1.weight")),
                       ("sd3", "flux"), "16-channel SD3/FLUX.1 VAE (diffusers layout)"),
)


# --- LLM text encoders (layout "hf_llm": transformers' names kept as they are) -----------------------
# Told apart by structure, at any width or depth (layer 0 under the prefix the file uses):
#   gemma2    pre_/post_feedforward_layernorm (Gemma-2: Lumina 2)
#   qwen3     per-head self_attn.q_norm, no q/k/v biases (Qwen3: Z-Image, FLUX.2 klein)
#   qwen25vl  q/k/v biases (Qwen2 layout: Qwen2.5-VL's text tower, Qwen-Image; `visual.*` may be there)
#   mistral3  the Llama layout under a *ForConditionalGeneration prefix (Mistral3ForConditionalGeneration:
#             FLUX.2 dev; its vision tower and projector may be there)
#   llama     the Llama layout (Llama-3.1: HiDream; Mistral-Small's text tower as ComfyUI ships it:
#             FLUX.2 dev): the vocabulary and width only describe which model it looks like
# Prefixes: transformers-5 state dicts of the *ForConditionalGeneration classes name the text tower
# `model.language_model.`; their save_pretrained writes the legacy `model.` (Qwen2.5-VL, vision at
# `visual.`) or `language_model.model.` (Mistral-3); *ForCausalLM and ComfyUI files use `model.`;
# a bare *Model save (diffusers' Z-Image / Lumina 2 text_encoder folders) has none.
_LLM_PREFIXES = (("model.language_model.", "model.visual."), ("language_model.model.", "vision_tower."),
                 ("model.", "visual."), ("", None))


def _llm_signatures() -> tuple[ComponentSignature, ...]:
    out = []
    for p, vision in _LLM_PREFIXES:
        layer = f"{p}layers.0."
        base = (Has(f"{p}embed_tokens.weight"), Has(f"{layer}self_attn.q_proj.weight"),
                Has(f"{layer}mlp.gate_proj.weight"), Has(f"{layer}input_layernorm.weight"))
        no_bias, no_qnorm = Lacks(f"{layer}self_attn.q_proj.bias"), Lacks(f"{layer}self_attn.q_norm.weight")
        plain_ffn = Lacks(f"{layer}pre_feedforward_layernorm.weight")
        causal = "ForCausalLM" if p == "model." else "Model"
        out.append(ComponentSignature(
            "gemma2", "hf_llm", "text_encoder",
            (*base, Has(f"{layer}pre_feedforward_layernorm.weight"), Has(f"{layer}post_feedforward_layernorm.weight"),
             no_qnorm), ("lumina2",), "Gemma-2 text model (Lumina 2's text encoder is Gemma-2-2B)", f"Gemma2{causal}"))
        out.append(ComponentSignature(
            "qwen3", "hf_llm", "text_encoder", (*base, Has(f"{layer}self_attn.q_norm.weight"), no_bias, plain_ffn),
            ("z_image", "flux2"), "Qwen3 text model (Z-Image: Qwen3-4B; FLUX.2 klein: Qwen3-4B/8B)", f"Qwen3{causal}"))
        qwen_class = "Qwen2_5_VLTextModel" if not p else "Qwen2_5_VLForConditionalGeneration"
        if vision and p != "language_model.model.":
            out.append(ComponentSignature(
                "qwen25vl", "hf_llm", "text_encoder",
                (*base, Has(f"{layer}self_attn.q_proj.bias"), no_qnorm, plain_ffn, Has(f"{vision}blocks.0.norm1.weight")),
                ("qwen_image",), "Qwen2.5-VL text and vision towers (Qwen-Image: Qwen2.5-VL-7B)", qwen_class))
        out.append(ComponentSignature(
            "qwen25vl", "hf_llm", "text_encoder", (*base, Has(f"{layer}self_attn.q_proj.bias"), no_qnorm, plain_ffn),
            ("qwen_image",), "Qwen2.5-VL text tower (Qwen2 layout: q/k/v biases; Qwen-Image: Qwen2.5-VL-7B)",
            qwen_class))
        llama = (*base, no_bias, no_qnorm, plain_ffn)
        if p in ("model.language_model.", "language_model.model."):
            out.append(ComponentSignature(
                "mistral3", "hf_llm", "text_encoder", llama, ("flux2",),
                "Mistral-3 text tower in Mistral3ForConditionalGeneration names (FLUX.2 dev: Mistral-Small-3.x-24B)",
                "Mistral3ForConditionalGeneration"))
            continue
        embed = f"{p}embed_tokens.weight"
        cls = f"Llama{causal}"
        out.append(ComponentSignature(
            "llama", "hf_llm", "text_encoder", (*llama, Has(embed, 0, 128256)), ("hidream",),
            "Llama-style text model with Llama-3's 128256-token vocabulary (HiDream: Llama-3.1-8B)", cls))
        out.append(ComponentSignature(
            "llama", "hf_llm", "text_encoder", (*llama, Has(embed, 0, 131072)), ("flux2",),
            "Llama-style text model with Mistral's 131072-token vocabulary (FLUX.2 dev: Mistral-Small-3.x-24B's "
            "text tower)", cls))
        out.append(ComponentSignature(
            "llama", "hf_llm", "text_encoder", llama, ("hidream", "flux2"),
            "Llama-style text model (HiDream: Llama-3.1-8B; FLUX.2 dev: Mistral-Small-3.x-24B)", cls))
    return tuple(out)


SIGNATURES = SIGNATURES + _llm_signatures()
LLM_COMPONENTS = frozenset({"qwen25vl", "qwen3", "gemma2", "llama", "mistral3"})


def llm_component(name: str, diffusers_class: str) -> ComponentSpec:
    """The spec of a standalone LLM text encoder: transformers' names kept (layout hf_llm), no
    released config (what the shapes do not decide comes from --config or the file's own)."""
    return ComponentSpec(name, "text_encoder", "", "hf_llm", diffusers_class, "text_encoder")


def generic_component(name: str = "model") -> ComponentSpec:
    """A file no family spec or signature knows, as one component: names kept as they are, the
    rules every family shares (quant/policy.py: 2-D+ layer weights quantized; 1-D, small, bias,
    norm and embedding tensors kept; rows that do not divide fall back). No diffusers class: it can
    be quantized, compared tensor by tensor and split by prefix, not converted or run."""
    return ComponentSpec(name, "unknown", "", "generic", "", "")
