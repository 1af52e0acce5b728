"""LTX-Video 0.9.x (Lightricks): one transformer layout (`LTXVideoTransformer3DModel`) at two sizes,
2B (0.9.0, 0.9.1, 0.9.5, 0.9.6: 28 blocks of 2048 = 32 heads x 64) and 13B (0.9.7, 0.9.8: 48 blocks
of 4096 = 32 x 128). Lightricks' single files (`ltx-video-2b-v0.9*.safetensors`, `ltxv-13b-0.9.7-*`)
hold the transformer under `model.diffusion_model.` in the original names (LTX-Video
transformer3d.py) and the VAE under `vae.`, with the true configs in safetensors metadata "config"
(not read here: see convert/layouts/ltxv.py); ComfyUI's split files carry the transformer bare or
under the same prefix. The text encoder (T5-v1.1-XXL's encoder, 128 tokens) ships separately, or
in an all-in-one ComfyUI save under `text_encoders.t5xxl.transformer.` (supported_models LTXV).
The LTX VAE (AutoencoderKLLTXVideo, 32x spatial / 8x temporal, 128 latent channels; layout ltxv_vae)
is an optional component under `vae.`, at its three released structures (0.9.0; 0.9.1: timestep-
conditioned decoder with noise injection; 0.9.5 = 0.9.7: space-to-depth encoder).

LTX-2 (audio + video, `audio_adaln_single.*`, `av_ca_*`) is another network: the ltx2 family
(families/ltx2.py); this spec lacks its audio stream, as its transformer also has every LTX-Video marker.

Released configs: diffusers' scripts/convert_ltx_to_diffusers.py `get_transformer_config`
(huggingface/diffusers@58eb52c0803ea9af3abec60841c2a093bdf1f951): "0.9.7" (13B; 0.9.8 has the same
shapes) and the else branch (0.9.0 / 0.9.1 / 0.9.5; 0.9.6 is the same 2B network), = LTX-Video
ltx_video/utils/diffusers_config_mapping.py and the Lightricks/LTX-Video transformer configs.
"""

from dataclasses import replace

from ckptkit.families.common import t5xxl, vae
from ckptkit.families.spec import ComponentSpec, FamilySpec, Has, Lacks, Release

_COMMON = dict(in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32,
               activation_fn="gelu-approximate", qk_norm="rms_norm_across_heads", norm_elementwise_affine=False,
               norm_eps=1e-6, caption_channels=4096, attention_bias=True, attention_out_bias=True)
LTXV_2B_CONFIG = dict(_COMMON, attention_head_dim=64, cross_attention_dim=2048, num_layers=28)
LTXV_13B_CONFIG = dict(_COMMON, attention_head_dim=128, cross_attention_dim=4096, num_layers=48)

# The VAE: diffusers' scripts/convert_ltx_to_diffusers.py get_vae_config("0.9.0" / "0.9.1" / "0.9.5"; "0.9.7"
# is the same dict as "0.9.5") (huggingface/diffusers@58eb52c0803ea9af3abec60841c2a093bdf1f951), = the
# Lightricks/LTX-Video diffusers vae/config.json values; 0.9.0 / 0.9.1 leave the compression ratios to the
# class (patch 4 x 2^3 = 32 spatial, 2^3 = 8 temporal)
_VAE_COMMON = dict(in_channels=3, out_channels=3, latent_channels=128, patch_size=4, patch_size_t=1,
                   resnet_norm_eps=1e-6, scaling_factor=1.0, encoder_causal=True, decoder_causal=False)
LTXV_VAE_090_CONFIG = dict(
    _VAE_COMMON, block_out_channels=[128, 256, 512, 512], down_block_types=["LTXVideoDownBlock3D"] * 4,
    decoder_block_out_channels=[128, 256, 512, 512], layers_per_block=[4, 3, 3, 3, 4],
    decoder_layers_per_block=[4, 3, 3, 3, 4], spatio_temporal_scaling=[True, True, True, False],
    decoder_spatio_temporal_scaling=[True, True, True, False], decoder_inject_noise=[False] * 5,
    downsample_type=["conv"] * 4, upsample_residual=[False] * 4, upsample_factor=[1] * 4, timestep_conditioning=False)
LTXV_VAE_091_CONFIG = dict(
    LTXV_VAE_090_CONFIG, decoder_block_out_channels=[256, 512, 1024], decoder_layers_per_block=[5, 6, 7, 8],
    decoder_spatio_temporal_scaling=[True, True, True], decoder_inject_noise=[True, True, True, False],
    upsample_residual=[True] * 3, upsample_factor=[2] * 3, timestep_conditioning=True)
LTXV_VAE_095_CONFIG = dict(
    LTXV_VAE_091_CONFIG, block_out_channels=[128, 256, 512, 1024, 2048], down_block_types=["LTXVideo095DownBlock3D"] * 4,
    layers_per_block=[4, 6, 6, 2, 2], decoder_layers_per_block=[5, 5, 5, 5], spatio_temporal_scaling=[True] * 4,
    decoder_inject_noise=[False] * 4, downsample_type=["spatial", "temporal", "spatiotemporal", "spatiotemporal"],
    spatial_compression_ratio=32, temporal_compression_ratio=8)

