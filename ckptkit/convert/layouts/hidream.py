"""HiDream-I1 transformer (17B: 16 dual-stream + 32 single-stream blocks with mixture-of-experts
FFNs). HiDream's release and ComfyUI's files use diffusers' `HiDreamImageTransformer2DModel` names
(diffusers' single-file converter only strips `model.diffusion_model.`), so the map is the identity.

What the shapes tell: the width, the depths, the patch x input channels of `x_embedder.proj`, the
T5 and Llama caption widths (`caption_projection.N`: one per block for the Llama layer it is fed,
the last for T5), the pooled width, the number of routed experts. What they do not: the head split
(q/k RMSNorms span the whole width), the patch size, how many experts each token is routed to, the
rotary split, the largest resolution, and which Llama layer feeds which block.
"""

from __future__ import annotations

from ckptkit.convert.layouts import num_blocks, register
from ckptkit.convert.layouts.tables import TableLayout, heads, patch_size, per_patch, rope_axes, rope_placeholder, size
from ckptkit.errors import CkptError

TITLE = "HiDream-I1 transformer"


def _config(shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
    width = size(shapes, "x_embedder.proj.weight", 0, TITLE)
    patch = patch_size(base, TITLE)
    head_dim = base.get("attention_head_dim")
    n_heads = heads(width, head_dim, TITLE)
    n_double, n_single = num_blocks(shapes, "double_stream_blocks."), num_blocks(shapes, "single_stream_blocks.")
    n_captions = num_blocks(shapes, "caption_projection.")
    if n_captions != n_double + n_single + 1:
        raise CkptError(f"{TITLE}: {n_captions} caption projections for {n_double + n_single} blocks (one per block "
                        "plus T5's expected)")
    layers = base.get("llama_layers")
    if not isinstance(layers, (list, tuple)) or len(layers) != n_double + n_single:
        raise CkptError(f"{TITLE}: llama_layers must list one Llama layer per block ({n_double + n_single}), "
                        f"not {layers!r}")
    experts = num_blocks(shapes, "double_stream_blocks.0.block.ff_i.experts.")
    if not experts:
        experts = num_blocks(shapes, "single_stream_blocks.0.block.ff_i.experts.")
    return {
        "patch_size": patch,
        "in_channels": per_patch(shapes, "x_embedder.proj.weight", 1, patch, TITLE),
        "out_channels": per_patch(shapes, "final_layer.linear.weight", 0, patch, TITLE),
        "num_layers": n_double,
        "num_single_layers": n_single,
        "attention_head_dim": head_dim,
        "num_attention_heads": n_heads,
        "caption_channels": [size(shapes, f"caption_projection.{n_captions - 1}.linear.weight", 1, TITLE),
                             size(shapes, "caption_projection.0.linear.weight", 1, TITLE)],
        "text_emb_dim": size(shapes, "p_embedder.pooled_embedder.linear_1.weight", 1, TITLE),
        "num_routed_experts": experts,
        "num_activated_experts": base.get("num_activated_experts"),
        "axes_dims_rope": rope_axes(base, head_dim, TITLE),
        "max_resolution": base.get("max_resolution"),
        "llama_layers": list(layers),
        **{k: base[k] for k in ("force_inference_output",) if k in base},
    }


def _placeholders(shapes: dict[str, tuple[int, ...]]) -> dict:
    width = size(shapes, "x_embedder.proj.weight", 0, TITLE)
    blocks = num_blocks(shapes, "double_stream_blocks.") + num_blocks(shapes, "single_stream_blocks.")
    return {"attention_head_dim": width, "num_attention_heads": 1, "axes_dims_rope": rope_placeholder(width),
            "patch_size": 1 if size(shapes, "x_embedder.proj.weight", 1, TITLE) % 4 else 2,
            "num_activated_experts": 1, "max_resolution": [128, 128], "llama_layers": [0] * blocks}


LAYOUT = register(TableLayout(
    kind="hidream", title=TITLE, config_rule=_config, passthrough=True, placeholder_rule=_placeholders,
    shape_keys=("in_channels", "out_channels", "num_layers", "num_single_layers", "caption_channels", "text_emb_dim",
                "num_routed_experts"),
    undetermined={
        "attention_head_dim": "head width: the q/k RMSNorms span the whole width whatever the split",
        "patch_size": "x_embedder takes patch^2 x channels and the split is not in the weights",
        "num_activated_experts": "how many experts each token is routed to (top-k) is not in the weights",
        "axes_dims_rope": "the rotary split of a head over the position axes is not in the weights",
        "max_resolution": "the largest latent grid is not in the weights",
        "llama_layers": "which Llama layer's states feed each block is not in the weights",
    },
))
