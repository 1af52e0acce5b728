"""Stable Diffusion XL refiner: OpenCLIP bigG only, 384-channel UNet."""

from ckptkit.families.common import LDM_JUNK, SDXL_VAE_CONFIG, vae, SDXL_SCHEDULER
from ckptkit.families.sd1 import (DOWNSAMPLERS, DOWNSAMPLERS_DIFFUSERS, UNET, UNET_DIFFUSERS,
                                  UNET_HIGH_PRECISION)
from ckptkit.families.sdxl import clip_g
from ckptkit.families.spec import ComponentSpec, Count, FamilySpec, Has

REFINER_UNET_CONFIG = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=[384, 768, 1536, 1536],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=4, attention_head_dim=[6, 12, 24, 24], cross_attention_dim=1280,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2560,
)

SPEC = FamilySpec(
    name="sdxl_refiner",
    title="Stable Diffusion XL refiner",
    gguf_arch="sdxl",
    pipeline="StableDiffusionXLImg2ImgPipeline",
    scheduler=SDXL_SCHEDULER,
    # the refiner's UNet takes 5 time ids (aesthetic score instead of target size): 2560 = 1280 + 5 * 256
    pipeline_config={"requires_aesthetics_score": True, "force_zeros_for_empty_prompt": False},
    components=(
        ComponentSpec("diffusion_model", "diffusion_model", "model.diffusion_model.", "ldm_unet",
                      "UNet2DConditionModel", "unet", config=REFINER_UNET_CONFIG, high_precision=UNET_HIGH_PRECISION),
        clip_g("conditioner.embedders.0.model."),
        vae("first_stage_model.", SDXL_VAE_CONFIG),
    ),
    # the ADM embedding and four levels, any width or depth
    detect=(*UNET, Has("label_emb.0.0.weight"), Count(DOWNSAMPLERS, 3, 3, "downsamplers")),
    detect_diffusers=(*UNET_DIFFUSERS, Has("add_embedding.linear_1.weight"), Count(DOWNSAMPLERS_DIFFUSERS, 3, 3, "downsamplers")),
    junk=LDM_JUNK,
    ema_prefix="model_ema.",
)
