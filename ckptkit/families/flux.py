"""FLUX.1 (dev / schnell / fill). BFL ships the transformer alone with no prefix; ComfyUI's
all-in-one files add `model.diffusion_model.`, `vae.`, `text_encoders.clip_l.` and `text_encoders.t5xxl.`."""

from dataclasses import replace

from ckptkit.families.common import FLUX_VAE_CONFIG, clip_l, t5xxl, vae, FLUX_SCHEDULER
from ckptkit.families.spec import ComponentSpec, FamilySpec, Has, Lacks, Variant

FLUX_DEV_CONFIG = dict(patch_size=1, in_channels=64, out_channels=None, num_layers=19, num_single_layers=38,
                       attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                       pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=[16, 56, 56])
FLUX_HIGH_PRECISION = ("img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.", "final_layer.")

SPEC = FamilySpec(
    name="flux",
    title="FLUX.1",
    gguf_arch="flux",
    pipeline="FluxPipeline",
    scheduler=FLUX_SCHEDULER,
    components=(
        ComponentSpec("diffusion_model", "diffusion_model", "model.diffusion_model.", "flux",
                      "FluxTransformer2DModel", "transformer", config=FLUX_DEV_CONFIG,
                      released=(dict(FLUX_DEV_CONFIG, guidance_embeds=False),),  # FLUX.1 [schnell]
                      alt_prefixes=("",), high_precision=FLUX_HIGH_PRECISION),
        replace(clip_l("text_encoders.clip_l.transformer."), optional=True),
        replace(t5xxl("text_encoders.t5xxl.transformer."), optional=True),
        replace(vae("vae.", FLUX_VAE_CONFIG), optional=True),
    ),
    detect=(Has("double_blocks.0.img_attn.norm.key_norm.scale"),),
    detect_diffusers=(Has("single_transformer_blocks.0.proj_mlp.weight"), Has("x_embedder.weight")),
    variants=(
        Variant("fill", (Has("img_in.weight", 1, 384),), (Has("x_embedder.weight", 1, 384),), "inpainting/outpainting"),
        Variant("depth/canny", (Has("img_in.weight", 1, 128),), (Has("x_embedder.weight", 1, 128),)),
        Variant("dev", (Has("guidance_in.in_layer.weight"),),
                (Has("time_text_embed.guidance_embedder.linear_1.weight"),), "guidance-distilled"),
        Variant("schnell", (Lacks("guidance_in.in_layer.weight"),), (), "timestep-distilled, no guidance input"),
    ),
)
