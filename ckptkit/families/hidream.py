"""HiDream-I1 (Full / Dev / Fast: one 17B mixture-of-experts transformer layout, different weights
and schedules). The release and ComfyUI's `diffusion_models/hidream_i1_*.safetensors` carry diffusers'
names (bare, or under `model.diffusion_model.`); its four text encoders (CLIP-L, CLIP-G, T5-XXL,
Llama-3.1-8B-Instruct) and the FLUX.1 VAE ship as separate files. All five are optional components,
under the prefixes a ComfyUI checkpoint save gives them (comfy/text_encoders/hidream.py HiDreamTEModel:
`clip_l`, `clip_g`, `t5xxl`, `llama`, each model under `.transformer.`; the Llama's own names start
`model.`) and in the diffusers folders text_encoder .. text_encoder_4.

Released config: ComfyUI's model_detection hard-codes it for `caption_projection.0.linear.weight`
(Comfy-Org/ComfyUI@0b61ce5b comfy/model_detection.py: attention_head_dim 128, axes_dims_rope
[64, 32, 32], caption_channels [4096, 4096], max_resolution [128, 128], num_routed_experts 4,
num_activated_experts 2, llama_layers 0..31 then 31 x 16, 16 + 32 blocks of 2560), the same values
HiDream-ai/HiDream-I1's transformer/config.json holds as quoted in public copies. The class
defaults of diffusers 0.42.1 differ (2-axis rope, no llama_layers): never relied on.
"""

from dataclasses import replace

from ckptkit.families.common import CLIP_G_CONFIG, FLUX_VAE_CONFIG, clip_l, t5xxl, vae
from ckptkit.families.components import llm_component
from ckptkit.families.spec import ComponentSpec, FamilySpec, Has, Release, Variant

HIDREAM_I1_CONFIG = dict(patch_size=2, in_channels=16, out_channels=16, num_layers=16, num_single_layers=32,
                         attention_head_dim=128, num_attention_heads=20, caption_channels=[4096, 4096],
                         text_emb_dim=2048, num_routed_experts=4, num_activated_experts=2,
                         axes_dims_rope=[64, 32, 32], max_resolution=[128, 128],
                         llama_layers=list(range(32)) + [31] * 16, force_inference_output=False)

# ComfyUI-GGUF's lcpp.patch (HIDREAM): "p_embedder." "t_embedder." "x_embedder." "final_layer."
# "caption_projection." and ".ff_i.gate.weight" (a raw nn.Parameter: quant/policy.py KEEP_PATTERNS).
HIDREAM_HIGH_PRECISION = ("p_embedder.", "t_embedder.", "x_embedder.", "final_layer.", "caption_projection.")
_SOURCE = ("ComfyUI model_detection's hard-coded HiDream config (Comfy-Org/ComfyUI@0b61ce5b "
           "comfy/model_detection.py), = HiDream-ai/HiDream-I1-{Full,Dev,Fast} transformer/config.json as quoted "
           "in public copies")

SPEC = FamilySpec(
    name="hidream",
    title="HiDream-I1",
    gguf_arch="hidream",
    pipeline="HiDreamImagePipeline",
    # HiDream-I1-Fast's schedule as diffusers runs it (flow Euler, shift 3.0, 16 steps); Full uses a
    # flow UniPC (shift 3.0) and Dev shift 6.0: the same one-step Euler from t = 1 either way.
    scheduler=dict(_class_name="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000, shift=3.0),
    components=(
        ComponentSpec("diffusion_model", "diffusion_model", "model.diffusion_model.", "hidream",
                      "HiDreamImageTransformer2DModel", "transformer", config=HIDREAM_I1_CONFIG,
                      alt_prefixes=("",), high_precision=HIDREAM_HIGH_PRECISION),
        replace(clip_l("text_encoders.clip_l.transformer."), diffusers_class="CLIPTextModelWithProjection",
                optional=True),
        ComponentSpec("clip_g", "text_encoder", "text_encoders.clip_g.transformer.", "hf_clip",
                      "CLIPTextModelWithProjection", "text_encoder_2", config=CLIP_G_CONFIG, optional=True,
                      high_precision=("text_model.embeddings.", "text_model.final_layer_norm.", "text_projection.")),
        replace(t5xxl("text_encoders.t5xxl.transformer."), diffusers_folder="text_encoder_3", optional=True),
        # Llama-3.1-8B-Instruct (diffusers: text_encoder_4, LlamaForCausalLM): no released config here, as
        # for every LLM encoder (what the shapes leave open comes from the file's config or --config)
        replace(llm_component("llama", "LlamaForCausalLM"), prefix="text_encoders.llama.transformer.",
                diffusers_folder="text_encoder_4", optional=True),
        # ComfyUI's all-in-one files: the FLUX.1 VAE under `vae.` (its own `first_stage_model.` is read too)
        replace(vae("vae.", FLUX_VAE_CONFIG, alt_prefixes=("first_stage_model.",)), optional=True),
    ),
    detect=(Has("double_stream_blocks.0.block.adaLN_modulation.1.weight"), Has("caption_projection.0.linear.weight")),
    detect_diffusers=(Has("double_stream_blocks.0.block.adaLN_modulation.1.weight"),
                      Has("caption_projection.0.linear.weight")),
    variants=(Variant("i1", (), (), "HiDream-I1 Full / Dev / Fast: one layout (the weights cannot tell them apart)"),),
    notes="text encoders CLIP-L, CLIP-G, T5-XXL, Llama-3.1-8B-Instruct and the FLUX.1 VAE ship as separate "
          "files: optional components",
    releases=(
        Release("hidream_i1", ("HiDream-ai/HiDream-I1-Full", "HiDream-ai/HiDream-I1-Dev", "HiDream-ai/HiDream-I1-Fast"),
                "i1", HIDREAM_I1_CONFIG, {"*": _SOURCE,
                                          "text_emb_dim": "2048 = CLIP-L 768 + CLIP-G 1280 pooled widths",
                                          "caption_channels": "[T5-XXL 4096, Llama-3.1-8B 4096] hidden widths",
                                          "force_inference_output": "class default (not a weights matter)"},
                description="HiDream-I1 transformer (hidream_i1_*_bf16.safetensors), diffusers names",
                published_gguf={"q8_0": "18.7 GB (city96/HiDream-I1-Fast-gguf hidream-i1-fast-Q8_0.gguf)"}),
    ),
)
