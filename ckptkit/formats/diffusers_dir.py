"""diffusers folders: a pipeline folder (model_index.json + one subfolder per component) or a
single component folder (config.json + weights). Tensors of a pipeline folder are named
`<subfolder>/<name>`; a single component folder keeps the names as they are."""

from __future__ import annotations

import json
from pathlib import Path

from ckptkit.errors import CkptError
from ckptkit.formats.base import Checkpoint
from ckptkit.formats.sharded import CompositeCheckpoint

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors",
                "diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json",
                "diffusion_pytorch_model.bin", "pytorch_model.bin")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CkptError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CkptError(f"{path}: not a JSON object")
    return data


def component_weights(folder: Path) -> Path | None:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    variants = sorted(folder.glob("*.safetensors"))
    return variants[0] if variants else None


def open_component_folder(folder: Path) -> Checkpoint:
    from ckptkit.formats import open_checkpoint

    weights = component_weights(folder)
    if weights is None:
        raise CkptError(f"{folder}: has config.json but no weights file")
    ckpt = open_checkpoint(weights)
    ckpt.config = _read_json(folder / "config.json")
    return ckpt


def open_diffusers_dir(root: Path) -> Checkpoint:
    if (root / "model_index.json").is_file():
        index = _read_json(root / "model_index.json")
        ckpt = CompositeCheckpoint([root], "diffusers")
        ckpt.config = index
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            if (sub / "config.json").is_file() and component_weights(sub) is not None:
                ckpt.add(sub.name, open_component_folder(sub), prefix=f"{sub.name}/")
        if not ckpt.members:
            raise CkptError(f"{root}: model_index.json but no component folder with weights")
        return ckpt
    if (root / "config.json").is_file():
        member = open_component_folder(root)
        member.paths.insert(0, root)
        member.format = f"diffusers-component/{member.format}"
        return member
    raise CkptError(f"{root}: a directory with no model (no model_index.json, config.json or weights)")
