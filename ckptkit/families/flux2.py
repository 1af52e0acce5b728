"""FLUX.2 ([dev], and [klein] 4B / 9B). Black Forest Labs ship the transformer alone in original
names, bare (`flux2-dev.safetensors`, ...); ComfyUI adds `model.diffusion_model.`. The text encoder
(Mistral-Small-3.2-24B for [dev], Qwen3-4B / -8B for [klein]) and the VAE (AutoencoderKLFlux2, 32 latent
channels, batch-norm latent statistics; layouts/flux2_vae.py) ship as separate files; the VAE is an
optional component (`vae.` in all-in-one repacks).

Released configs: `get_flux2_transformer_config` of diffusers' scripts/convert_flux2_to_diffusers.py
(huggingface/diffusers@207bae7a); [dev]'s equal Flux2Transformer2DModel's defaults in diffusers 0.42.1.
[klein] 4B and 9B differ in sizes only (the config rule tells them apart); neither has a guidance
embedding. The step-distilled [klein] and its undistilled "base" share one layout (the pipeline's
`is_distilled` is not in the weights).
"""

from dataclasses import replace

from ckptkit.families.common import FLUX_SCHEDULER, vae
from ckptkit.families.spec import ComponentSpec, FamilySpec, Has, Lacks, Release, Variant

FLUX2_DEV_CONFIG = dict(patch_size=1, in_channels=128, out_channels=None, num_layers=8, num_single_layers=48,
                        attention_head_dim=128, num_attention_heads=48, joint_attention_dim=15360,
                        timestep_guidance_channels=256, mlp_ratio=3.0, axes_dims_rope=[32, 32, 32, 32],
                        rope_theta=2000, eps=1e-6, guidance_embeds=True)
FLUX2_KLEIN_4B_CONFIG = dict(FLUX2_DEV_CONFIG, num_layers=5, num_single_layers=20, num_attention_heads=24,
                             joint_attention_dim=7680, guidance_embeds=False)
FLUX2_KLEIN_9B_CONFIG = dict(FLUX2_DEV_CONFIG, num_layers=8, num_single_layers=24, num_attention_heads=32,
                             joint_attention_dim=12288, guidance_embeds=False)
# The VAE: diffusers' scripts/convert_flux2_to_diffusers.py (huggingface/diffusers@207bae7a) builds
# `AutoencoderKLFlux2()` with its defaults (these, diffusers 0.42.1) and loads BFL's file into it strictly.
FLUX2_VAE_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
                        decoder_block_out_channels=None, layers_per_block=2, act_fn="silu", latent_channels=32,
                        norm_num_groups=32, sample_size=1024, use_quant_conv=True, use_post_quant_conv=True,
                        mid_block_add_attention=True, batch_norm_eps=1e-4, batch_norm_momentum=0.1,
                        patch_size=[2, 2])
# ComfyUI-GGUF writes FLUX.2 as arch "flux"; its lcpp.patch keeps FLUX's input/output layers and
# (its "flux2" lines) the shared modulations out of quantization. stable-diffusion.cpp keeps the
# FLUX list only (its modulations are quantized); the union is kept here.
FLUX2_HIGH_PRECISION = ("img_in.", "txt_in.", "time_in.", "guidance_in.", "final_layer.",
                        "single_stream_modulation.", "double_stream_modulation_")

SPEC = FamilySpec(
    name="flux2",
    title="FLUX.2",
    gguf_arch="flux",
    pipeline="Flux2Pipeline",
    # FLUX.1-dev's scheduler: diffusers' convert_flux2_to_diffusers.py builds the pipeline with
    # FlowMatchEulerDiscreteScheduler.from_pretrained("black-forest-labs/FLUX.1-dev", subfolder="scheduler").
    # Flux2Pipeline computes its own mu (compute_empirical_mu); only use_dynamic_shifting matters.
    scheduler=FLUX_SCHEDULER,
    components=(
        ComponentSpec("diffusion_model", "diffusion_model", "model.diffusion_model.", "flux2",
                      "Flux2Transformer2DModel", "transformer", config=FLUX2_DEV_CONFIG,
                      released=(FLUX2_KLEIN_4B_CONFIG, FLUX2_KLEIN_9B_CONFIG), alt_prefixes=("",),
                      high_precision=FLUX2_HIGH_PRECISION),
        # a separate file (BFL's ae.safetensors, ComfyUI's flux2-vae.safetensors); `vae.` / `first_stage_model.`
        # in all-in-one repacks. Never quantized (common.vae).
        replace(vae("vae.", FLUX2_VAE_CONFIG, layout="flux2_vae", alt_prefixes=("first_stage_model.",)),
                diffusers_class="AutoencoderKLFlux2", optional=True),
    ),
    # the shared modulations are FLUX.2's alone (FLUX.1 modulates per block, Chroma not at all)
    detect=(Has("double_stream_modulation_img.lin.weight"), Has("double_blocks.0.img_attn.norm.key_norm.scale")),
    detect_diffusers=(Has("double_stream_modulation_img.linear.weight"),
                      Has("single_transformer_blocks.0.attn.to_qkv_mlp_proj.weight")),
    variants=(
        Variant("dev", (Has("guidance_in.in_layer.weight"),),
                (Has("time_guidance_embed.guidance_embedder.linear_1.weight"),), "FLUX.2 [dev], guidance-distilled"),
        Variant("klein", (Lacks("guidance_in.in_layer.weight"),),
                (Lacks("time_guidance_embed.guidance_embedder.linear_1.weight"),),
                "FLUX.2 [klein] 4B / 9B (sizes tell them apart), no guidance embedding",
                pipeline="Flux2KleinPipeline"),
    ),
    notes="text encoder (Mistral-Small-3.2-24B for dev, Qwen3-4B/-8B for klein) and the VAE (AutoencoderKLFlux2) "
          "ship as separate files",
    releases=tuple(
        Release(name, models, variant, config, {
            "*": "get_flux2_transformer_config in diffusers' scripts/convert_flux2_to_diffusers.py "
                 "(huggingface/diffusers@207bae7a5e772ce97e6a446cdf16fba5b9acca24)" + extra,
            "joint_attention_dim": f"{config['joint_attention_dim']} = 3 stacked hidden states of {encoder}"},
            description=f"{title} transformer (BFL original names)", published_gguf=published)
        for name, models, variant, config, extra, encoder, title, published in (
            ("flux2_dev", ("black-forest-labs/FLUX.2-dev",), "dev", FLUX2_DEV_CONFIG,
             "; = Flux2Transformer2DModel defaults in diffusers 0.42.1", "Mistral-Small-3.2-24B (5120)", "FLUX.2 [dev]",
             {"q8_0": "34.5 GB (orabazes/FLUX.2-dev-GGUF flux2_dev_Q8_0.gguf)",
              "q4_k_m": "18.7 GB (orabazes/FLUX.2-dev-GGUF flux2_dev_Q4_K_M.gguf)"}),
            ("flux2_klein_4b", ("black-forest-labs/FLUX.2-klein-4B", "black-forest-labs/FLUX.2-klein-base-4B"), "klein",
             FLUX2_KLEIN_4B_CONFIG, "", "Qwen3-4B (2560)", "FLUX.2 [klein] 4B", {}),
            ("flux2_klein_9b", ("black-forest-labs/FLUX.2-klein-9B", "black-forest-labs/FLUX.2-klein-base-9B"), "klein",
             FLUX2_KLEIN_9B_CONFIG, "", "Qwen3-8B (4096)", "FLUX.2 [klein] 9B", {}),
        )),
)
