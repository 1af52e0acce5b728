"""Wan 2.1 / 2.2 video models (Wan-Video; Alibaba). One transformer layout (`WanTransformer3DModel`)
at three widths: Wan 2.1 T2V 1.3B, the 14B of Wan 2.1 T2V / I2V / FLF2V and of Wan 2.2's A14B
experts (T2V and I2V each ship a high-noise and a low-noise transformer of the same layout, run one
after the other: separate files, quantized each on its own), and Wan 2.2 TI2V 5B. Released files and
ComfyUI's `diffusion_models/wan2.*.safetensors` carry the original names (Wan2.1/Wan2.2
`wan/modules/model.py`), bare or under `model.diffusion_model.`; the text encoder (UMT5-XXL), the VAE
and, for Wan 2.1 I2V / FLF2V, a CLIP vision tower ship as separate files. An all-in-one ComfyUI save
holds the encoder under `text_encoders.umt5xxl.transformer.` (supported_models WAN21_T2V) and the VAE
under `vae.`.

Released configs (diffusers' scripts/convert_wan_to_diffusers.py `get_transformer_config`,
huggingface/diffusers@58eb52c0, the values of the Wan-AI/*-Diffusers transformer configs; the
original kwargs of Wan2.1 / Wan2.2 `wan/configs/`): see manifests/wan*.json. Every release has
128-wide heads (ComfyUI's model_detection assumes the same: num_heads = dim // 128), RMS q/k norms
over the whole width, eps 1e-6 and a 1024-position rotary table.

The 5-D Conv3d patch embedding is stored as it is in every format; its GGUF form is the one
ComfyUI-GGUF's tools/fix_5d_tensors.py produces (quant/plan.py).
"""

from dataclasses import replace

from ckptkit.families.common import umt5, vae
from ckptkit.families.spec import ComponentSpec, FamilySpec, Has, Lacks, Release, Variant

_COMMON = dict(patch_size=[1, 2, 2], attention_head_dim=128, text_dim=4096, freq_dim=256, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None,
               rope_max_seq_len=1024, pos_embed_seq_len=None)
WAN_T2V_14B_CONFIG = dict(_COMMON, num_attention_heads=40, in_channels=16, out_channels=16, ffn_dim=13824,
                          num_layers=40)
WAN_T2V_1_3B_CONFIG = dict(_COMMON, num_attention_heads=12, in_channels=16, out_channels=16, ffn_dim=8960,
                           num_layers=30)
WAN_I2V_14B_CONFIG = dict(WAN_T2V_14B_CONFIG, in_channels=36, image_dim=1280, added_kv_proj_dim=5120)
WAN_FLF2V_14B_CONFIG = dict(WAN_I2V_14B_CONFIG, pos_embed_seq_len=514)
WAN22_I2V_A14B_CONFIG = dict(WAN_T2V_14B_CONFIG, in_channels=36)  # no CLIP image branch in Wan 2.2
WAN22_TI2V_5B_CONFIG = dict(_COMMON, num_attention_heads=24, in_channels=48, out_channels=48, ffn_dim=14336,
                            num_layers=30)

# UMT5-XXL encoder (Wan2.1 wan/modules/t5.py umt5_xxl: 24 layers of 4096, 64 heads, FFN 10240 gated
# GELU, a relative-position bias in every layer; google/umt5-xxl's vocabulary of 256384), as
# transformers' UMT5EncoderModel holds it (ComfyUI's umt5_xxl_fp16.safetensors)
UMT5_XXL_CONFIG = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                       relative_attention_num_buckets=32, relative_attention_max_distance=128,
                       feed_forward_proj="gated-gelu", is_gated_act=True, dense_act_fn="gelu_new",
                       layer_norm_epsilon=1e-6, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1)

