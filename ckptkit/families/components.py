"""Signatures of standalone component files (a CLIP-L, a T5-XXL, a VAE on their own), so that
`inspect` can name them even though they belong to no single family."""

from __future__ import annotations

from dataclasses import dataclass

from ckptkit.families.spec import ComponentSpec, Condition, Has

# Standalone signatures that name no family component: the component of their kind.
GENERIC_COMPONENTS = {"t5": "t5xxl", "clip": "clip_l"}


@dataclass(frozen=True)
class ComponentSignature:
    name: str  # the component name families use ("clip_l", "vae", ...)
    layout: str  # original-side layout kind, or "diffusers:<kind>" for diffusers/transformers names
    role: str
    when: tuple[Condition, ...]
    used_by: tuple[str, ...]
    description: str


_HF_Q = "text_model.encoder.layers.0.self_attn.q_proj.weight"
_HF_Q_FLAT = "encoder.layers.0.self_attn.q_proj.weight"  # transformers >= 5.6 CLIPTextModel
_OC_IN = "transformer.resblocks.0.attn.in_proj_weight"

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
    ComponentSignature("t5xxl", "hf_t5", "text_encoder", (Has("encoder.block.0.layer.0.SelfAttention.q.weight", 1, 4096),),
                       ("sd3", "flux"), "T5-XXL encoder"),
    ComponentSignature("t5", "hf_t5", "text_encoder", (Has("encoder.block.0.layer.0.SelfAttention.q.weight"),), (),
                       "T5 encoder"),
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


def generic_component(name: str = "model") -> ComponentSpec:
    """A file no family spec or signature knows, as one component: names kept as they are, the
    rules every family shares (quant/policy.py: 2-D+ layer weights quantized; 1-D, small, bias,
    norm and embedding tensors kept; rows that do not divide fall back). No diffusers class: it can
    be quantized, compared tensor by tensor and split by prefix, not converted or run."""
    return ComponentSpec(name, "unknown", "", "generic", "", "")
