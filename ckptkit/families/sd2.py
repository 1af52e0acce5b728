"""Stable Diffusion 2.x (LDM layout with an OpenCLIP ViT-H text encoder)."""

from ckptkit.families.common import CLIP_H_CONFIG, LDM_JUNK, SD_VAE_CONFIG, vae, SD2_SCHEDULER
from ckptkit.families.sd1 import (PROJ_IN, PROJ_IN_DIFFUSERS, SD15_UNET_CONFIG, UNET, UNET_DIFFUSERS,
                                  UNET_HIGH_PRECISION)
from ckptkit.families.spec import ComponentSpec, FamilySpec, Has, Lacks, Rank, Variant

SD21_UNET_CONFIG = dict(SD15_UNET_CONFIG, sample_size=96, cross_attention_dim=1024,
                        attention_head_dim=[5, 10, 20, 20], use_linear_projection=True)

SPEC = FamilySpec(
    name="sd2",
    title="Stable Diffusion 2.x",
    gguf_arch="sd1",  # ComfyUI-GGUF has no separate SD2 arch; its UNet layout is SD1's
    pipeline="StableDiffusionPipeline",
    scheduler=SD2_SCHEDULER,
    components=(
        ComponentSpec("diffusion_model", "diffusion_model", "model.diffusion_model.", "ldm_unet",
                      "UNet2DConditionModel", "unet", config=SD21_UNET_CONFIG, high_precision=UNET_HIGH_PRECISION),
        ComponentSpec("clip_h", "text_encoder", "cond_stage_model.model.", "open_clip", "CLIPTextModel",
                      "text_encoder", config=CLIP_H_CONFIG,
                      high_precision=("positional_embedding", "token_embedding.", "ln_final.")),
        vae("first_stage_model.", SD_VAE_CONFIG),
    ),
    # SD1's structure with linear proj_in, any width or depth
    detect=(*UNET, Lacks("label_emb.0.0.weight"), Rank(PROJ_IN, 2, "proj_in")),
    detect_diffusers=(*UNET_DIFFUSERS, Rank(PROJ_IN_DIFFUSERS, 2, "proj_in"),
                      Lacks("add_embedding.linear_1.weight")),
    variants=(Variant("inpaint", (Has("input_blocks.0.0.weight", 1, 9),), (Has("conv_in.weight", 1, 9),)),
              Variant("base")),
    junk=LDM_JUNK,
    ema_prefix="model_ema.",
    notes="v-prediction (768-v) files carry no key marker; the variant cannot be told from weights.",
)
