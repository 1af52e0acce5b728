"""Qwen-Image (20B MMDiT) and its edits. ComfyUI's split files (`diffusion_models/qwen_image*.safetensors`)
carry diffusers' own names, bare or under `model.diffusion_model.`; the text encoder (Qwen2.5-VL 7B)
and the VAE (a Wan-2.1-style causal 3-D VAE) ship as separate files.

Released configs (diffusers `transformer/config.json` of each Qwen/* repo; the 20B defaults of
`QwenImageTransformer2DModel` in diffusers 0.42.1 are the same values): see manifests/qwen_image.json.
Qwen-Image, -2512, -Edit and -Edit-2509 share one config; Edit-2511 adds `zero_cond_t` (the same
weights: a file cannot say which it is, so converting one needs its config); Layered adds an extra
time embedding (detectable) and 3-D rotary positions.
"""

from ckptkit.families.spec import ComponentSpec, FamilySpec, Has, Release, Variant

QWEN_IMAGE_CONFIG = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                         num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False,
                         axes_dims_rope=[16, 56, 56], zero_cond_t=False, use_additional_t_cond=False,
                         use_layer3d_rope=False)
QWEN_IMAGE_EDIT_2511_CONFIG = dict(QWEN_IMAGE_CONFIG, zero_cond_t=True)
QWEN_IMAGE_LAYERED_CONFIG = dict(QWEN_IMAGE_CONFIG, use_additional_t_cond=True, use_layer3d_rope=True)

# ComfyUI-GGUF's lcpp.patch keeps these out of quantization (1-D and small tensors aside): the
# embedders and the output layer; stable-diffusion.cpp keeps the same. Its patch also raises the
# first and last block (`edge_blocks`: Q5_K at Q4_K_M), there hard-coded as blocks 0 and 59.
QWEN_IMAGE_HIGH_PRECISION = ("img_in.", "txt_in.", "txt_norm.", "time_text_embed.", "norm_out.", "proj_out.")

SPEC = FamilySpec(
    name="qwen_image",
    title="Qwen-Image",
    gguf_arch="qwen_image",
    pipeline="QwenImagePipeline",
    scheduler=dict(_class_name="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000, shift=1.0,
                   use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
                   max_image_seq_len=8192, time_shift_type="exponential", shift_terminal=0.02),
    components=(
        ComponentSpec("diffusion_model", "diffusion_model", "model.diffusion_model.", "qwen_image",
                      "QwenImageTransformer2DModel", "transformer", config=QWEN_IMAGE_CONFIG,
                      released=(QWEN_IMAGE_EDIT_2511_CONFIG, QWEN_IMAGE_LAYERED_CONFIG),
                      alt_prefixes=("",), high_precision=QWEN_IMAGE_HIGH_PRECISION,
                      edge_blocks="transformer_blocks."),
    ),
    detect=(Has("transformer_blocks.0.img_mod.1.weight"), Has("transformer_blocks.0.txt_mod.1.weight"),
            Has("txt_norm.weight")),
    detect_diffusers=(Has("transformer_blocks.0.img_mod.1.weight"), Has("transformer_blocks.0.txt_mod.1.weight"),
                      Has("txt_norm.weight")),
    variants=(
        Variant("layered", (Has("time_text_embed.addition_t_embedding.weight"),),
                (Has("time_text_embed.addition_t_embedding.weight"),), "Qwen-Image-Layered (RGBA layers)"),
        Variant("qwen-image", (), (),
                "Qwen-Image / -2512 / -Edit / -Edit-2509 / -Edit-2511: the same weights layout "
                "(Edit-2511's zero_cond_t is not in the weights)"),
    ),
    notes="text encoder Qwen2.5-VL-7B and the VAE ship as separate files",
    releases=(
        Release("qwen_image", ("Qwen/Qwen-Image", "Qwen/Qwen-Image-2512", "Qwen/Qwen-Image-Edit",
                               "Qwen/Qwen-Image-Edit-2509", "Qwen/Qwen-Image-Edit-2511"),
                "qwen-image", QWEN_IMAGE_CONFIG, {
                    "*": "QwenImageTransformer2DModel.__init__ defaults in diffusers 0.42.1 "
                         "(models/transformers/transformer_qwenimage.py), the same values as the "
                         "transformer/config.json of Qwen/Qwen-Image and Qwen/Qwen-Image-Edit as quoted in "
                         "public copies (_diffusers_version 0.34.0.dev0 / 0.35.0.dev0)",
                    "zero_cond_t": "False for Qwen-Image/-Edit/-2509 (class default); Qwen-Image-Edit-2511's "
                                   "config says true: the same weights, so this manifest covers 2511 too",
                    "num_layers": "60: also ComfyUI model_detection (count of transformer_blocks.) and "
                                  "ComfyUI-GGUF lcpp.patch's hard-coded last block transformer_blocks.59.",
                    "joint_attention_dim": "3584: the hidden size of Qwen2.5-VL-7B, its text encoder",
                },
                description="Qwen-Image transformer (qwen_image_bf16.safetensors as ComfyUI ships it: diffusers "
                            "names, bare or under model.diffusion_model.)",
                published_gguf={"q4_k_m": "13.1 GB (Qwen-Image-Edit-2511 Q4_K_M, quoted in ckptkit issue 16)"}),
        Release("qwen_image_layered", ("Qwen/Qwen-Image-Layered",), "layered", QWEN_IMAGE_LAYERED_CONFIG, {
                    "*": "as qwen_image (diffusers 0.42.1 class defaults)",
                    "use_additional_t_cond": "true: the only option that adds time_text_embed.addition_t_embedding "
                                             "(checked by building the class), the tensor ComfyUI and "
                                             "stable-diffusion.cpp detect Layered by",
                    "use_layer3d_rope": "true per Qwen-Image-Layered's transformer/config.json (not checked here; "
                                        "not in the weights)",
                }, description="Qwen-Image-Layered transformer (RGBA layer decomposition)"),
    ),
)
