"""LTX-2 (Lightricks): the 19B audio-video DiT, diffusers `LTX2VideoTransformer3DModel` — a video stream
(48 blocks of 4096 = 32 heads x 128) and an audio stream (2048 = 32 x 64) with audio<->video
cross-attention. Lightricks' single files (`ltx-2-19b-dev.safetensors`, `-distilled`, LTX-2.3's) hold the
transformer under `model.diffusion_model.` in the original names (convert/layouts/ltx2.py), with the
Gemma text connectors inside it (`video_embeddings_connector.`, `audio_embeddings_connector.`: kept with
the diffusion model, listed as dropped on the way to diffusers, where they are `LTX2TextConnectors`), and
beside it the video VAE (`vae.`: the optional `vae` component, AutoencoderKLLTX2Video, layout ltx2_vae),
the audio VAE (`audio_vae.`) and the vocoder (`vocoder.`): those two are not components here, their
tensors stay unclaimed (reported, never silently dropped).

The text encoder is Gemma-3-12B (caption_channels 3840; its hidden states of all 49 layers feed the
connectors' projection): a separate download, not a component here (ckptkit's LLM components know
Gemma-2, not Gemma-3's multimodal checkpoint).

Released configs: diffusers' scripts/convert_ltx2_to_diffusers.py `get_ltx2_transformer_config`
"2.0" (Lightricks/LTX-2) and "2.3" (Lightricks/LTX-2.3), huggingface/diffusers@58eb52c0803ea9af3abec60841c2a093bdf1f951.
2.3 adds gated attention, the prompt cross-attention modulation and perturbed attention and drops
the caption projections (its connectors project per modality); "2.5" (Gemma-4, no FFN bias) is not
declared here (its caption width comes from the Gemma-4 config).

GGUF: ComfyUI-GGUF (city96/ComfyUI-GGUF@795e45156ece99afbc3efef911e63fcb46e6a20d) has no LTX-2 arch:
loader.py IMG_ARCH_LIST has "ltxv" and no "ltxav"/"ltx2"; tools/convert.py's ModelLTXV keys_detect
(adaln_single...linear_2, transformer_blocks.27.scale_shift_table, caption_projection.linear_2) also
holds for a 2.0 file, so its converter writes LTX-2 2.0 as "ltxv" (2.3, without caption_projection,
matches no template). The loader only checks the arch against IMG_ARCH_LIST; ComfyUI's own
model_detection then tells LTX-2 by `audio_adaln_single.linear.weight` (image_model "ltxav"). So
"ltxv" is what ComfyUI-GGUF needs here.
"""

from dataclasses import replace

from ckptkit.families.common import vae
from ckptkit.families.spec import ComponentSpec, FamilySpec, Has, Lacks, Release, Variant

_SRC = "huggingface/diffusers@58eb52c0803ea9af3abec60841c2a093bdf1f951 scripts/convert_ltx2_to_diffusers.py get_ltx2_transformer_config"
# get_ltx2_transformer_config("2.0")["diffusers_config"], as written there
LTX2_CONFIG = dict(
    in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32, attention_head_dim=128,
    cross_attention_dim=4096, vae_scale_factors=[8, 32, 32], pos_embed_max_pos=20, base_height=2048, base_width=2048,
    gated_attn=False, cross_attn_mod=False, audio_in_channels=128, audio_out_channels=128, audio_patch_size=1,
    audio_patch_size_t=1, audio_num_attention_heads=32, audio_attention_head_dim=64, audio_cross_attention_dim=2048,
    audio_scale_factor=4, audio_pos_embed_max_pos=20, audio_sampling_rate=16000, audio_hop_length=160,
    audio_gated_attn=False, audio_cross_attn_mod=False, num_layers=48, activation_fn="gelu-approximate",
    qk_norm="rms_norm_across_heads", norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=3840,
    attention_bias=True, attention_out_bias=True, rope_theta=10000.0, rope_double_precision=True, causal_offset=1,
    timestep_scale_multiplier=1000, cross_attn_timestep_scale_multiplier=1000, rope_type="split",
    use_prompt_embeddings=True, perturbed_attn=False)
