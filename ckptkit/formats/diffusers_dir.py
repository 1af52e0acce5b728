"""diffusers folders: a pipeline folder (model_index.json + one subfolder per component) or a
single component folder (config.json + weights). Tensors of a pipeline folder are named
`<subfolder>/<name>`; a single component folder keeps the names as they are."""

from __future__ import annotations

import os
from pathlib import Path

from ckptkit.errors import CkptError
from ckptkit.formats.base import Checkpoint
from ckptkit.formats.files import read_json_file
from ckptkit.formats.schema import Bool, List, Null, Num, Obj, OneOf, Str
from ckptkit.formats.sharded import CompositeCheckpoint
from ckptkit.formats.sniff import open_file

# The fields of a diffusers/transformers config.json that name things; the model's own fields are
# checked against its class when a model is built from it (convert/models.py check_config).
CONFIG_SCHEMA = Obj({"_class_name": Str(), "_diffusers_version": Str(), "architectures": List(Str()),
                     "model_type": Str(), "transformers_version": Str()})
# model_index.json: "_..." strings, per component folder [library, class] (either may be null), and
# pipeline options (`requires_aesthetics_score: true`, ...) as plain values.
MODEL_INDEX_SCHEMA = Obj({"_class_name": Str(), "_diffusers_version": Str(), "_name_or_path": Str()})
COMPONENT_ENTRY = OneOf((List(OneOf((Str(), Null())), min_len=2, max_len=2), Null(), Bool(), Num(), Str()))

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors",
                "diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json",
                "diffusion_pytorch_model.bin", "pytorch_model.bin")


def _read_json(path: Path, schema=CONFIG_SCHEMA) -> dict:
    return read_json_file(path, schema, path.name)


def model_index_components(root: Path, index: dict) -> dict[str, tuple[str | None, str | None]]:
    """The component entries of a model_index.json: folder name -> (library, class), each checked
    (a folder name from the file never leaves `root`)."""
    from ckptkit.formats.files import inside
    from ckptkit.formats.schema import check

    where = str(root / "model_index.json")
    out = {}
    for name, entry in index.items():
        if name.startswith("_"):
            continue
        check({name: entry}, Obj({name: COMPONENT_ENTRY}), where)
        if isinstance(entry, list):
            inside(root, name, where, "component folder")
        try:
            is_folder = (root / name).is_dir()
        except (OSError, ValueError):  # a name too long, a NUL: no folder of that name
            is_folder = False
        if is_folder and entry is not None and not isinstance(entry, list):
            check({name: entry}, Obj({name: COMPONENT_ENTRY.options[0]}), where)  # a folder needs [library, class]
        if isinstance(entry, list):
            out[name] = (entry[0], entry[1])
    return out


def component_weights(folder: Path) -> Path | None:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    variants = sorted(folder.glob("*.safetensors"))
    return variants[0] if variants else None


def open_component_folder(folder: Path) -> Checkpoint:
    weights = component_weights(folder)
    if weights is None:
        raise CkptError(f"{folder}: has config.json but no weights file")
    ckpt = open_file(weights)
    try:
        ckpt.config = _read_json(folder / "config.json")
    except BaseException:
        ckpt.close()
        raise
    return ckpt


def open_diffusers_dir(root: Path) -> Checkpoint:
    if os.path.lexists(root / "model_index.json"):
        index = _read_json(root / "model_index.json", MODEL_INDEX_SCHEMA)
        model_index_components(root, index)
        ckpt = CompositeCheckpoint([root], "diffusers")
        ckpt.config = index
        try:
            for sub in sorted(p for p in root.iterdir() if p.is_dir()):
                if (sub / "config.json").is_file() and component_weights(sub) is not None:
                    ckpt.add(sub.name, open_component_folder(sub), prefix=f"{sub.name}/")
            if not ckpt.members:
                raise CkptError(f"{root}: model_index.json but no component folder with weights")
        except BaseException:
            ckpt.close()
            raise
        return ckpt
    if os.path.lexists(root / "config.json"):
        member = open_component_folder(root)
        member.paths.insert(0, root)
        member.format = f"diffusers-component/{member.format}"
        return member
    raise CkptError(f"{root}: a directory with no model (no model_index.json, config.json or weights)")
