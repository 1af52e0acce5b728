"""PixArt-alpha / sigma: detected and named so that it is never mistaken for Sana (diffusers'
`infer_diffusers_model_type` calls it "sana"). Not converted: no layout map."""

from ckptkit.families.spec import ComponentSpec, FamilySpec, Has, Lacks

SPEC = FamilySpec(
    name="pixart",
    title="PixArt (alpha / sigma)",
    gguf_arch="pixart",
    pipeline="PixArtSigmaPipeline",
    components=(
        ComponentSpec("diffusion_model", "diffusion_model", "", "pixart", "PixArtTransformer2DModel", "transformer",
                      alt_prefixes=("model.diffusion_model.",)),
    ),
    detect=(Has("blocks.0.mlp.fc1.weight"), Has("blocks.0.cross_attn.kv_linear.weight"),
            Lacks("blocks.0.mlp.inverted_conv.conv.weight")),
    # LTX-Video's original names have these three too (PixArt's diffusers names keep `adaln_single`): its
    # patchify_proj tells them apart
    detect_diffusers=(Has("transformer_blocks.0.ff.net.0.proj.weight"), Has("adaln_single.linear.weight"),
                      Has("caption_projection.linear_1.weight"), Lacks("patchify_proj.weight")),
)