# The Wan 2.1 VAE (Wan2.1_VAE.pth / ComfyUI's wan_2.1_vae.safetensors; also Wan 2.2's 14B models):
# AutoencoderKLWan's defaults in diffusers 0.42.1, which are the released values (z_dim 16, the
# per-channel latent statistics WanPipeline normalises with). `input_channels` is the same value
# under AutoencoderKLQwenImage's name (the wan_vae layout serves both classes).
WAN21_VAE_CONFIG = dict(
    base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
    temperal_downsample=[False, True, True], dropout=0.0, in_channels=3, out_channels=3, input_channels=3,
    is_residual=False, patch_size=None, scale_factor_temporal=4, scale_factor_spatial=8,
    latents_mean=[-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                  0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
    latents_std=[2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916])

# The Wan 2.2 VAE (Wan2.2_VAE.pth of Wan-AI/Wan2.2-TI2V-5B; ComfyUI's wan2.2_vae.safetensors): diffusers'
# scripts/convert_wan_to_diffusers.py `vae22_diffusers_config` (huggingface/diffusers@58eb52c0803ea9af3abec60841c2a093bdf1f951;
# = Wan-Video/Wan2.2@42bf4cfa wan/modules/vae2_2.py Wan2_2_VAE's dim 160, dec_dim 256, z_dim 48 and its 48
# mean / std values); the keys that script leaves out are AutoencoderKLWan's defaults (dim_mult [1, 2, 4, 4],
# num_res_blocks 2, attn_scales [], temperal_downsample [False, True, True], dropout 0.0), which the
# released shapes confirm (wan_vae layout); its `clip_output` is no AutoencoderKLWan parameter in diffusers
# 0.42.1. The wan family's `vae` takes this one for a 48-channel file (convert/configs.py picks a released
# config by the shapes), 2.1's for a 16-channel one.
WAN22_VAE_CONFIG = dict(
    base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
    temperal_downsample=[False, True, True], dropout=0.0, in_channels=12, out_channels=12, input_channels=12,
    is_residual=True, patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16,
    latents_mean=[-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
                  0.157, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
                  -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.123, -0.0313, -0.1649, 0.0117, 0.0723,
                  -0.2839, -0.2083, -0.052, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667],
    latents_std=[0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.499, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
                 0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
                 0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
                 0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.06, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744])

# ComfyUI-GGUF keeps these unquantized (tools/convert.py ModelWan keys_hiprec ".modulation" and
# lcpp.patch's WAN list: patch_embedding., text_embedding., time_projection., time_embedding., img_emb.,
# head.); the modulation tables are raw parameters, kept by the policy's own rule
WAN_HIGH_PRECISION = ("patch_embedding.", "text_embedding.", "time_projection.", "time_embedding.", "img_emb.",
                      "head.")
_SOURCE = ("diffusers scripts/convert_wan_to_diffusers.py get_transformer_config "
           "(huggingface/diffusers@58eb52c0803ea9af3abec60841c2a093bdf1f951), = the Wan-AI/*-Diffusers "
           "transformer/config.json values and Wan2.1/Wan2.2 wan/configs/ (dim, ffn_dim, num_heads, num_layers, "
           "in_dim, out_dim)")
_SHAPES = {"*": _SOURCE, "attention_head_dim": "128: dim / num_heads of every release (ComfyUI's model_detection "
                                               "assumes dim // 128 heads)"}

SPEC = FamilySpec(
    name="wan",
    title="Wan 2.1 / 2.2",
    gguf_arch="wan",
    pipeline="WanPipeline",
    # diffusers' Wan pipelines: UniPC in flow mode; flow_shift 3.0 is the conversion script's default
    # (the releases sample at 5.0 (2.1 T2V), 12.0 (2.2 T2V-A14B), ...); the one-step check starts at
    # t = 1, where the shift changes nothing
    scheduler=dict(_class_name="UniPCMultistepScheduler", num_train_timesteps=1000, prediction_type="flow_prediction",
                   use_flow_sigmas=True, flow_shift=3.0),
    components=(
        ComponentSpec("diffusion_model", "diffusion_model", "model.diffusion_model.", "wan",
                      "WanTransformer3DModel", "transformer", config=WAN_T2V_14B_CONFIG,
                      released=(WAN_T2V_1_3B_CONFIG, WAN_I2V_14B_CONFIG, WAN_FLF2V_14B_CONFIG, WAN22_I2V_A14B_CONFIG,
                                WAN22_TI2V_5B_CONFIG),
                      alt_prefixes=("",), high_precision=WAN_HIGH_PRECISION),
        replace(umt5("umt5xxl", "text_encoders.umt5xxl.transformer.", UMT5_XXL_CONFIG), optional=True),
        replace(vae("vae.", WAN21_VAE_CONFIG, layout="wan_vae", alt_prefixes=("first_stage_model.",)),
                diffusers_class="AutoencoderKLWan", optional=True, released=(WAN22_VAE_CONFIG,)),
    ),
    detect=(Has("head.modulation"), Has("blocks.0.self_attn.norm_q.weight"), Has("text_embedding.2.weight")),
    detect_diffusers=(Has("condition_embedder.time_proj.weight"), Has("blocks.0.attn2.to_k.weight"),
                      Has("patch_embedding.weight"), Has("blocks.0.scale_shift_table")),
    variants=(
        Variant("flf2v", (Has("img_emb.emb_pos"),), (Has("condition_embedder.image_embedder.pos_embed"),),
                "Wan 2.1 FLF2V 14B: first and last frame (two CLIP images, 514 positions)"),
        Variant("i2v", (Has("img_emb.proj.0.weight"),), (Has("condition_embedder.image_embedder.norm1.weight"),),
                "Wan 2.1 I2V 14B (480p / 720p): mask + image latents in the input, CLIP image states"),
        Variant("ti2v", (Has("head.head.weight", 0, 192),), (Has("proj_out.weight", 0, 192),),
                "Wan 2.2 TI2V 5B: 48 latent channels (the Wan 2.2 VAE)"),
        Variant("i2v-a14b", (Has("patch_embedding.weight", 1, 36), Lacks("img_emb.proj.0.weight")),
                (Has("patch_embedding.weight", 1, 36), Lacks("condition_embedder.image_embedder.norm1.weight")),
                "Wan 2.2 I2V A14B (high- or low-noise expert): mask + image latents in the input, no CLIP branch"),
        Variant("t2v", (), (), "Wan 2.1 T2V 1.3B / 14B, Wan 2.2 T2V A14B (high- or low-noise expert): one layout"),
    ),
    notes="text encoder UMT5-XXL and the Wan 2.1 VAE (optional components); Wan 2.1 I2V's CLIP vision tower and "
          "Wan 2.2 TI2V's 48-channel VAE ship as separate files",
    releases=(
        Release("wan2_1_t2v_1_3b", ("Wan-AI/Wan2.1-T2V-1.3B",), "t2v", WAN_T2V_1_3B_CONFIG, _SHAPES,
                description="Wan 2.1 T2V 1.3B transformer (original names)"),
        Release("wan2_1_t2v_14b", ("Wan-AI/Wan2.1-T2V-14B", "Wan-AI/Wan2.2-T2V-A14B (high_noise_model, "
                                   "low_noise_model)"), "t2v", WAN_T2V_14B_CONFIG, _SHAPES,
                description="Wan 2.1 T2V 14B transformer, and each of Wan 2.2 T2V A14B's two experts (original names)",
                published_gguf={"q4_k_m": "10.1 GB (city96/Wan2.1-T2V-14B-gguf wan2.1-t2v-14b-Q4_K_M.gguf)"}),
        Release("wan2_1_i2v_14b", ("Wan-AI/Wan2.1-I2V-14B-480P", "Wan-AI/Wan2.1-I2V-14B-720P"), "i2v",
                WAN_I2V_14B_CONFIG, _SHAPES, description="Wan 2.1 I2V 14B transformer (original names)"),
        Release("wan2_1_flf2v_14b", ("Wan-AI/Wan2.1-FLF2V-14B-720P",), "flf2v", WAN_FLF2V_14B_CONFIG, _SHAPES,
                description="Wan 2.1 FLF2V 14B transformer (original names)"),
        Release("wan2_2_i2v_a14b", ("Wan-AI/Wan2.2-I2V-A14B (high_noise_model, low_noise_model)",), "i2v-a14b",
                WAN22_I2V_A14B_CONFIG, _SHAPES,
                description="each of Wan 2.2 I2V A14B's two experts (original names)",
                published_gguf={"q4_k_m": "9.65 GB (bullerwins/Wan2.2-I2V-A14B-GGUF "
                                          "wan2.2_i2v_low_noise_14B_Q4_K_M.gguf, 9,651,728,896 bytes)"}),
        Release("wan2_2_ti2v_5b", ("Wan-AI/Wan2.2-TI2V-5B",), "ti2v", WAN22_TI2V_5B_CONFIG, _SHAPES,
                description="Wan 2.2 TI2V 5B transformer (original names)",
                published_gguf={"q8_0": "5.40 GB (QuantStack/Wan2.2-TI2V-5B-GGUF Q8_0, 5.03 GiB as unsloth's "
                                        "byte-identical mirror lists it)",
                                "q4_k_m": "3.44 GB (QuantStack/Wan2.2-TI2V-5B-GGUF Q4_K_M, 3.20 GiB)"}),
    ),
)
