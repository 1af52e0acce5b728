"""LTX-2 audio-video transformer (LTX-2 19B "2.0", LTX-2.3): diffusers `LTX2VideoTransformer3DModel`
<-> the original names of Lightricks' single files (`ltx-2-19b-*.safetensors`, transformer under
`model.diffusion_model.`, bare in split files). Pure renames, the table of diffusers'
scripts/convert_ltx2_to_diffusers.py LTX_2_0_TRANSFORMER_KEYS_RENAME_DICT / LTX_2_3_... and
single_file_utils.convert_ltx2_transformer_to_diffusers (huggingface/diffusers@58eb52c0803ea9af3abec60841c2a093bdf1f951):

    patchify_proj / audio_patchify_proj               proj_in / audio_proj_in
    adaln_single. / audio_adaln_single.               time_embed. / audio_time_embed.
    av_ca_{video_scale_shift,a2v_gate}_adaln_single   av_cross_attn_{video_scale_shift,video_a2v_gate}
    av_ca_{audio_scale_shift,v2a_gate}_adaln_single   av_cross_attn_{audio_scale_shift,audio_v2a_gate}
    prompt_adaln_single / audio_prompt_adaln_single   prompt_adaln / audio_prompt_adaln          (2.3)
    N.scale_shift_table_a2v_ca_{video,audio}          N.{video,audio}_a2v_cross_attn_scale_shift_table
    N.<attn>.q_norm / k_norm                          N.<attn>.norm_q / norm_k  (attn1, attn2, audio_attn1,
                                                      audio_attn2, audio_to_video_attn, video_to_audio_attn)

every other name is the same on both sides (passthrough), no tensor is split, fused or reshaped.

The original diffusion model also holds the Gemma text connectors (`video_embeddings_connector.*`,
`audio_embeddings_connector.*`, and in some files `text_embedding_projection.*`), which diffusers
moves into another model, `LTX2TextConnectors` (the script's convert_ltx2_connectors, with its own
renames and config). They stay with the diffusion model in original names (ComfyUI loads them with
it); on the way to diffusers they are not converted and are listed as dropped with that reason
(`not_converted`), never silently lost. A `text_connectors` component is not built: ckptkit's
components are one bundle prefix each, and these tensors share the transformer's.

What the shapes tell: both widths (proj_in / audio_proj_in rows), the latent channels in and out, the
depth, the text widths (attn2 / audio_attn2 k columns), the caption width (2.0's caption
projection), and LTX-2.3's flags by their tensors: gated attention (`to_gate_logits`, whose rows are
the heads: there the head split is decided), the cross-attention modulation (`prompt_scale_shift_table`,
9-row tables), the prompt embeddings (2.0's caption projections), the FFN biases (2.5 has none). What
they do not: the head split without gates (the q/k RMS norms span the whole width), the patch sizes
(the patch embeddings are Linears over packed tokens), `perturbed_attn` (no tensor: a forward switch).
"""

from __future__ import annotations

from ckptkit.convert.layouts import num_blocks, register
from ckptkit.convert.layouts.tables import Blocks, TableLayout, heads, size
from ckptkit.errors import CkptError

TITLE = "LTX-2 transformer"
PATCH, AUDIO_PATCH = "patchify_proj.weight", "audio_patchify_proj.weight"
GATE, AUDIO_GATE = "transformer_blocks.0.attn1.to_gate_logits.weight", "transformer_blocks.0.audio_attn1.to_gate_logits.weight"
# the text connectors (diffusers: LTX2TextConnectors), in component-local original names: the script's
# split_transformer_and_connector_state_dict prefixes, as they appear in the original files
CONNECTORS = ("video_embeddings_connector.", "audio_embeddings_connector.", "text_embedding_projection.")