# get_ltx2_transformer_config("2.3"): the 2.0 config but these
LTX2_3_CONFIG = dict(LTX2_CONFIG, gated_attn=True, cross_attn_mod=True, audio_gated_attn=True,
                     audio_cross_attn_mod=True, use_prompt_embeddings=False, perturbed_attn=True)

# The video VAE: diffusers' scripts/convert_ltx2_to_diffusers.py get_ltx2_video_vae_config("2.0" / "2.3")
# ["diffusers_config"] (58eb52c0), as written there with timestep_conditioning=False (main() passes
# args.timestep_conditioning, a store_true flag; the released files have no `decoder.last_time_embedder`), and
# scaling_factor 1.0, AutoencoderKLLTX2Video.__init__'s default the script leaves to from_config (LTX2Pipeline
# de-normalises z * latents_std / scaling_factor + latents_mean)
_VAE_COMMON = dict(in_channels=3, out_channels=3, latent_channels=128, down_block_types=["LTX2VideoDownBlock3D"] * 4,
                   spatio_temporal_scaling=[True] * 4,
                   downsample_type=["spatial", "temporal", "spatiotemporal", "spatiotemporal"],
                   timestep_conditioning=False, patch_size=4, patch_size_t=1, resnet_norm_eps=1e-6, scaling_factor=1.0,
                   encoder_causal=True, decoder_causal=False, encoder_spatial_padding_mode="zeros",
                   spatial_compression_ratio=32, temporal_compression_ratio=8)
LTX2_VAE_CONFIG = dict(
    _VAE_COMMON, block_out_channels=[256, 512, 1024, 2048], decoder_block_out_channels=[256, 512, 1024],
    layers_per_block=[4, 6, 6, 2, 2], decoder_layers_per_block=[5, 5, 5, 5], decoder_spatio_temporal_scaling=[True] * 3,
    decoder_inject_noise=[False] * 4, upsample_type=["spatiotemporal"] * 3, upsample_residual=[True] * 3,
    upsample_factor=[2, 2, 2], decoder_spatial_padding_mode="reflect")
LTX2_3_VAE_CONFIG = dict(
    _VAE_COMMON, block_out_channels=[256, 512, 1024, 1024], decoder_block_out_channels=[256, 512, 512, 1024],
    layers_per_block=[4, 6, 4, 2, 2], decoder_layers_per_block=[4, 6, 4, 2, 2],
    decoder_spatio_temporal_scaling=[True] * 4, decoder_inject_noise=[False] * 5,
    upsample_type=["spatiotemporal", "spatiotemporal", "temporal", "spatial"], upsample_residual=[False] * 4,
    upsample_factor=[2, 2, 1, 2], decoder_spatial_padding_mode="zeros")

# LTX-Video's rules (families/ltxv.py: ComfyUI-GGUF lcpp.patch LTXV keeps names *containing* adaln_single.,
# caption_projection., patchify_proj., proj_out., scale_shift_table), spelled out for the audio / av / prompt
# copies, which contain those substrings but do not start with them (our rules are prefixes)
LTX2_HIGH_PRECISION = (
    "adaln_single.", "audio_adaln_single.", "av_ca_", "prompt_adaln_single.", "audio_prompt_adaln_single.",
    "caption_projection.", "audio_caption_projection.", "patchify_proj.", "audio_patchify_proj.",
    "proj_out.", "audio_proj_out.", "scale_shift_table", "audio_scale_shift_table")

