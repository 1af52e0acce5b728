"""Z-Image (Tongyi-MAI, 6B single-stream DiT; Z-Image-Turbo). ComfyUI's split file
(`diffusion_models/z_image_turbo_bf16.safetensors`) uses NextDiT's original names (the layout Lumina 2
shares, convert/layouts/z_image.py), bare or under `model.diffusion_model.`. The text encoder
(Qwen3-4B, `hidden_states[-2]`; a standalone LLM component, families/components.py) and the VAE
(FLUX.1's 16-channel AutoencoderKL; an optional component here) ship as separate files.

Told from Lumina 2 by structure, not width: Z-Image has the pad tokens `x_pad_token` / `cap_pad_token`
and modulation without a SiLU in front (`layers.N.adaLN_modulation.0`; Lumina 2's is `.1`). ComfyUI
tells them apart by `cap_embedder.1.weight` rows (3840 here, 2304 Lumina 2), a width, not used here.
Z-Image (base) and Z-Image-Turbo share this config and layout (the weights cannot tell them apart);
only their schedulers' shift differs (6.0 / 3.0).
"""

from dataclasses import replace

from ckptkit.families.common import FLUX_VAE_CONFIG, vae
from ckptkit.families.lumina2 import NEXTDIT_HIGH_PRECISION
from ckptkit.families.spec import ComponentSpec, FamilySpec, Has, Release

# Tongyi-MAI/Z-Image-Turbo transformer/config.json (_diffusers_version 0.36.0.dev0), as quoted verbatim
# in public copies; ComfyUI's model_detection (dim 3840 branch) agrees on heads, kv heads, axes, lens,
# rope_theta and time scale. axes_lens [1536, 512, 512] is not the class default ([1024, 512, 512]).
# siglip_feat_dim: absent (None) in Turbo's config; set only by Z-Image Omni.
Z_IMAGE_CONFIG = dict(all_patch_size=[2], all_f_patch_size=[1], in_channels=16, dim=3840, n_layers=30,
                      n_refiner_layers=2, n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560,
                      siglip_feat_dim=None, rope_theta=256.0, t_scale=1000.0, axes_dims=[32, 48, 48],
                      axes_lens=[1536, 512, 512])

# ComfyUI-GGUF's lcpp.patch (auto_convert branch) keeps these LUMINA2 prefixes out of quantization,
# the pad tokens marked "z-image" (they are 1-D/F32 anyway; kept whole, shape (1, dim), as its loader wants).
Z_IMAGE_HIGH_PRECISION = NEXTDIT_HIGH_PRECISION + ("x_pad_token", "cap_pad_token")

SPEC = FamilySpec(
    name="z_image",
    title="Z-Image",
    gguf_arch="lumina2",  # ComfyUI-GGUF's ModelLumina2 writes both Lumina 2 and Z-Image as "lumina2"
    pipeline="ZImagePipeline",
    # Tongyi-MAI/Z-Image-Turbo scheduler/scheduler_config.json as quoted in public copies (not read from the
    # hub here): num_train_timesteps 1000, use_dynamic_shifting false, shift 3.0 (ComfyUI's ZImage sampling
    # shift is 3.0 too). Z-Image (base) says shift 6.0. With one step from sigma 1 the shift does not matter.
    scheduler=dict(_class_name="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000, shift=3.0,
                   use_dynamic_shifting=False),
    components=(
        ComponentSpec("diffusion_model", "diffusion_model", "model.diffusion_model.", "z_image",
                      "ZImageTransformer2DModel", "transformer", config=Z_IMAGE_CONFIG, alt_prefixes=("",),
                      high_precision=Z_IMAGE_HIGH_PRECISION),
        # ComfyUI's all-in-one files: the FLUX.1 VAE under `vae.` (its own `first_stage_model.` is read too)
        replace(vae("vae.", FLUX_VAE_CONFIG, alt_prefixes=("first_stage_model.",)), optional=True),
    ),
    detect=(Has("x_pad_token"), Has("cap_pad_token"), Has("layers.0.adaLN_modulation.0.weight"),
            Has("layers.0.attention.qkv.weight")),
    detect_diffusers=(Has("x_pad_token"), Has("cap_pad_token"), Has("layers.0.adaLN_modulation.0.weight"),
                      Has("layers.0.attention.to_q.weight")),
    notes="text encoder Qwen3-4B (a standalone component) and the VAE (FLUX.1's, optional here)",
    releases=(
        Release("z_image_turbo", ("Tongyi-MAI/Z-Image-Turbo", "Tongyi-MAI/Z-Image"), None, Z_IMAGE_CONFIG, {
            "*": "Tongyi-MAI/Z-Image-Turbo transformer/config.json (_diffusers_version 0.36.0.dev0) as quoted "
                 "verbatim in public copies; ComfyUI model_detection (dim 3840 branch, Comfy-Org/ComfyUI@0b61ce5b) "
                 "agrees on n_heads, n_kv_heads, axes_dims, axes_lens, rope_theta and t_scale",
            "cap_feat_dim": "2560: the hidden size of Qwen3-4B, its text encoder",
            "axes_lens": "[1536, 512, 512] per the release config (the class default is [1024, 512, 512])",
            "siglip_feat_dim": "absent (None) in Turbo's config; only Z-Image Omni sets it"},
            description="Z-Image transformer (z_image_turbo_bf16.safetensors as ComfyUI ships it, NextDiT names)",
            published_gguf={"q8_0": "6.58 GB (leejet/Z-Image-Turbo-GGUF z_image_turbo-Q8_0.gguf, 6,577,440,704 bytes: "
                                    "stable-diffusion.cpp's convert, which also quantizes the refiners and 1-D "
                                    "weights that ComfyUI-GGUF keeps)"}),
    ),
)