_ADALN = {"adaln_single": "time_embed", "audio_adaln_single": "audio_time_embed",
          "av_ca_video_scale_shift_adaln_single": "av_cross_attn_video_scale_shift",
          "av_ca_a2v_gate_adaln_single": "av_cross_attn_video_a2v_gate",
          "av_ca_audio_scale_shift_adaln_single": "av_cross_attn_audio_scale_shift",
          "av_ca_v2a_gate_adaln_single": "av_cross_attn_audio_v2a_gate",
          "prompt_adaln_single": "prompt_adaln", "audio_prompt_adaln_single": "audio_prompt_adaln"}
TOP = {"patchify_proj.": "proj_in.", "audio_patchify_proj.": "audio_proj_in.",
       **{f"{o}.{sub}": f"{d}.{sub}" for o, d in _ADALN.items()
          for sub in ("emb.timestep_embedder.linear_1.", "emb.timestep_embedder.linear_2.", "linear.")}}
ATTENTIONS = ("attn1", "attn2", "audio_attn1", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn")
BLOCK = {"scale_shift_table_a2v_ca_video": "video_a2v_cross_attn_scale_shift_table",
         "scale_shift_table_a2v_ca_audio": "audio_a2v_cross_attn_scale_shift_table",
         **{f"{a}.{o}_norm.": f"{a}.norm_{o}." for a in ATTENTIONS for o in ("q", "k")}}


def _positive(base: dict, key: str) -> int:
    value = base.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CkptError(f"{TITLE}: {key} must be a positive integer, not {value!r}")
    return value


def _split(shapes, gate: str, width: int, head_dim, what: str) -> tuple[int, int]:
    """(heads, head width): gated attention's gate logits have one row per head; else from the base head width."""
    if gate in shapes:
        n = shapes[gate][0]
        if n < 1 or width % n:
            raise CkptError(f"{TITLE}: {gate} has {n} rows (heads), which do not divide the {what} width {width}")
        return n, width // n
    return heads(width, head_dim, TITLE), head_dim


def _config(shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
    width, audio_width = size(shapes, PATCH, 0, TITLE), size(shapes, AUDIO_PATCH, 0, TITLE)
    n, d = _split(shapes, GATE, width, base.get("attention_head_dim"), "video")
    an, ad = _split(shapes, AUDIO_GATE, audio_width, base.get("audio_attention_head_dim"), "audio")
    perturbed = base.get("perturbed_attn")
    if not isinstance(perturbed, bool):
        raise CkptError(f"{TITLE}: perturbed_attn must be true or false, not {perturbed!r}")
    out = {
        "in_channels": size(shapes, PATCH, 1, TITLE),
        "out_channels": size(shapes, "proj_out.weight", 0, TITLE),
        "audio_in_channels": size(shapes, AUDIO_PATCH, 1, TITLE),
        "audio_out_channels": size(shapes, "audio_proj_out.weight", 0, TITLE),
        "num_layers": num_blocks(shapes, "transformer_blocks."),
        "cross_attention_dim": size(shapes, "transformer_blocks.0.attn2.to_k.weight", 1, TITLE),
        "audio_cross_attention_dim": size(shapes, "transformer_blocks.0.audio_attn2.to_k.weight", 1, TITLE),
        "num_attention_heads": n, "attention_head_dim": d,
        "audio_num_attention_heads": an, "audio_attention_head_dim": ad,
        "attention_bias": "transformer_blocks.0.attn1.to_q.bias" in shapes,
        "attention_out_bias": "transformer_blocks.0.attn1.to_out.0.bias" in shapes,
        "norm_elementwise_affine": "transformer_blocks.0.norm1.weight" in shapes,
        "gated_attn": GATE in shapes,
        "audio_gated_attn": AUDIO_GATE in shapes,
        "cross_attn_mod": "transformer_blocks.0.prompt_scale_shift_table" in shapes,
        "audio_cross_attn_mod": "transformer_blocks.0.audio_prompt_scale_shift_table" in shapes,
        "use_prompt_embeddings": "caption_projection.linear_1.weight" in shapes,
        "ff_bias": "transformer_blocks.0.ff.net.0.proj.bias" in shapes,
        "audio_ff_bias": "transformer_blocks.0.audio_ff.net.0.proj.bias" in shapes,
        "use_keyframes_abs_pos_embedding": "keyframes_abs_pos_embedding" in shapes,
        "patch_size": _positive(base, "patch_size"), "patch_size_t": _positive(base, "patch_size_t"),
        "audio_patch_size": _positive(base, "audio_patch_size"),
        "audio_patch_size_t": _positive(base, "audio_patch_size_t"),
        "perturbed_attn": perturbed,
    }
    if out["use_prompt_embeddings"]:  # 2.3 has no caption projection: caption_channels is then unused
        out["caption_channels"] = size(shapes, "caption_projection.linear_1.weight", 1, TITLE)
    if out["cross_attn_mod"] or out["audio_cross_attn_mod"]:  # only read with the prompt modulation
        out["use_prompt_adaln_single"] = "prompt_adaln_single.linear.weight" in shapes
    return out


def _placeholders(shapes: dict[str, tuple[int, ...]]) -> dict:
    return {"attention_head_dim": size(shapes, PATCH, 0, TITLE),
            "audio_attention_head_dim": size(shapes, AUDIO_PATCH, 0, TITLE),
            "patch_size": 1, "patch_size_t": 1, "audio_patch_size": 1, "audio_patch_size_t": 1,
            "perturbed_attn": False}


class LTX2Layout(TableLayout):
    """The table layout, less the text connectors on the way to diffusers (another diffusers model)."""

    def to_diffusers_map(self, shapes, config):
        return super().to_diffusers_map({k: v for k, v in shapes.items() if not k.startswith(CONNECTORS)}, config)

    @staticmethod
    def determined(shapes) -> set[str]:
        """The head widths gated attention decides (its gate logits have a row per head)."""
        return {k for k, gate in (("attention_head_dim", GATE), ("audio_attention_head_dim", AUDIO_GATE))
                if gate in shapes}

    @staticmethod
    def not_converted(name: str) -> str | None:
        """Why an original tensor has no LTX2VideoTransformer3DModel counterpart, where known."""
        if name.startswith(CONNECTORS):
            return ("LTX-2 text connector: diffusers' LTX2TextConnectors (pipeline folder connectors/), "
                    "not converted by ckptkit")
        return None


_HEADS = "head width: the q/k RMS norms span the whole width, q/k/v are [width, width] whatever the split"
_PATCH = "the patch embeddings are Linears over packed tokens: the patch only scales the rotary grid"
LAYOUT = register(LTX2Layout(
    kind="ltx2", title=TITLE, config_rule=_config, placeholder_rule=_placeholders, top=TOP,
    blocks=(Blocks("transformer_blocks.", "transformer_blocks.", BLOCK),), passthrough=True,
    # what every released config states and the shapes always decide (caption_channels only with 2.0's caption
    # projection; ff_bias & co. are class defaults the released configs leave out): derived all the same
    shape_keys=("in_channels", "out_channels", "audio_in_channels", "audio_out_channels", "num_layers",
                "cross_attention_dim", "audio_cross_attention_dim", "num_attention_heads",
                "audio_num_attention_heads", "attention_bias", "attention_out_bias", "norm_elementwise_affine",
                "gated_attn", "audio_gated_attn", "cross_attn_mod", "audio_cross_attn_mod", "use_prompt_embeddings"),
    undetermined={
        "attention_head_dim": f"video {_HEADS} (no gated attention here to count the heads)",
        "audio_attention_head_dim": f"audio {_HEADS} (no gated attention here to count the heads)",
        "patch_size": _PATCH, "patch_size_t": _PATCH, "audio_patch_size": _PATCH, "audio_patch_size_t": _PATCH,
        "perturbed_attn": "LTX-2.3's perturbed attention is a forward switch with no tensor",
    },
))
