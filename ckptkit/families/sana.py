"""Sana and Sana-Sprint (NVlabs `.pth` with a `state_dict`, transformer only)."""

from ckptkit.families.common import SANA_SCHEDULER, SANA_SPRINT_SCHEDULER
from ckptkit.families.spec import ComponentSpec, FamilySpec, Has, Lacks, Variant

SANA_1600M_CONFIG = dict(in_channels=32, out_channels=32, num_attention_heads=70, attention_head_dim=32,
                         num_layers=20, num_cross_attention_heads=20, cross_attention_head_dim=112,
                         cross_attention_dim=2240, caption_channels=2304, mlp_ratio=2.5, dropout=0.0,
                         attention_bias=False, sample_size=32, patch_size=1, norm_elementwise_affine=False,
                         norm_eps=1e-6, interpolation_scale=None)
# Efficient-Large-Model/Sana_600M_1024px_diffusers (and Sana-Sprint 0.6B): 28 blocks of 1152, 16 x 72 cross heads
SANA_600M_CONFIG = dict(SANA_1600M_CONFIG, num_attention_heads=36, num_layers=28, num_cross_attention_heads=16,
                        cross_attention_head_dim=72, cross_attention_dim=1152)
# SANA 1.5 4.8B: the 1600M's width and heads, 60 blocks
SANA_4800M_CONFIG = dict(SANA_1600M_CONFIG, num_layers=60)
SANA_HIGH_PRECISION = ("x_embedder.", "t_embedder.", "t_block.", "y_embedder.", "cfg_embedder.", "pos_embed",
                       "final_layer.", "attention_y_norm.")

SPEC = FamilySpec(
    name="sana",
    title="Sana / Sana-Sprint",
    gguf_arch="sana",
    pipeline="SanaPipeline",
    scheduler=SANA_SCHEDULER,
    components=(
        ComponentSpec("diffusion_model", "diffusion_model", "", "sana", "SanaTransformer2DModel", "transformer",
                      config=SANA_1600M_CONFIG, released=(SANA_600M_CONFIG, SANA_4800M_CONFIG), alt_prefixes=("model.diffusion_model.",),
                      high_precision=SANA_HIGH_PRECISION),
    ),
    detect=(Has("blocks.0.mlp.inverted_conv.conv.weight"), Has("attention_y_norm.weight")),
    detect_diffusers=(Has("transformer_blocks.0.ff.conv_inverted.weight"), Has("caption_norm.weight")),
    variants=(
        Variant("sana-sprint", (Has("cfg_embedder.mlp.0.weight"),),
                (Has("time_embed.guidance_embedder.linear_1.weight"),), "TrigFlow / sCM, guidance embedding",
                pipeline="SanaSprintPipeline", scheduler=SANA_SPRINT_SCHEDULER),
        Variant("sana-1.5", (Has("blocks.0.attn.q_norm.weight"), Lacks("cfg_embedder.mlp.0.weight")),
                (Has("transformer_blocks.0.attn1.norm_q.weight"),), "flow model with QK RMSNorm"),
        Variant("sana"),
    ),
)
