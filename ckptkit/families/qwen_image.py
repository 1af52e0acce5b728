"""Qwen-Image (20B MMDiT) and its edits. ComfyUI's split files (`diffusion_models/qwen_image*.safetensors`)
carry diffusers' own names, bare or under `model.diffusion_model.`; the text encoder (Qwen2.5-VL 7B)
and the VAE (a Wan-2.1-style causal 3-D VAE) ship as separate files.

Released configs (diffusers `transformer/config.json` of each Qwen/* repo; the 20B defaults of
`QwenImageTransformer2DModel` in diffusers 0.42.1 are the same values): see manifests/qwen_image.json.
Qwen-Image, -2512, -Edit and -Edit-2509 share one config; Edit-2511 adds `zero_cond_t` (the same
weights: a file cannot say which it is, so converting one needs its config); Layered adds an extra
time embedding (detectable) and 3-D rotary positions.
"""

from dataclasses import replace

from ckptkit.families.common import vae
from ckptkit.families.spec import ComponentSpec, FamilySpec, Has, Release, Variant

QWEN_IMAGE_CONFIG = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                         num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False,
                         axes_dims_rope=[16, 56, 56], zero_cond_t=False, use_additional_t_cond=False,
                         use_layer3d_rope=False)
QWEN_IMAGE_EDIT_2511_CONFIG = dict(QWEN_IMAGE_CONFIG, zero_cond_t=True)
QWEN_IMAGE_LAYERED_CONFIG = dict(QWEN_IMAGE_CONFIG, use_additional_t_cond=True, use_layer3d_rope=True)

# The VAE (`AutoencoderKLQwenImage`; ComfyUI's vae/qwen_image_vae.safetensors in Wan 2.1's names,
# layout "wan_vae"): the defaults of AutoencoderKLQwenImage.__init__ in diffusers 0.42.1
# (models/autoencoders/autoencoder_kl_qwenimage.py), the values of Qwen/Qwen-Image's vae/config.json
# as public copies quote it (z_dim 16, temperal_downsample [false, true, true]); base_dim, z_dim,
# dim_mult, num_res_blocks, attn_scales and temperal_downsample are also read from the weights.
# latents_mean / latents_std (not in the weights) normalise the latents (QwenImagePipeline).
QWEN_IMAGE_VAE_CONFIG = dict(
    base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
    temperal_downsample=[False, True, True], dropout=0.0, input_channels=3,
    latents_mean=[-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                  0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
    latents_std=[2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916])

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
        # the Wan-2.1-style VAE, usually its own file; all-in-one repacks put it under `vae.`
        replace(vae("vae.", QWEN_IMAGE_VAE_CONFIG, layout="wan_vae", alt_prefixes=("first_stage_model.",)),
                diffusers_class="AutoencoderKLQwenImage", optional=True),
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
    notes="text encoder Qwen2.5-VL-7B and the VAE ship as separate files; the VAE (AutoencoderKLQwenImage, "
          "Wan 2.1 layout) is an optional component",
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
                published_gguf={"q8_0": "21.8 GB (calcuis/qwen-image-edit-gguf qwen-image-edit-q8_0.gguf)",
                                "q4_k_m": "13.1 GB (QuantStack/Qwen-Image-GGUF Qwen_Image-Q4_K_M.gguf; also "
                                          "-Edit, -Edit-2509; -Edit-2511 as quoted in ckptkit issue 16)"}),
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
