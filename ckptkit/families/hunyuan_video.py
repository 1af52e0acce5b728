"""HunyuanVideo 1.0 (Tencent; 13B: T2V and the I2V models). Tencent's release (`mp_rank_00_model_states.pt`,
a torch dict read with weights_only) and ComfyUI's `diffusion_models/hunyuan_video_*.safetensors` carry
the original names (hyvideo/modules/models.py), bare or under `model.diffusion_model.`; the text encoders
(llava-llama-3-8B's text tower, CLIP-L) and the causal 3-D VAE (AutoencoderKLHunyuanVideo: layout
hunyuan_video_vae, the same names as diffusers') ship as separate files. An all-in-one ComfyUI save holds
the encoders under `text_encoders.llama.transformer.` / `text_encoders.clip_l.transformer.`
(comfy/text_encoders/hunyuan_video.py) and the VAE under `vae.` (comfy/supported_models.py HunyuanVideo
vae_key_prefix, Comfy-Org/ComfyUI@01f03bbdc7df9462d3fc4c0918f80049333450f3). HunyuanVideo 1.5 (54 double-stream blocks of 2048, Qwen2.5-VL
text) is another network, not this family.

Released configs: diffusers' scripts/convert_hunyuan_video_to_diffusers.py TRANSFORMER_CONFIGS
(huggingface/diffusers@58eb52c0803ea9af3abec60841c2a093bdf1f951): HYVideo-T/2-cfgdistill (T2V),
HYVideo-T/2-I2V-33ch (in 33 = 16 x 2 + 1 latent-concat channels, no guidance embedding) and
HYVideo-T/2-I2V-16ch (token replace: the T2V's shapes, so a file of those shapes needs its config to
say which: the ambiguity rule of convert/configs.py).
"""

from dataclasses import replace

from ckptkit.families.common import clip_l, vae
from ckptkit.families.components import llm_component
from ckptkit.families.spec import ComponentSpec, FamilySpec, Has, Lacks, Release, Variant

HUNYUAN_VIDEO_T2V_CONFIG = dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128,
                                num_layers=20, num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0,
                                patch_size=2, patch_size_t=1, qk_norm="rms_norm", guidance_embeds=True,
                                text_embed_dim=4096, pooled_projection_dim=768, rope_theta=256.0,
                                rope_axes_dim=[16, 56, 56], image_condition_type=None)
HUNYUAN_VIDEO_I2V_33CH_CONFIG = dict(HUNYUAN_VIDEO_T2V_CONFIG, in_channels=33, guidance_embeds=False,
                                     image_condition_type="latent_concat")
HUNYUAN_VIDEO_I2V_16CH_CONFIG = dict(HUNYUAN_VIDEO_T2V_CONFIG, image_condition_type="token_replace")

# The causal 3-D VAE ("884-16c-hy": 8x spatial, 4x temporal, 16 latent channels): diffusers'
# scripts/convert_hunyuan_video_to_diffusers.py convert_vae builds AutoencoderKLHunyuanVideo() with the
# class defaults (huggingface/diffusers@58eb52c0803ea9af3abec60841c2a093bdf1f951; the values of diffusers
# 0.42.1's class, written out): 4 levels of 128/256/512/512, 2 resnets, 32 GroupNorm groups, mid-block
# attention, and the latent scale HunyuanVideoPipeline divides by before decoding.
HUNYUAN_VIDEO_VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=16,
                                down_block_types=["HunyuanVideoDownBlock3D"] * 4,
                                up_block_types=["HunyuanVideoUpBlock3D"] * 4, block_out_channels=[128, 256, 512, 512],
                                layers_per_block=2, act_fn="silu", norm_num_groups=32, scaling_factor=0.476986,
                                spatial_compression_ratio=8, temporal_compression_ratio=4,
                                mid_block_add_attention=True)

