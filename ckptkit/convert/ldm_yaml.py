"""What an original LDM model yaml (`v1-inference.yaml`, `v2-inference-v.yaml`, `sd_xl_base.yaml`,
saved as `<checkpoint stem>.yaml` beside a checkpoint, as ComfyUI and A1111 read it) declares that
the weights cannot tell: the UNet's head layout, the SDXL time-id embedding width, the VAE's latent
scale. Only these values are taken; every size still comes from the shapes (configs.py).

diffusers' `create_unet_diffusers_config_from_ldm` reads the same file but decides the SDXL
embedding by the released context widths (2048 / 1280) and leaves the head count unset for a
non-linear UNet with `num_head_channels`; hence this small reader of our own.
"""

from __future__ import annotations

from ckptkit.errors import CkptError


def _params(node, *path):
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node if isinstance(node, dict) else None


def _int(value, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise CkptError(f"{where}: not an integer ({value!r:.40})")
    return value


def unet_values(data: dict, where: str) -> dict:
    unet = _params(data, "model", "params", "unet_config", "params") or _params(data, "model", "params", "network_config", "params")
    if unet is None:
        return {}
    out = {}
    heads = _int(unet.get("num_heads", -1), f"{where}: num_heads")
    head_channels = _int(unet.get("num_head_channels", -1), f"{where}: num_head_channels")
    if heads not in (None, -1):
        if heads < 1:
            raise CkptError(f"{where}: num_heads {heads} is not a head count")
        out["attention_head_dim"] = heads  # diffusers' name for the per-level head count of an LDM UNet
    elif head_channels not in (None, -1):
        base, mult = _int(unet.get("model_channels"), f"{where}: model_channels"), unet.get("channel_mult")
        if head_channels < 1 or not base or not isinstance(mult, list) or not mult:
            raise CkptError(f"{where}: num_head_channels needs model_channels and channel_mult")
        widths = [base * _int(m, f"{where}: channel_mult") for m in mult]
        if any(w % head_channels for w in widths):
            raise CkptError(f"{where}: widths {widths} do not divide into {head_channels}-channel heads")
        out["attention_head_dim"] = [w // head_channels for w in widths]
    embedders = (_params(data, "model", "params", "conditioner", "params") or {}).get("emb_models") or []
    for emb in embedders if isinstance(embedders, list) else []:
        if isinstance(emb, dict) and str(emb.get("target", "")).endswith("ConcatTimestepEmbedderND"):
            dim = _int((emb.get("params") or {}).get("outdim"), f"{where}: ConcatTimestepEmbedderND outdim")
            if dim:
                out["addition_time_embed_dim"] = dim
    return out


def vae_values(data: dict, where: str) -> dict:
    params = _params(data, "model", "params")
    if params is None or "scale_factor" not in params:
        return {}
    scale = params["scale_factor"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise CkptError(f"{where}: scale_factor {scale!r:.40} is not a positive number")
    return {"scaling_factor": float(scale), "shift_factor": params.get("shift_factor")}


READERS = {"ldm_unet": unet_values, "ldm_vae": vae_values}


def declared_values(ckpt, comp) -> tuple[dict, str | None]:
    """({key: value}, where) of what the yaml beside `ckpt` declares for `comp` ({} when nothing)."""
    data, path = getattr(ckpt, "original_config", None), getattr(ckpt, "original_config_path", None)
    reader = READERS.get(comp.layout)
    if not data or reader is None:
        return {}, None
    values = reader(data, str(path))
    return values, (f"{path}" if values else None)
