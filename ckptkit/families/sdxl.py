"""Stable Diffusion XL base (SDXL-Turbo has the same layout)."""

from ckptkit.families.common import CLIP_G_CONFIG, LDM_JUNK, SDXL_VAE_CONFIG, clip_l, vae, SDXL_SCHEDULER
from ckptkit.families.sd1 import (DOWNSAMPLERS, DOWNSAMPLERS_DIFFUSERS, UNET, UNET_DIFFUSERS,
                                  UNET_HIGH_PRECISION)
from ckptkit.families.spec import ComponentSpec, Count, FamilySpec, Has, Variant

SDXL_UNET_CONFIG = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=[320, 640, 1280],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20], cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)

OPEN_CLIP_HIGH_PRECISION = ("positional_embedding", "token_embedding.", "ln_final.", "text_projection")


def clip_g(prefix: str) -> ComponentSpec:
    return ComponentSpec("clip_g", "text_encoder", prefix, "open_clip", "CLIPTextModelWithProjection",
                         "text_encoder_2", config=CLIP_G_CONFIG, high_precision=OPEN_CLIP_HIGH_PRECISION)


SPEC = FamilySpec(
    name="sdxl",
    title="Stable Diffusion XL (base / Turbo)",
    gguf_arch="sdxl",
    pipeline="StableDiffusionXLPipeline",
    scheduler=SDXL_SCHEDULER,
    components=(
        ComponentSpec("diffusion_model", "diffusion_model", "model.diffusion_model.", "ldm_unet",
                      "UNet2DConditionModel", "unet", config=SDXL_UNET_CONFIG, high_precision=UNET_HIGH_PRECISION),
        clip_l("conditioner.embedders.0.transformer."),
        clip_g("conditioner.embedders.1.model."),
        vae("first_stage_model.", SDXL_VAE_CONFIG),
    ),
    # the ADM (pooled text + time ids) embedding and three levels, any width or depth (SSD-1B, Vega, KOALA)
    detect=(*UNET, Has("label_emb.0.0.weight"), Count(DOWNSAMPLERS, 2, 2, "downsamplers")),
    detect_diffusers=(*UNET_DIFFUSERS, Has("add_embedding.linear_1.weight"), Count(DOWNSAMPLERS_DIFFUSERS, 2, 2, "downsamplers")),
    variants=(Variant("inpaint", (Has("input_blocks.0.0.weight", 1, 9),), (Has("conv_in.weight", 1, 9),)),
              Variant("base", description="SDXL base and SDXL-Turbo share this layout")),
    junk=LDM_JUNK,
    ema_prefix="model_ema.",
)
