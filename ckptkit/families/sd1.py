"""Stable Diffusion 1.x (CompVis LDM layout)."""

from ckptkit.families.common import LDM_JUNK, SD_VAE_CONFIG, clip_l, vae, SD1_SCHEDULER
from ckptkit.families.spec import ComponentSpec, FamilySpec, Has, Lacks, Rank, Variant

# Structure, not sizes (shared by the LDM UNet families): how many downsamplers (levels - 1), and
# whether the transformers' proj_in is a 1x1 conv (SD1) or a linear layer (SD2, SDXL). Widths, depths
# and head counts are read from the weights later, never required here.
DOWNSAMPLERS = r"input_blocks\.(\d+)\.0\.op\.weight"
DOWNSAMPLERS_DIFFUSERS = r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.weight"
PROJ_IN = r"input_blocks\.\d+\.1\.proj_in\.weight"
PROJ_IN_DIFFUSERS = r"down_blocks\.\d+\.attentions\.\d+\.proj_in\.weight"
UNET = (Has("input_blocks.0.0.weight"), Has("out.2.weight"))
UNET_DIFFUSERS = (Has("conv_in.weight"), Has("time_embedding.linear_1.weight"), Has("conv_norm_out.weight"))


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
    # no ADM label embedding, 1x1-conv proj_in (SD2's is linear), any width or depth
    detect=(*UNET, Lacks("label_emb.0.0.weight"), Rank(PROJ_IN, 4, "proj_in")),
    detect_diffusers=(*UNET_DIFFUSERS, Lacks("add_embedding.linear_1.weight"), Rank(PROJ_IN_DIFFUSERS, 4, "proj_in")),
    variants=(Variant("inpaint", (Has("input_blocks.0.0.weight", 1, 9),), (Has("conv_in.weight", 1, 9),),
                      "9-channel inpainting UNet"),
              Variant("base")),
    junk=LDM_JUNK,
    ema_prefix="model_ema.",
)
