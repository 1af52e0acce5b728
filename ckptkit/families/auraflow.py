"""AuraFlow (fal, v0.3; 6.8B). fal's `aura_flow_0.3.safetensors` bundles the transformer in
original names (bare; ComfyUI adds `model.diffusion_model.`) — ComfyUI's all-in-one file also holds
the text encoder (Pile-T5-XL encoder, UMT5EncoderModel in diffusers) and the SDXL VAE, which ship as
separate files in the diffusers repo. Both are optional components here: ComfyUI keeps the encoder
under `text_encoders.pile_t5xl.transformer.` (supported_models.AuraFlow text_encoder_key_prefix +
comfy/text_encoders/aura_t5.py's clip name "pile_t5xl") and the VAE under `vae.`.

Released config (fal/AuraFlow-v0.3 transformer/config.json as quoted in public copies, and
diffusers' scripts/convert_aura_flow_to_diffusers.py defaults): 4 MMDiT + 32 single blocks,
12 heads of 256 (3072), Pile-T5-XL width 2048, caption projection 3072, 4 latent channels (the
SDXL VAE), patch 2, 9216 positions (96 x 96; the class default 1024 is not the release's).
"""

from dataclasses import replace

from ckptkit.families.common import PILE_T5_XL_CONFIG, SDXL_VAE_CONFIG, umt5, vae
from ckptkit.families.spec import ComponentSpec, FamilySpec, Has, Release, Variant

AURAFLOW_CONFIG = dict(sample_size=64, patch_size=2, in_channels=4, num_mmdit_layers=4, num_single_dit_layers=32,
                       attention_head_dim=256, num_attention_heads=12, joint_attention_dim=2048,
                       caption_projection_dim=3072, out_channels=4, pos_embed_max_size=9216)

# ComfyUI-GGUF's lcpp.patch (AURA): "t_embedder." "init_x_linear." "modF.1.weight" "cond_seq_linear.weight"
# "final_linear.weight" "positional_encoding" "register_tokens" stay unquantized.
AURAFLOW_HIGH_PRECISION = ("t_embedder.", "init_x_linear.", "modF.", "cond_seq_linear.", "final_linear.",
                           "positional_encoding", "register_tokens")
_SOURCE = ("fal/AuraFlow-v0.3 transformer/config.json as quoted in public copies (pos_embed_max_size 9216); "
           "ComfyUI model_detection derives the depths and the position count from the same tensors")

SPEC = FamilySpec(
    name="auraflow",
    title="AuraFlow",
    gguf_arch="aura",
    pipeline="AuraFlowPipeline",
    # shift 1.73: ComfyUI's supported_models.AuraFlow sampling_settings (fal/AuraFlow-v0.3's scheduler
    # config not read here); the one-step check starts at t = 1, where the shift changes nothing.
    scheduler=dict(_class_name="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000, shift=1.73),
    components=(
        ComponentSpec("diffusion_model", "diffusion_model", "model.diffusion_model.", "auraflow",
                      "AuraFlowTransformer2DModel", "transformer", config=AURAFLOW_CONFIG, alt_prefixes=("",),
                      high_precision=AURAFLOW_HIGH_PRECISION),
        replace(umt5("pile_t5xl", "text_encoders.pile_t5xl.transformer.", PILE_T5_XL_CONFIG), optional=True),
        # the SDXL VAE (4 latent channels), under `vae.` in all-in-one files (`first_stage_model.` read too)
        replace(vae("vae.", SDXL_VAE_CONFIG, alt_prefixes=("first_stage_model.",)), optional=True),
    ),
    detect=(Has("double_layers.0.attn.w1q.weight"), Has("cond_seq_linear.weight")),
    detect_diffusers=(Has("joint_transformer_blocks.0.ff_context.out_projection.weight"), Has("register_tokens")),
    variants=(Variant("v0.3", (), (), "AuraFlow v0.3 (earlier versions not checked)"),),
    notes="text encoder Pile-T5-XL (UMT5EncoderModel) and the SDXL VAE: optional components",
    releases=(
        Release("auraflow_v0_3", ("fal/AuraFlow-v0.3",), "v0.3", AURAFLOW_CONFIG,
                {"*": _SOURCE, "sample_size": "64: the pipeline's default resolution / 16 (class default; not "
                                               "in the weights)"},
                description="AuraFlow transformer (aura_flow_0.3.safetensors), original names",
                published_gguf={"q8_0": "7.35 GB (city96/AuraFlow-v0.3-gguf aura_flow_0.3-Q8_0.gguf)"}),
    ),
)
