"""Qwen2.5-VL's vision tower as llama.cpp's clip "mmproj" GGUF: the file beside a qwen2vl text-encoder
GGUF that ComfyUI-GGUF's loader reads the vision tower from (Qwen-Image-Edit needs it), and that
stable-diffusion.cpp takes as --llm_vision.

Names: as llama.cpp's convert_hf_to_gguf.py writes them (`Qwen2VLVisionModel`, registered for
Qwen2_5_VLForConditionalGeneration): gguf-py's own MMPROJ tensor map (`visual.blocks.N.attn.proj` ->
`v.blk.N.attn_out`, `visual.merger.mlp.N` -> `mm.N`, `visual.merger.ln_q` -> `v.post_ln`, ...), with
its two `modify_tensors` changes: the fused `attn.qkv` split into thirds (`attn_q/k/v`), and the Conv3d
patch embedding (out, in, 2, kh, kw) split along its temporal dim into `v.patch_embd.weight` and
`v.patch_embd.weight.1`. ComfyUI-GGUF's gguf_mmproj_loader (city96/ComfyUI-GGUF@795e451 loader.py,
"Reverse version of Qwen2VLVisionModel.modify_tensors") stacks the halves back on dim 2, renames by
CLIP_VISION_SD_MAP and concatenates q/k/v; `to_comfy` reproduces that, and every name written is
checked to come back as the tensor it was made from.

File name: that loader takes a `.gguf` in the text encoder's folder whose lower-cased name holds
"mmproj" and the text encoder's lower-cased stem with its quant suffix stripped (strip_quant_suffix).

KV: what MmprojModel.set_gguf_parameters and Qwen2VLVisionModel write for model_type qwen2_5_vl, the
keys clip.cpp's loader requires (embedding/feed-forward length, block and head count, projection dim,
layer-norm eps, image and patch size, image mean/std, and n_wa_pattern for QWEN25VL). What the
weights cannot tell (heads, the window-attention pattern) comes from the model's config, else from
the released Qwen2.5-VL vision tower (all sizes: width 1280, 32 blocks, 16 heads, full attention
at blocks 7/15/23/31) when the tower has its shape; otherwise the key is left out and said.
"""

from __future__ import annotations

import functools
import re
from pathlib import PurePosixPath

from ckptkit.engine import expr

VISION_PREFIXES = ("model.visual.", "visual.")  # transformers 5 state dicts; save_pretrained and ComfyUI
PATCH = "visual.patch_embed.proj.weight"

# ComfyUI-GGUF main loader.py's CLIP_VISION_SD_MAP, verbatim and in its order, and strip_quant_suffix's pattern
CLIP_VISION_SD_MAP = (
    ("mm.", "visual.merger.mlp."), ("v.post_ln.", "visual.merger.ln_q."), ("v.patch_embd", "visual.patch_embed.proj"),
    ("v.blk.", "visual.blocks."), ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj"),
    ("ffn_gate", "mlp.gate_proj"), ("attn_out.", "attn.proj."), ("ln1.", "norm1."), ("ln2.", "norm2."),
)
QUANT_SUFFIX = re.compile(r"[-_]?(?:ud-)?i?q[0-9]_[a-z0-9_\-]{1,8}$", re.IGNORECASE)

# Types. llama.cpp writes an mmproj only with convert_hf_to_gguf.py --mmproj, whose --outtype gives
# f32, f16, bf16 or q8_0 (llama-quantize takes text models only, not arch "clip"), which is why
# published mmproj files are F16/BF16/F32 or Q8_0: a request of one of those gives the mmproj that
# type, any other (Q4_0 .. K-quants) the converter's "auto" type, BF16 from a bf16 tower, else F16.
# Per tensor, as its prepare_tensors: 1-D tensors (norms, biases) F32; MmprojModel.tensor_force_quant
# keeps both patch-embedding halves F16 in an f16 file and F32 in any other; other names not ending
# ".weight" F32; the other 2-D weights take the file's type (a Q8_0 row that is not whole blocks falls
# back to F16, as gguf-py's QuantError does there).
CONVERTER_TYPES = ("F32", "F16", "BF16", "Q8_0")

# Qwen2.5-VL's image processor normalisation (preprocessor_config.json of every release: OpenAI CLIP's)
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 560  # Qwen2VLVisionModel: hparams_vision.get("image_size", 560); Qwen2.5-VL's config has none
RELEASED = {"width": 1280, "depth": 32, "num_heads": 16, "fullatt_block_indexes": [7, 15, 23, 31]}


