"""Lumina 2 (Alpha-VLLM's Lumina-Image-2.0, a 2.6B NextDiT; Neta-Lumina and other finetunes share it).
ComfyUI's split file (`diffusion_models/lumina_2_model_bf16.safetensors`) and Alpha-VLLM's release use
NextDiT's original names (convert/layouts/lumina2.py), bare or under `model.diffusion_model.`. The text
encoder (Gemma-2-2B, `hidden_states[-2]`; a standalone LLM component) and the VAE (FLUX.1's
16-channel AutoencoderKL; an optional component here) ship as separate files (or beside it in
ComfyUI's all-in-one `lumina_2.safetensors`).

Told from Z-Image (the same original layout) by structure: modulation behind a SiLU
(`layers.N.adaLN_modulation.1`, Z-Image's is `.0`) and no pad tokens; ComfyUI uses the width
(`cap_embedder.1.weight` rows 2304, Z-Image 3840), which is not used here.
"""

from dataclasses import replace

from ckptkit.families.common import FLUX_VAE_CONFIG, vae
from ckptkit.families.spec import ComponentSpec, FamilySpec, Has, Lacks, Release

# Alpha-VLLM/Lumina-Image-2.0 transformer/config.json (_diffusers_version 0.33.0.dev0) as quoted in public
# copies; the Lumina2Transformer2DModel defaults of diffusers 0.42.1 are the same but cap_feat_dim (1024 there;
# 2304 = Gemma-2-2B's width in the release). ComfyUI's model_detection (dim 2304 branch) agrees on 24 heads,
# 8 kv heads, axes [32, 32, 32] and lens [300, 512, 512]. FFN width 9216 = round_up(4 x 2304, 256).
LUMINA2_CONFIG = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=None, hidden_size=2304,
                      num_layers=26, num_refiner_layers=2, num_attention_heads=24, num_kv_heads=8, multiple_of=256,
                      ffn_dim_multiplier=None, norm_eps=1e-5, scaling_factor=1.0, axes_dim_rope=[32, 32, 32],
                      axes_lens=[300, 512, 512], cap_feat_dim=2304)

# ComfyUI-GGUF's lcpp.patch (auto_convert branch), LUMINA2 exclusions: the embedders, the output layer and
# both refiners stay out of quantization.
NEXTDIT_HIGH_PRECISION = ("t_embedder.", "x_embedder.", "final_layer.", "cap_embedder.", "context_refiner.",
                          "noise_refiner.")

SPEC = FamilySpec(
    name="lumina2",
    title="Lumina 2",
    gguf_arch="lumina2",  # ComfyUI-GGUF's ModelLumina2 / loader IMG_ARCH_LIST
    pipeline="Lumina2Pipeline",
    # FlowMatchEulerDiscreteScheduler with shift 6.0 and no dynamic shifting: ComfyUI's Lumina2 sampling
    # settings (comfy/supported_models.py, shift 6.0) and, as recalled but NOT verified here, the
    # Alpha-VLLM/Lumina-Image-2.0 scheduler/scheduler_config.json. With one step from sigma 1 the shift
    # does not matter.
    scheduler=dict(_class_name="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000, shift=6.0,
                   use_dynamic_shifting=False),
    components=(
        ComponentSpec("diffusion_model", "diffusion_model", "model.diffusion_model.", "lumina2",
                      "Lumina2Transformer2DModel", "transformer", config=LUMINA2_CONFIG, alt_prefixes=("",),
                      high_precision=NEXTDIT_HIGH_PRECISION),
        # ComfyUI's all-in-one files: the FLUX.1 VAE under `vae.` (its own `first_stage_model.` is read too)
        replace(vae("vae.", FLUX_VAE_CONFIG, alt_prefixes=("first_stage_model.",)), optional=True),
    ),
    detect=(Has("cap_embedder.1.weight"), Has("layers.0.adaLN_modulation.1.weight"),
            Has("layers.0.attention.qkv.weight"), Lacks("x_pad_token")),
    detect_diffusers=(Has("time_caption_embed.caption_embedder.1.weight"), Has("layers.0.norm1.linear.weight"),
                      Has("layers.0.attn.to_q.weight")),
    notes="text encoder Gemma-2-2B (a standalone component) and the VAE (FLUX.1's, optional here)",
    releases=(
        Release("lumina_image_2", ("Alpha-VLLM/Lumina-Image-2.0",), None, LUMINA2_CONFIG, {
            "*": "Alpha-VLLM/Lumina-Image-2.0 transformer/config.json (_diffusers_version 0.33.0.dev0) as quoted in "
                 "public copies; ComfyUI model_detection (dim 2304 branch, Comfy-Org/ComfyUI@0b61ce5b) agrees on 24 "
                 "heads, 8 kv heads, axes [32, 32, 32] and lens [300, 512, 512]",
            "cap_feat_dim": "2304: the hidden size of Gemma-2-2B, its text encoder (the class default is 1024)",
            "multiple_of": "256: the FFN width 9216 = round_up(4 x 2304, 256)"},
            description="Lumina-Image-2.0 transformer (lumina_2_model_bf16.safetensors, NextDiT names)",
            published_gguf={"q8_0": "2.77 GB (calcuis/lumina-gguf lumina2-q8_0.gguf)",
                            "q4_k_m": "1.47 GB (calcuis/lumina-gguf lumina2-q4_k_m.gguf, the same size as its q4_0: "
                                      "not llama.cpp's Q4_K_M mix)"}),
    ),
)