SPEC = FamilySpec(
    name="ltx2",
    title="LTX-2",
    gguf_arch="ltxv",
    pipeline="LTX2Pipeline",
    # scripts/convert_ltx2_to_diffusers.py (58eb52c0) main(), the non-distilled scheduler; the one-step
    # check starts at sigma 1, where no shift changes anything (LTX2Pipeline feeds timestep 1000)
    scheduler=dict(_class_name="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000, shift=1.0,
                   use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
                   max_image_seq_len=4096, shift_terminal=0.1),
    components=(
        ComponentSpec("diffusion_model", "diffusion_model", "model.diffusion_model.", "ltx2",
                      "LTX2VideoTransformer3DModel", "transformer", config=LTX2_CONFIG, released=(LTX2_3_CONFIG,),
                      alt_prefixes=("",), high_precision=LTX2_HIGH_PRECISION),
        # the video VAE under `vae.` (the script's --vae_prefix default); kept out of quantization as every VAE
        replace(vae("vae.", LTX2_VAE_CONFIG, layout="ltx2_vae"), diffusers_class="AutoencoderKLLTX2Video",
                released=(LTX2_3_VAE_CONFIG,), optional=True),
    ),
    # LTX-Video's markers plus the audio stream and the audio<->video gates (ComfyUI: "ltxav" iff
    # audio_adaln_single.linear.weight); listed before ltxv, whose specs lack these
    detect=(Has("adaln_single.emb.timestep_embedder.linear_1.bias"), Has("patchify_proj.weight"),
            Has("audio_patchify_proj.weight"), Has("audio_adaln_single.linear.weight"),
            Has("av_ca_a2v_gate_adaln_single.linear.weight")),
    detect_diffusers=(Has("time_embed.emb.timestep_embedder.linear_1.bias"), Has("proj_in.weight"),
                      Has("audio_proj_in.weight"), Has("audio_time_embed.linear.weight"),
                      Has("av_cross_attn_video_a2v_gate.linear.weight")),
    variants=(
        # 2.3: gated attention and the prompt modulation, FFN biases (2.5 drops the video FFN's)
        Variant("2.3", when=(Has("transformer_blocks.0.attn1.to_gate_logits.weight"),
                             Has("transformer_blocks.0.prompt_scale_shift_table"),
                             Has("transformer_blocks.0.ff.net.0.proj.bias")),
                when_diffusers=(Has("transformer_blocks.0.attn1.to_gate_logits.weight"),
                                Has("transformer_blocks.0.prompt_scale_shift_table"),
                                Has("transformer_blocks.0.ff.net.0.proj.bias")),
                description="LTX-2.3 (gated attention, prompt modulation, no caption projection)"),
        Variant("2.0", when=(Has("caption_projection.linear_1.weight"),
                             Lacks("transformer_blocks.0.attn1.to_gate_logits.weight")),
                when_diffusers=(Has("caption_projection.linear_1.weight"),
                                Lacks("transformer_blocks.0.attn1.to_gate_logits.weight")),
                description="LTX-2 (19B, caption projections, no gated attention)"),
    ),
    notes="text encoder Gemma-3-12B ships separately (not a component); the text connectors "
          "(video_/audio_embeddings_connector) stay with the diffusion model in original names and are "
          "listed as dropped on the way to diffusers (LTX2TextConnectors); the video VAE (vae.) is an optional "
          "component (AutoencoderKLLTX2Video, 2.0 and 2.3 structures); the audio VAE and vocoder are not "
          "components (audio_vae., vocoder. stay unclaimed); "
          "GGUF arch 'ltxv' (ComfyUI-GGUF has no LTX-2 arch)",
    releases=(
        Release("ltx2_19b", ("Lightricks/LTX-2 (ltx-2-19b-dev, ltx-2-19b-distilled; transformer only: the "
                             "files also hold the text connectors, VAEs and vocoder)",), "2.0", LTX2_CONFIG,
                {"*": _SRC + ' "2.0"'}, description="LTX-2 19B audio-video transformer (original names)"),
        Release("ltx2_3", ("Lightricks/LTX-2.3 (transformer only: the files also hold the text connectors, "
                           "VAEs and vocoder)",), "2.3", LTX2_3_CONFIG, {"*": _SRC + ' "2.3"'},
                description="LTX-2.3 audio-video transformer (original names)"),
    ),
)