def vision_prefix(names) -> str:
    names = list(names)
    for p in VISION_PREFIXES:
        if any(n.startswith(p + "blocks.") for n in names):
            return p
    raise ValueError("no Qwen2.5-VL vision tower (`visual.blocks.N.`) in these names")


def canonical(name: str, prefix: str) -> str:
    """A vision-tower name as convert_hf_to_gguf.py reads it (`visual.`)."""
    return "visual." + name[len(prefix):]


@functools.lru_cache(maxsize=None)
def _map(n_blocks: int):
    import gguf

    # gguf-py names `visual.merger.mlp.{bid}` with a block id, so the map must reach mm.2 even for a
    # tower of fewer blocks (llama.cpp builds it with the vision depth, 32)
    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, max(n_blocks, 3))


def n_blocks(names) -> int:
    """The vision tower's depth: blocks numbered in `visual.blocks.N.` (canonical names)."""
    found = [int(m.group(1)) for n in names if (m := re.match(r"visual\.blocks\.(\d+)\.", n))]
    return max(found) + 1 if found else 0


def to_comfy(name: str) -> str:
    """An mmproj name as ComfyUI-GGUF's gguf_mmproj_loader hands it to ComfyUI: CLIP_VISION_SD_MAP in
    order, split q/k/v joined into `attn.qkv`, the second patch-embedding half stacked onto the first."""
    for old, new in CLIP_VISION_SD_MAP:
        name = name.replace(old, new)
    name = re.sub(r"\.attn_[qkv]\.", ".attn.qkv.", name)
    return name.removesuffix(".1") if name == PATCH + ".1" else name


def parts(name: str, e: expr.Expr, shape: tuple[int, ...], n_blocks: int) -> list[tuple[str, expr.Expr]]:
    """The mmproj tensors one vision-tower tensor (canonical name) becomes, each as an expression over
    the source: Qwen2VLVisionModel.modify_tensors, then gguf-py's MMPROJ name map."""
    import gguf

    if ".attn.qkv." in name:
        c, rest = divmod(shape[0], 3)
        if rest:
            raise ValueError(f"{name}: fused qkv of {shape[0]} rows does not split in thirds")
        return [(_named(name.replace(".qkv.", f".{x}."), n_blocks, name), expr.narrow(e, 0, i * c, (i + 1) * c))
                for i, x in enumerate("qkv")]
    if name == PATCH:
        if len(shape) != 5 or shape[2] != 2:
            raise ValueError(f"{name}: {list(shape)} is not a Conv3d kernel of temporal size 2 "
                             "(llama.cpp's converter splits only that)")
        base = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.V_ENC_EMBD_PATCH] + ".weight"
        flat = (shape[0], shape[1], shape[3], shape[4])
        return [(base + ("" if t == 0 else f".{t}"), expr.reshape(expr.narrow(e, 2, t, t + 1), flat)) for t in (0, 1)]
    return [(_named(name, n_blocks, name), e)]


def _named(name: str, n_blocks: int, source: str) -> str:
    out = _map(n_blocks).get_name(name, try_suffixes=(".weight", ".bias"))
    if out is None or to_comfy(out) != source:
        raise ValueError(f"vision tensor {source!r} has no mmproj name ComfyUI-GGUF reads back")
    return out


def unfit(names) -> str | None:
    """Why these vision-tower names are not a Qwen2.5-VL tower this module writes; None: they are."""
    names = list(names)
    try:
        prefix = vision_prefix(names)
    except ValueError as exc:
        return str(exc)
    canon = {canonical(n, prefix) for n in names if n.startswith(prefix)}
    if len(canon) != len(names):
        return "vision tensors under more than one prefix"
    if "visual.blocks.0.mlp.gate_proj.weight" not in canon or PATCH not in canon:
        return "not Qwen2.5-VL's vision tower (no gated MLP or no patch embedding: Qwen2-VL's is another projector)"
    return None


def file_type(request_base: str, src_dtypes: set[str]) -> str:
    """The mmproj's type for a request (see CONVERTER_TYPES)."""
    if request_base in CONVERTER_TYPES:
        return request_base
    return "BF16" if src_dtypes == {"BF16"} else "F16"


