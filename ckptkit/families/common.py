"""Components shared by several families (the same CLIP-L sits in SD1.x, SDXL, SD3 and FLUX.1)."""

from __future__ import annotations

from ckptkit.families.spec import ComponentSpec

LDM_JUNK = (
    r"betas", r"alphas_cumprod", r"alphas_cumprod_prev", r"sqrt_alphas_cumprod", r"sqrt_one_minus_alphas_cumprod",
    r"log_one_minus_alphas_cumprod", r"sqrt_recip_alphas_cumprod", r"sqrt_recipm1_alphas_cumprod",
    r"posterior_variance", r"posterior_log_variance_clipped", r"posterior_mean_coef1", r"posterior_mean_coef2",
    r"logvar", r"model_ema\.decay", r"model_ema\.num_updates", r"denoiser\.sigmas", r"model\.model_sampling\.sigmas",
    r".*\.logit_scale",
)

CLIP_L_CONFIG = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                     projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1)
CLIP_G_CONFIG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                     num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu",
                     projection_dim=1280, bos_token_id=0, eos_token_id=2, pad_token_id=1)
# OpenCLIP ViT-H-14 text tower as SD2.x stores it (24 layers; diffusers' SD2 config keeps 23).
CLIP_H_CONFIG = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                     num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
                     projection_dim=1024, bos_token_id=0, eos_token_id=2, pad_token_id=1)
T5XXL_CONFIG = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                    relative_attention_num_buckets=32, relative_attention_max_distance=128,
                    feed_forward_proj="gated-gelu", is_gated_act=True, dense_act_fn="gelu_new",
                    layer_norm_epsilon=1e-6, tie_word_embeddings=False)
# UMT5 (T5 names, a relative-position bias in every layer): AuraFlow's Pile-T5-XL encoder as ComfyUI ships
# its config (comfy/text_encoders/t5_pile_config_xl.json: model_type umt5, gated gelu_pytorch_tanh, which
# is the "gelu_new" tanh approximation that "gated-gelu" selects); relative_attention_max_distance is
# UMT5Config's default (128), which that file does not set.
PILE_T5_XL_CONFIG = dict(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32,
                         relative_attention_num_buckets=32, relative_attention_max_distance=128,
                         feed_forward_proj="gated-gelu", is_gated_act=True, dense_act_fn="gelu_new",
                         layer_norm_epsilon=1e-6, tie_word_embeddings=False, pad_token_id=1, eos_token_id=2)

SD_VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4,
                     down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                     block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32,
                     sample_size=512, scaling_factor=0.18215)
SDXL_VAE_CONFIG = dict(SD_VAE_CONFIG, sample_size=1024, scaling_factor=0.13025)
# SD3 and FLUX.1 VAEs: 16 latent channels, no quant_conv / post_quant_conv.
FLOW_VAE_CONFIG = dict(SD_VAE_CONFIG, latent_channels=16, sample_size=1024, use_quant_conv=False,
                       use_post_quant_conv=False)
SD3_VAE_CONFIG = dict(FLOW_VAE_CONFIG, scaling_factor=1.5305, shift_factor=0.0609)
FLUX_VAE_CONFIG = dict(FLOW_VAE_CONFIG, scaling_factor=0.3611, shift_factor=0.1159)


def clip_l(prefix: str, alt_prefixes: tuple[str, ...] = ()) -> ComponentSpec:
    return ComponentSpec("clip_l", "text_encoder", prefix, "hf_clip", "CLIPTextModel", "text_encoder",
                         config=CLIP_L_CONFIG, alt_prefixes=alt_prefixes,
                         high_precision=("text_model.embeddings.", "text_model.final_layer_norm."))


def vae(prefix: str, config: dict, layout: str = "ldm_vae", alt_prefixes: tuple[str, ...] = ()) -> ComponentSpec:
    # VAEs are never quantized below fp16 (see domain notes: SDXL VAE overflows in fp16).
    return ComponentSpec("vae", "vae", prefix, layout, "AutoencoderKL", "vae", config=config,
                         alt_prefixes=alt_prefixes, high_precision=("",))


def t5xxl(prefix: str, alt_prefixes: tuple[str, ...] = ()) -> ComponentSpec:
    return ComponentSpec("t5xxl", "text_encoder", prefix, "hf_t5", "T5EncoderModel", "text_encoder_2",
                         config=T5XXL_CONFIG, alt_prefixes=alt_prefixes,
                         high_precision=("shared.", "encoder.embed_tokens.", "encoder.final_layer_norm."))


def umt5(name: str, prefix: str, config: dict, folder: str = "text_encoder") -> ComponentSpec:
    """A UMT5 encoder (UMT5EncoderModel): T5's names and layout, with its own config."""
    return ComponentSpec(name, "text_encoder", prefix, "hf_t5", "UMT5EncoderModel", folder, config=config,
                         high_precision=("shared.", "encoder.embed_tokens.", "encoder.final_layer_norm."))


# Scheduler configs written beside a diffusers-layout split (the released pipelines' values).
DDPM_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
SD1_SCHEDULER = dict(_class_name="PNDMScheduler", **DDPM_SCHEDULE, skip_prk_steps=True, steps_offset=1,
                     set_alpha_to_one=False, prediction_type="epsilon")
SD2_SCHEDULER = dict(_class_name="DDIMScheduler", **DDPM_SCHEDULE, clip_sample=False, set_alpha_to_one=False,
                     steps_offset=1, prediction_type="epsilon")
SDXL_SCHEDULER = dict(_class_name="EulerDiscreteScheduler", **DDPM_SCHEDULE, steps_offset=1,
                      timestep_spacing="leading", interpolation_type="linear", prediction_type="epsilon")
SD3_SCHEDULER = dict(_class_name="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000, shift=3.0)
FLUX_SCHEDULER = dict(_class_name="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000, shift=3.0,
                      use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                      max_image_seq_len=4096)
SANA_SCHEDULER = dict(_class_name="DPMSolverMultistepScheduler", num_train_timesteps=1000, prediction_type="flow_prediction",
                      use_flow_sigmas=True, flow_shift=3.0, solver_order=2, algorithm_type="dpmsolver++")
# Sana-Sprint samples with SanaSprintPipeline + SCMScheduler (TrigFlow), as its released diffusers folder.
SANA_SPRINT_SCHEDULER = dict(_class_name="SCMScheduler", num_train_timesteps=1000, prediction_type="trigflow",
                             sigma_data=0.5)
