"""Chroma (Chroma1-HD, lodestones): a FLUX.1-schnell derivative whose modulations come from one
"approximator" (`distilled_guidance_layer`) instead of per-block modulation layers. The release
(`Chroma1-HD.safetensors`) is the transformer alone in BFL-style names, bare; ComfyUI adds
`model.diffusion_model.`. Its text encoder (T5-XXL encoder, no CLIP) and VAE (FLUX.1's
`ae.safetensors`) ship as separate files, or beside it in all-in-one files under FLUX.1's prefixes:
both are optional components here.

Released config: ChromaTransformer2DModel's defaults in diffusers 0.42.1 (transformer_chroma.py),
which diffusers' single-file loader uses for `lodestones/Chroma1-HD` and which ComfyUI's detection
hard-codes (in_dim 64, hidden_dim 5120, n_layers 5); 19 + 38 blocks of 3072 as FLUX.1.
"""

from dataclasses import replace

from ckptkit.families.common import FLUX_SCHEDULER, FLUX_VAE_CONFIG, t5xxl, vae
from ckptkit.families.spec import ComponentSpec, FamilySpec, Has, Release, Variant

CHROMA_HD_CONFIG = dict(patch_size=1, in_channels=64, out_channels=None, num_layers=19, num_single_layers=38,
                        attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                        axes_dims_rope=[16, 56, 56], approximator_num_channels=64, approximator_hidden_dim=5120,
                        approximator_layers=5)
# ComfyUI-GGUF writes Chroma as arch "flux": its lcpp.patch keeps FLUX's input/output layers out of
# quantization (time_in / vector_in / guidance_in do not exist here) and quantizes the approximator;
# stable-diffusion.cpp's keep list is the same FLUX list.
CHROMA_HIGH_PRECISION = ("img_in.", "txt_in.", "final_layer.")

SPEC = FamilySpec(
    name="chroma",
    title="Chroma",
    gguf_arch="flux",
    pipeline="ChromaPipeline",
    # FLUX.1's FlowMatchEulerDiscreteScheduler values (dynamic shifting, 0.5 / 1.15 over 256 / 4096
    # tokens): ChromaPipeline.calculate_shift falls back to exactly these. Chroma1-HD's own
    # scheduler/scheduler_config.json was not read (recalled to be the same; not verified).
    scheduler=FLUX_SCHEDULER,
    components=(
        ComponentSpec("diffusion_model", "diffusion_model", "model.diffusion_model.", "chroma",
                      "ChromaTransformer2DModel", "transformer", config=CHROMA_HD_CONFIG, alt_prefixes=("",),
                      high_precision=CHROMA_HIGH_PRECISION),
        # ComfyUI's all-in-one files: T5-XXL and the FLUX.1 VAE under FLUX.1's prefixes; ChromaPipeline's
        # T5 is its only text encoder (`text_encoder`)
        replace(t5xxl("text_encoders.t5xxl.transformer."), diffusers_folder="text_encoder", optional=True),
        replace(vae("vae.", FLUX_VAE_CONFIG, alt_prefixes=("first_stage_model.",)), optional=True),
    ),
    # the approximator is Chroma's alone (FLUX.1 and FLUX.2 have none); its diffusers names are the same
    detect=(Has("distilled_guidance_layer.in_proj.weight"), Has("double_blocks.0.img_attn.norm.key_norm.scale")),
    detect_diffusers=(Has("distilled_guidance_layer.in_proj.weight"), Has("transformer_blocks.0.attn.norm_added_k.weight")),
    variants=(Variant("chroma1-hd", (), (), "Chroma1-HD"),),
    notes="text encoder T5-XXL (encoder only) and the VAE (FLUX.1's): separate files or all-in-one",
    releases=(
        Release("chroma1_hd", ("lodestones/Chroma1-HD",), "chroma1-hd", CHROMA_HD_CONFIG, {
            "*": "ChromaTransformer2DModel defaults in diffusers 0.42.1 (transformer_chroma.py), which its single-file "
                 "loader uses for lodestones/Chroma1-HD; ComfyUI model_detection hard-codes the approximator (in_dim "
                 "64, hidden_dim 5120, n_layers 5); 19 + 38 blocks of 24 x 128 as FLUX.1"},
            description="Chroma1-HD transformer (Chroma1-HD.safetensors, BFL-style names)"),
    ),
)
