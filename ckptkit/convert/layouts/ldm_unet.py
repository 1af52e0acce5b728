"""The LDM / sgm UNet (SD1.x, SD2.x, SDXL, SDXL refiner) <-> diffusers `UNet2DConditionModel`.

Original names are CompVis `openaimodel.UNetModel`'s, without the `model.diffusion_model.` prefix:
`input_blocks.N.M.*` (N counts every down-path layer: 0 is conv_in, then `layers_per_block`
resnet[+attention] layers per level and one downsampler `input_blocks.N.0.op` after each level
but the last), `middle_block.{0,1,2}` (resnet, attention, resnet), `output_blocks.N.M.*`
(`layers_per_block + 1` layers per level, the upsampler closes a level at index 1 or 2),
`time_embed`, `label_emb` (SDXL's add_embedding) and `out`.

Only names change. Resnets are renamed inside (`norm1` -> `in_layers.0`, ...); the attention
blocks (`SpatialTransformer` / `Transformer2DModel`) keep diffusers' inner names. No reshape is
needed: diffusers' `use_linear_projection` mirrors LDM's `use_linear_in_transformer`, so proj_in /
proj_out are 1x1 convs on both sides for SD1 and linears on both sides for SD2 / SDXL.

`to_original` is the reverse of diffusers' `convert_ldm_unet_checkpoint`, which `to_diffusers`
calls as it is.
"""

from __future__ import annotations

import re

import torch

from ckptkit.engine.expr import Expr, src
from ckptkit.convert.layouts import register
from ckptkit.errors import CkptError

LDM_PREFIX = "model.diffusion_model."

# diffusers module -> original module, for modules outside the down / mid / up blocks.
TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL: addition_embed_type="text_time"
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",  # class_embed_type="timestep"/"projection"
    "class_embedding.linear_2": "label_emb.0.2",
    "class_embedding": "label_emb",  # num_class_embeds: an nn.Embedding (the x4 upscaler)
}

# diffusers ResnetBlock2D submodule -> LDM ResBlock submodule.
RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}

BLOCK = re.compile(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)")
MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")


def _resnet(rest: str) -> str:
    module, param = rest.split(".", 1)
    return f"{RESNET[module]}.{param}"


def original_name(name: str, config: dict) -> str:
    """The LDM name of one diffusers UNet tensor name."""
    per_level = config.get("layers_per_block", 2) + 1  # resnet[+attn] layers, then the sampler
    module, _, param = name.rpartition(".")
    if module in TOP_LEVEL:
        return f"{TOP_LEVEL[module]}.{param}"

    if m := MID.fullmatch(name):
        kind, i, rest = m[1], int(m[2]), m[3]
        if kind == "resnets":  # middle_block.0 and .2; the attention sits between them
            return f"middle_block.{2 * i}.{_resnet(rest)}"
        return f"middle_block.1.{rest}"

    if m := BLOCK.fullmatch(name):
        side, level, kind, i, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        if side == "down":
            layer = 1 + level * per_level + i  # input_blocks.0 is conv_in
            if kind == "resnets":
                return f"input_blocks.{layer}.0.{_resnet(rest)}"
            if kind == "attentions":
                return f"input_blocks.{layer}.1.{rest}"
            # downsamplers.0: its own input block after the level's resnets
            return f"input_blocks.{(level + 1) * per_level}.0.{rest.replace('conv.', 'op.', 1)}"
        layer = level * per_level + i
        if kind == "resnets":
            return f"output_blocks.{layer}.0.{_resnet(rest)}"
        if kind == "attentions":
            return f"output_blocks.{layer}.1.{rest}"
        # upsamplers.0: appended to the level's last output block, after its attention if any
        last = level * per_level + per_level - 1
        slot = 2 if "CrossAttn" in config["up_block_types"][level] else 1
        return f"output_blocks.{last}.{slot}.{rest}"

    raise CkptError(f"ldm_unet: no original name for diffusers tensor {name!r}")


DOWNSAMPLER = re.compile(r"input_blocks\.(\d+)\.0\.op\.weight")
INPUT_BLOCK = re.compile(r"input_blocks\.(\d+)\.")
TRANSFORMER_BLOCK = re.compile(r"input_blocks\.(\d+)\.1\.transformer_blocks\.(\d+)\.")

# Config keys the shapes decide (what `config_from_original` reads), and those they cannot: q/k/v
# are [C, C] whatever the head split, and the time-id embedding width is one unknown part of
# label_emb's input (pooled text + 6 time ids of that width). See convert/configs.py.
SHAPE_KEYS = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
              "up_block_types", "transformer_layers_per_block", "cross_attention_dim", "use_linear_projection",
              "num_class_embeds", "projection_class_embeddings_input_dim", "addition_embed_type", "mid_block_type")
UNDETERMINED = {
    "attention_head_dim": "head counts: q/k/v are [C, C] whatever the head split",
    "addition_time_embed_dim": "the time-id embedding width is an unknown part of label_emb's input",
}

# Config keys the label_emb MLP decides; a base key of this set that the shapes do not confirm is dropped.
EMBEDDING_KEYS = ("addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim",
                  "class_embed_type", "num_class_embeds")