# ComfyUI-GGUF's lcpp.patch (LTXV) keeps adaln_single., caption_projection., patchify_proj., proj_out. and
# scale_shift_table out of quantization (tools/convert.py ModelLTXV keys_hiprec "scale_shift_table"); the
# blocks' scale_shift_table are raw parameters, kept by the policy's own rule
LTXV_HIGH_PRECISION = ("adaln_single.", "caption_projection.", "patchify_proj.", "proj_out.", "scale_shift_table")
_SOURCE = ("diffusers scripts/convert_ltx_to_diffusers.py get_transformer_config "
           "(huggingface/diffusers@58eb52c0803ea9af3abec60841c2a093bdf1f951) = LTX-Video "
           "ltx_video/utils/diffusers_config_mapping.py; ComfyUI's model_detection assumes the same 32 heads "
           "(attention_head_dim = attn2.to_k rows // 32)")
_SHAPES = {"*": _SOURCE}

SPEC = FamilySpec(
    name="ltxv",
    title="LTX-Video",
    gguf_arch="ltxv",
    pipeline="LTXPipeline",
    # diffusers' scripts/convert_ltx_to_diffusers.py (58eb52c0) writes this scheduler for 0.9.0 / 0.9.1
    # (the Lightricks/LTX-Video diffusers folder); 0.9.5 / 0.9.7 use FlowMatchEulerDiscreteScheduler(
    # use_dynamic_shifting=False). The one-step check starts at sigma 1, where neither shift changes anything
    # (LTXPipeline feeds timestep 1000)
    scheduler=dict(_class_name="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000, shift=1.0,
                   use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
                   max_image_seq_len=4096, shift_terminal=0.1),
    components=(
        ComponentSpec("diffusion_model", "diffusion_model", "model.diffusion_model.", "ltxv",
                      "LTXVideoTransformer3DModel", "transformer", config=LTXV_2B_CONFIG, released=(LTXV_13B_CONFIG,),
                      alt_prefixes=("",), high_precision=LTXV_HIGH_PRECISION),
        # ComfyUI's all-in-one saves: T5-XXL under FLUX.1's prefix; LTXPipeline's only text encoder
        replace(t5xxl("text_encoders.t5xxl.transformer."), diffusers_folder="text_encoder", optional=True),
        # Lightricks' single files carry it under `vae.` (LTX-Video's own loader and ComfyUI's vae_key_prefix)
        replace(vae("vae.", LTXV_VAE_095_CONFIG, layout="ltxv_vae"), diffusers_class="AutoencoderKLLTXVideo",
                released=(LTXV_VAE_091_CONFIG, LTXV_VAE_090_CONFIG), optional=True),
    ),
    # ComfyUI's marker (adaln_single...linear_1.bias) plus the caption projection and a block's modulation
    # table; patchify_proj tells it from PixArt in diffusers names (adaln_single / caption_projection /
    # transformer_blocks.N.scale_shift_table too, no patchify_proj); no LTX-2 audio branch
    detect=(Has("adaln_single.emb.timestep_embedder.linear_1.bias"), Has("caption_projection.linear_1.weight"),
            Has("transformer_blocks.0.scale_shift_table"), Has("patchify_proj.weight"),
            Lacks("audio_adaln_single.linear.weight")),
    # Sana's diffusers names have the first three too (no proj_in: patch_embed.proj)
    detect_diffusers=(Has("time_embed.emb.timestep_embedder.linear_1.bias"), Has("caption_projection.linear_1.weight"),
                      Has("transformer_blocks.0.scale_shift_table"), Has("proj_in.weight"),
                      Lacks("audio_time_embed.linear.weight")),
    notes="text encoder T5-XXL (encoder only) and the LTX VAE (0.9.0, 0.9.1, 0.9.5 = 0.9.7 structures): optional "
          "components; 2B (28 x 2048) and 13B (48 x 4096) are one layout; LTX-2 is the ltx2 family",
    releases=(
        Release("ltxv_2b", ("Lightricks/LTX-Video (ltx-video-2b-v0.9, v0.9.1, v0.9.5, ltxv-2b-0.9.6-dev and "
                            "-distilled)",), None, LTXV_2B_CONFIG, _SHAPES,
                description="LTX-Video 2B transformer, 0.9.0 to 0.9.6 (original names)",
                published_gguf={"q4_k_m": "1.42 GB (city96/LTX-Video-gguf ltx-video-2b-v0.9-Q4_K_M.gguf)",
                                "q8_0": "2.17 GB (calcuis/ltxv-gguf ltx-video-2b-v0.9-q8_0.gguf)"}),
        Release("ltxv_13b", ("Lightricks/LTX-Video (ltxv-13b-0.9.7-dev and -distilled, ltxv-13b-0.9.8-dev and "
                             "-distilled)",), None, LTXV_13B_CONFIG, _SHAPES,
                description="LTX-Video 13B transformer, 0.9.7 and 0.9.8 (original names)"),
    ),
)