# ComfyUI-GGUF's lcpp.patch (HYVID) keeps txt_in., img_in., time_in., vector_in., guidance_in. and
# final_layer. unquantized
HUNYUAN_VIDEO_HIGH_PRECISION = ("txt_in.", "img_in.", "time_in.", "vector_in.", "guidance_in.", "final_layer.")
_SOURCE = ("diffusers scripts/convert_hunyuan_video_to_diffusers.py TRANSFORMER_CONFIGS "
           "(huggingface/diffusers@58eb52c0803ea9af3abec60841c2a093bdf1f951) = Tencent/HunyuanVideo "
           "hyvideo/modules/models.py HUNYUAN_VIDEO_CONFIG (HYVideo-T/2-cfgdistill: hidden 3072, 24 heads, "
           "20 double + 40 single blocks, rope theta 256, axes 16/56/56)")

SPEC = FamilySpec(
    name="hunyuan_video",
    title="HunyuanVideo",
    gguf_arch="hyvid",
    pipeline="HunyuanVideoPipeline",
    # the conversion script's scheduler (shift 7.0, ComfyUI's too); the one-step check starts at t = 1
    scheduler=dict(_class_name="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000, shift=7.0),
    components=(
        ComponentSpec("diffusion_model", "diffusion_model", "model.diffusion_model.", "hunyuan_video",
                      "HunyuanVideoTransformer3DModel", "transformer", config=HUNYUAN_VIDEO_T2V_CONFIG,
                      released=(HUNYUAN_VIDEO_I2V_33CH_CONFIG, HUNYUAN_VIDEO_I2V_16CH_CONFIG),
                      alt_prefixes=("",), high_precision=HUNYUAN_VIDEO_HIGH_PRECISION),
        # llava-llama-3-8B's text tower (LlamaModel names under `model.`), as ComfyUI's llava_llama3 files hold it
        replace(llm_component("llama", "LlamaForCausalLM"), prefix="text_encoders.llama.transformer.",
                diffusers_folder="text_encoder", optional=True),
        replace(clip_l("text_encoders.clip_l.transformer."), diffusers_folder="text_encoder_2", optional=True),
        replace(vae("vae.", HUNYUAN_VIDEO_VAE_CONFIG, layout="hunyuan_video_vae", alt_prefixes=("first_stage_model.",)),
                diffusers_class="AutoencoderKLHunyuanVideo", optional=True),
    ),
    detect=(Has("txt_in.individual_token_refiner.blocks.0.norm1.weight"), Has("double_blocks.0.img_attn_qkv.weight"),
            Lacks("byt5_in.fc1.weight")),
    detect_diffusers=(Has("context_embedder.token_refiner.refiner_blocks.0.norm1.weight"),
                      Has("transformer_blocks.0.attn.add_q_proj.weight"), Has("x_embedder.proj.weight")),
    variants=(
        Variant("i2v-33ch", (Has("img_in.proj.weight", 1, 33),), (Has("x_embedder.proj.weight", 1, 33),),
                "HunyuanVideo I2V (latent concat: 33 input channels)"),
        Variant("t2v", (), (), "HunyuanVideo T2V, or the 16-channel I2V (token replace: the same shapes; its "
                               "config says which)"),
    ),
    notes="text encoders llava-llama-3-8B (its text tower) and CLIP-L, and the causal 3-D VAE "
          "(AutoencoderKLHunyuanVideo, the same names in Tencent's and diffusers' files): optional components",
    releases=(
        Release("hunyuan_video_t2v", ("tencent/HunyuanVideo (hunyuan-video-t2v-720p)",), "t2v", HUNYUAN_VIDEO_T2V_CONFIG,
                {"*": _SOURCE}, description="HunyuanVideo T2V transformer (original names)",
                published_gguf={"q8_0": "14 GB (calcuis/hunyuan-gguf hunyuan-video-t2v-720p-q8_0.gguf)",
                                "q4_k_m": "7.88 GB (calcuis/hunyuan-gguf hunyuan-video-t2v-720p-q4_k_m.gguf)"}),
        Release("hunyuan_video_i2v_33ch", ("tencent/HunyuanVideo-I2V",), "i2v-33ch", HUNYUAN_VIDEO_I2V_33CH_CONFIG,
                {"*": _SOURCE + "; HYVideo-T/2-I2V-33ch"}, description="HunyuanVideo I2V transformer (original names)"),
    ),
)
