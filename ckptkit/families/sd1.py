"""Stable Diffusion 1.x (CompVis LDM layout)."""

from ckptkit.families.common import LDM_JUNK, SD_VAE_CONFIG, clip_l, vae, SD1_SCHEDULER
from ckptkit.families.spec import ComponentSpec, FamilySpec, Has, Lacks, Variant

UNET_HIGH_PRECISION = ("time_embed.", "label_emb.", "input_blocks.0.0.", "out.")

SD15_UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=768, attention_head_dim=8,
)

SPEC = FamilySpec(
    name="sd1",
    title="Stable Diffusion 1.x",
    gguf_arch="sd1",
    pipeline="StableDiffusionPipeline",
    scheduler=SD1_SCHEDULER,
    components=(
        ComponentSpec("diffusion_model", "diffusion_model", "model.diffusion_model.", "ldm_unet",
                      "UNet2DConditionModel", "unet", config=SD15_UNET_CONFIG, high_precision=UNET_HIGH_PRECISION),
        clip_l("cond_stage_model.transformer."),
        vae("first_stage_model.", SD_VAE_CONFIG),
    ),
    detect=(Has("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", 1, 768), Lacks("label_emb.0.0.weight")),
    detect_diffusers=(Has("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight", 1, 768),
                      Lacks("add_embedding.linear_1.weight")),
    variants=(Variant("inpaint", (Has("input_blocks.0.0.weight", 1, 9),), (Has("conv_in.weight", 1, 9),),
                      "9-channel inpainting UNet"),
              Variant("base")),
    junk=LDM_JUNK,
    ema_prefix="model_ema.",
)