def tensor_type(name: str, shape: tuple[int, ...], ftype: str) -> tuple[str, str]:
    """(ggml type, why) of one mmproj tensor in a file of type `ftype`, as the converter decides it."""
    from ckptkit.quant.types import fits

    if len(shape) <= 1:
        return "F32", "1-D: F32 (llama.cpp's converter)"
    if ".patch_embd." in name:  # before the suffix rule: the second half is `v.patch_embd.weight.1`
        t = "F16" if ftype == "F16" else "F32"
        return t, f"patch embedding: {t} in a {ftype} mmproj (llama.cpp's tensor_force_quant)"
    if not name.endswith(".weight"):
        return "F32", "not a .weight: F32 (llama.cpp's converter)"
    if ftype in ("F32", "F16", "BF16") or fits(ftype, shape):
        return ftype, f"mmproj type {ftype}"
    return "F16", f"fallback {ftype}->F16: row {shape[-1]} is not whole {ftype} blocks"


def file_name(te_path: str, ftype: str) -> str:
    """The mmproj's path beside the text encoder's, named so that ComfyUI-GGUF's loader finds it."""
    te = PurePosixPath(te_path)
    base = QUANT_SUFFIX.sub("", te.stem) or te.stem
    return str(te.with_name(f"{base}-mmproj-{ftype}.gguf"))


def comfy_finds(te_name: str, mmproj_name: str) -> bool:
    """ComfyUI-GGUF's gguf_mmproj_loader's match: a `.gguf` whose lower-cased name holds "mmproj" and
    the text encoder's lower-cased stem, quant suffix stripped."""
    te, mm = PurePosixPath(te_name), PurePosixPath(mmproj_name)
    tenc = QUANT_SUFFIX.sub("", te.stem.lower())
    return mm.suffix.lower() == ".gguf" and "mmproj" in mm.stem.lower() and tenc in mm.stem.lower()


def hparams(shapes: dict[str, tuple[int, ...]], n_blocks: int, vision: dict, eps: float,
            ftype: str) -> tuple[dict, list[str]]:
    """The mmproj's KV (clip.cpp's required keys, as Qwen2VLVisionModel writes them) and the keys
    left out because neither the config nor the released tower's shape gives them."""
    import gguf

    from ckptkit.quant.types import REQUESTS

    K, V = gguf.Keys, gguf.Keys.ClipVision
    width = shapes[PATCH][0]
    released = width == RELEASED["width"] and n_blocks == RELEASED["depth"]
    kv = {
        K.General.TYPE: gguf.GGUFType.MMPROJ, K.General.QUANTIZATION_VERSION: 2,
        K.General.FILE_TYPE: int(REQUESTS[ftype.lower()].file_type),
        K.Clip.HAS_VISION_ENCODER: True, K.Clip.PROJECTOR_TYPE: gguf.VisionProjectorType.QWEN25VL,
        V.USE_SILU: True,
        # the merger's output width is the text model's, which the converter writes here
        V.PROJECTION_DIM: shapes["visual.merger.mlp.2.weight"][0],
        V.IMAGE_SIZE: int(vision.get("image_size", IMAGE_SIZE)), V.PATCH_SIZE: shapes[PATCH][-1],
        V.EMBEDDING_LENGTH: width, V.FEED_FORWARD_LENGTH: shapes["visual.blocks.0.mlp.gate_proj.weight"][0],
        V.BLOCK_COUNT: n_blocks, V.IMAGE_MEAN: list(IMAGE_MEAN), V.IMAGE_STD: list(IMAGE_STD),
        V.Attention.LAYERNORM_EPS: float(eps),
    }
    missing = []
    heads = vision.get("num_heads") or (RELEASED["num_heads"] if released else None)
    if heads:
        kv[V.Attention.HEAD_COUNT] = int(heads)
    else:
        missing.append(V.Attention.HEAD_COUNT)
    full = vision.get("fullatt_block_indexes") or (RELEASED["fullatt_block_indexes"] if released else None)
    pattern = wa_pattern(full) if full else None
    if pattern:
        kv[V.N_WA_PATTERN] = pattern
    else:
        missing.append(V.N_WA_PATTERN)
    return kv, missing


def wa_pattern(fullatt_block_indexes: list[int]) -> int | None:
    """Qwen2VLVisionModel's n_wa_pattern: full attention every n-th block; None when irregular (the
    converter refuses such a config)."""
    n = fullatt_block_indexes[0] + 1
    ok = all(b - a == n for a, b in zip(fullatt_block_indexes, fullatt_block_indexes[1:]))
    return n if ok else None