def _down_path(shapes) -> tuple[int, int]:
    """(number of levels, layers_per_block) from the input_blocks numbering: conv_in, then per level
    `layers_per_block` layers and a downsampler (`.0.op`), but none after the last level."""
    downsamplers = sorted(int(m[1]) for n in shapes if (m := DOWNSAMPLER.fullmatch(n)))
    if not downsamplers:
        return 1, max(int(m[1]) for n in shapes if (m := INPUT_BLOCK.match(n)))
    return len(downsamplers) + 1, downsamplers[0] - 1


def _transformer_depths(shapes, layers: list[int]) -> list[int]:
    """Transformer blocks in the attention of each given input block (0: no attention)."""
    depth: dict[int, int] = {}
    for name in shapes:
        if m := TRANSFORMER_BLOCK.match(name):
            depth[int(m[1])] = max(depth.get(int(m[1]), 0), int(m[2]) + 1)
    return [depth.get(layer, 0) for layer in layers]


def _transformer_layers_per_block(depths: list[int]) -> int | list[int]:
    """An int when every level with attention has the same depth (SD1/SD2: 1, refiner: 4), else a
    per-level list in which levels without attention count 1, as diffusers configs write them
    (SDXL: [1, 2, 10])."""
    used = {d for d in depths if d}
    if len(used) <= 1:
        return used.pop() if used else 1
    return [d or 1 for d in depths]


def _embeddings(shapes, base: dict) -> dict:
    """The keys behind `label_emb`. The same two-layer MLP is SDXL's add_embedding (text_time) or a
    class_embedding: only a base that sets `class_embed_type` makes it the latter."""
    if "label_emb.weight" in shapes:
        return {"num_class_embeds": shapes["label_emb.weight"][0]}
    if "label_emb.0.0.weight" not in shapes:
        return {}
    in_dim = shapes["label_emb.0.0.weight"][1]
    kind = base.get("class_embed_type")
    if kind == "timestep":  # its input is the sinusoidal embedding: nothing to size
        return {"class_embed_type": kind}
    if kind == "projection":
        return {"class_embed_type": kind, "projection_class_embeddings_input_dim": in_dim}
    # addition_time_embed_dim is one part of in_dim (pooled text + n time ids of that width).
    return {"addition_embed_type": "text_time", "addition_time_embed_dim": base.get("addition_time_embed_dim"),
            "projection_class_embeddings_input_dim": in_dim}


def config_from_original(shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
    """See `LdmUNet.config_from_original`."""
    levels, per_block = _down_path(shapes)
    first_down = [1 + level * (per_block + 1) for level in range(levels)]  # each level's first layer
    first_up = [level * (per_block + 1) for level in range(levels)]
    channels = [shapes[f"input_blocks.{n}.0.out_layers.3.weight"][0] for n in first_down]
    down_attn = [f"input_blocks.{n}.1.proj_in.weight" in shapes for n in first_down]
    up_attn = [f"output_blocks.{n}.1.proj_in.weight" in shapes for n in first_up]
    proj_in = next((s for n, s in shapes.items() if n.endswith(".1.proj_in.weight")), None)
    to_k = next((s for n, s in shapes.items() if n.endswith(".attn2.to_k.weight")), None)

    config = {k: v for k, v in base.items() if k not in EMBEDDING_KEYS}
    config.update(
        in_channels=shapes["input_blocks.0.0.weight"][1],
        out_channels=shapes["out.2.weight"][0],
        block_out_channels=channels,
        layers_per_block=per_block,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attn],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attn],
        transformer_layers_per_block=_transformer_layers_per_block(_transformer_depths(shapes, first_down)),
        attention_head_dim=base.get("attention_head_dim"),
        **_embeddings(shapes, base),
    )
    if to_k is not None:
        config["cross_attention_dim"] = to_k[1]
    if proj_in is not None:  # 1x1 conv (SD1) or linear (SD2 / SDXL)
        config["use_linear_projection"] = len(proj_in) == 2
    if not any(n.startswith("middle_block.") for n in shapes):  # removed (BK-SDM-Tiny, KOALA)
        config["mid_block_type"] = None
    elif "middle_block.1.proj_in.weight" not in shapes:  # resnets only, no attention
        config["mid_block_type"] = "UNetMidBlock2D"
    return config


class LdmUNet:
    kind = "ldm_unet"
    shape_keys = SHAPE_KEYS
    undetermined = UNDETERMINED

    def placeholders(self, shapes: dict[str, tuple[int, ...]]) -> dict:
        """Stand-ins for `undetermined` that give the right names and shapes whatever the real values
        are (one head): only for reading names and shapes (convert/configs.py, not strict)."""
        return {"attention_head_dim": 1, "addition_time_embed_dim": 1}

    def config_from_original(self, shapes: dict[str, tuple[int, ...]], base: dict) -> dict:
        """The diffusers config of a component from its original-layout (prefix-stripped) shapes.
        `base` is the resolved config (convert/configs.py): its values stand for what the shapes
        cannot tell (UNDETERMINED, and sample_size, norm_num_groups, ...)."""
        return config_from_original(shapes, base)

    def to_original(self, shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, Expr]:
        return {original_name(n, config): src(n) for n in shapes}

    def to_diffusers(self, state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
        from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

        # The converter only picks keys under the bundle prefix; it also reads
        # config["layers_per_block"] without a default.
        checkpoint = {LDM_PREFIX + n: t for n, t in state_dict.items()}
        return convert_ldm_unet_checkpoint(checkpoint, {"layers_per_block": 2, **config})


LAYOUT = register(LdmUNet())
