"""Stable Diffusion 3 / 3.5 (MMDiT), bundled with CLIP-L, CLIP-G, T5-XXL and a 16-channel VAE."""

from dataclasses import replace

from ckptkit.families.common import CLIP_G_CONFIG, LDM_JUNK, SD3_VAE_CONFIG, clip_l, t5xxl, vae, SD3_SCHEDULER
from ckptkit.families.spec import ComponentSpec, FamilySpec, Has, Lacks, Variant

SD3_MEDIUM_CONFIG = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                         num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                         pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192)
SD35_LARGE_CONFIG = dict(SD3_MEDIUM_CONFIG, num_layers=38, num_attention_heads=38, caption_projection_dim=2432,
                         qk_norm="rms_norm")
SD35_MEDIUM_CONFIG = dict(SD3_MEDIUM_CONFIG, pos_embed_max_size=384, qk_norm="rms_norm",
                          dual_attention_layers=tuple(range(13)))

MMDIT_HIGH_PRECISION = ("x_embedder.", "t_embedder.", "y_embedder.", "context_embedder.", "pos_embed",
                        "final_layer.")

SPEC = FamilySpec(
    name="sd3",
    title="Stable Diffusion 3 / 3.5",
    gguf_arch="sd3",
    pipeline="StableDiffusion3Pipeline",
    scheduler=SD3_SCHEDULER,
    components=(
        ComponentSpec("diffusion_model", "diffusion_model", "model.diffusion_model.", "mmdit",
                      "SD3Transformer2DModel", "transformer", config=SD3_MEDIUM_CONFIG,
                      released=(SD35_LARGE_CONFIG, SD35_MEDIUM_CONFIG),
                      high_precision=MMDIT_HIGH_PRECISION),
        replace(clip_l("text_encoders.clip_l.transformer."), diffusers_class="CLIPTextModelWithProjection",
                identity_projection=True),
        ComponentSpec("clip_g", "text_encoder", "text_encoders.clip_g.transformer.", "hf_clip",
                      "CLIPTextModelWithProjection", "text_encoder_2", config=CLIP_G_CONFIG, optional=True,
                      high_precision=("text_model.embeddings.", "text_model.final_layer_norm.", "text_projection.")),
        replace(t5xxl("text_encoders.t5xxl.transformer."), diffusers_folder="text_encoder_3", optional=True),
        vae("first_stage_model.", SD3_VAE_CONFIG),
    ),
    detect=(Has("joint_blocks.0.x_block.attn.qkv.weight"), Has("context_embedder.weight")),
    detect_diffusers=(Has("transformer_blocks.0.norm1_context.linear.weight"), Has("pos_embed.proj.weight"),
                      Lacks("single_transformer_blocks.0.proj_mlp.weight")),
    variants=(
        Variant("sd3.5-large", (Has("joint_blocks.37.x_block.attn.qkv.weight"),),
                (Has("transformer_blocks.37.attn.to_q.weight"),), "38 MMDiT blocks"),
        Variant("sd3.5-medium", (Has("joint_blocks.0.x_block.attn2.qkv.weight"),),
                (Has("transformer_blocks.0.attn2.to_q.weight"),), "MMDiT-X with attn2 blocks"),
        Variant("sd3-medium"),
    ),
    junk=LDM_JUNK,
)
# The optional text encoders: SD3 files ship with and without them ("incl_clips", "t5xxl").
SPEC = replace(SPEC, components=tuple(replace(c, optional=c.role == "text_encoder") for c in SPEC.components))
