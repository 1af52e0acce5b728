"""Load what `ckptkit sample` runs: a transformer, its text encoders and tokenizers, and its VAE, from
  * a diffusers pipeline folder (model_index.json; `ckptkit trigflow`'s and `split --layout diffusers`'s
    output too): every listed component with its library's from_pretrained, local files only;
  * a component set (a folder with ckptkit.json, from `ckptkit split` / `trigflow --layout original`):
    each file through the family's layout map (convert/models.py load_component);
  * a single checkpoint file or diffusers component folder: what `detect` finds in it.
The time scale a ckptkit TrigFlow output records (manifest or safetensors metadata) is returned with the
models: an original-layout output has no config to carry it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ckptkit.errors import CkptError
from ckptkit.convert.components import shipped_config
from ckptkit.trigflow.adapters import Adapter, adapter_for, parse_time_scale

TIME_SCALE_KEY = "ckptkit.trigflow.time_scale"


@dataclass
class ModelSet:
    transformer: torch.nn.Module
    adapter: Adapter
    text_encoders: dict = field(default_factory=dict)  # diffusers folder name -> model
    tokenizers: dict = field(default_factory=dict)  # "tokenizer", "tokenizer_2", ...
    vae: torch.nn.Module | None = None
    time_scale: float | None = None  # recorded by `ckptkit trigflow`; None: from the transformer's config


def _from_pretrained(library: str, cls_name: str, folder: Path, dtype: torch.dtype):
    import diffusers
    import transformers

    module = diffusers if library == "diffusers" else transformers
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise CkptError(f"{folder}: unknown class {library}.{cls_name}")
    try:
        if "Tokenizer" in cls_name:
            return cls.from_pretrained(folder, local_files_only=True)
        return cls.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
    except CkptError:
        raise
    except Exception as exc:  # the library's own loader refused the folder's files: the input's fault
        from ckptkit.formats.files import printable

        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CkptError(f"{folder}: {library} cannot load it as {cls_name}: {printable(first)}") from None


def _diffusers_folder(root: Path, dtype: torch.dtype) -> dict:
    from ckptkit.formats.diffusers_dir import MODEL_INDEX_SCHEMA, model_index_components
    from ckptkit.formats.files import read_json_file

    index = read_json_file(root / "model_index.json", MODEL_INDEX_SCHEMA, "model_index.json")
    parts = {}
    for name, (library, cls_name) in model_index_components(root, index).items():
        if name == "scheduler" or library is None or cls_name is None:
            continue
        if (root / name).is_dir():
            parts[name] = _from_pretrained(library, cls_name, root / name, dtype)
    return parts


def _component_set(root: Path, manifest: dict, dtype: torch.dtype, config=None, family: str | None = None) -> dict:
    from ckptkit.convert.components import load_component
    from ckptkit.families import get_family
    from ckptkit.formats import open_checkpoint

    from ckptkit import pipeline
    from ckptkit.engine.manifest import component_file

    if not (family or manifest.get("family")):
        raise CkptError(f"{root}: the manifest names no family; cannot tell how to load its components (--family)")
    spec = get_family(family or manifest["family"])
    parts = {}
    for name, info in manifest["components"].items():
        comp = spec.component(name)
        with open_checkpoint(component_file(root, manifest, name)) as ckpt:
            pipeline.given(ckpt, config)
            model = load_component(ckpt, comp, "", info.get("naming") or "original", dtype=dtype)
        parts[_role_key(comp)] = model
    return parts


def _single(path: Path, dtype: torch.dtype, config=None, family: str | None = None) -> tuple[dict, float | None]:
    from ckptkit import pipeline
    from ckptkit.convert.components import load_component
    from ckptkit.families.detect import detect
    from ckptkit.formats import open_checkpoint

    with open_checkpoint(path) as ckpt:
        pipeline.given(ckpt, config, family)
        det = detect(ckpt)
        if det.spec is None:
            raise CkptError(f"{path}: family unknown: not a model ckptkit can sample")
        adapter_for(det.spec.diffusion_model.diffusers_class)  # a UNet is refused before anything loads
        parts = {}
        for comp in det.spec.components:
            if comp.name not in det.components:
                continue
            prefix = det.components[comp.name]
            config = shipped_config(ckpt, det.names, prefix)
            parts[_role_key(comp)] = load_component(ckpt, comp, prefix, det.names, config=config,
                                                    exclude=frozenset(det.junk + det.ema + det.unclaimed), dtype=dtype)
        scale = parse_time_scale(ckpt.metadata.get(TIME_SCALE_KEY), f"{path}: metadata {TIME_SCALE_KEY}")
    return parts, scale


def _role_key(comp) -> str:
    """Components by their diffusers folder name, the diffusion model as `transformer`."""
    return "transformer" if comp.role == "diffusion_model" else comp.diffusers_folder


def _recorded_time_scale(root: Path) -> float | None:
    from ckptkit.engine.manifest import read_manifest

    manifest = read_manifest(root)
    return parse_time_scale((manifest or {}).get("trigflow", {}).get("time_scale"), f"{root}/ckptkit.json: trigflow.time_scale")


def load_model_set(path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu",
                   config: str | Path | None = None, family: str | None = None) -> ModelSet:
    """`config` (--config FILE|DIR) and `family` (--family NAME) tell what a component set or a
    single file cannot; a diffusers pipeline folder carries its own configs and classes."""
    from ckptkit.engine.manifest import read_manifest

    path = Path(path)
    if not path.exists():
        raise CkptError(f"{path}: no such file or directory")
    scale = None
    if path.is_dir() and (path / "model_index.json").is_file():
        if config is not None or family is not None:
            raise CkptError(f"{path}: a diffusers pipeline folder carries its own configs and classes; "
                            "--config and --family apply to component sets and single files")
        parts, scale = _diffusers_folder(path, dtype), _recorded_time_scale(path)
    elif path.is_dir() and (manifest := read_manifest(path)) is not None:
        parts, scale = _component_set(path, manifest, dtype, config, family), _recorded_time_scale(path)
    else:
        parts, scale = _single(path, dtype, config, family)
    model = next((parts[k] for k in ("transformer", "unet") if k in parts), None)
    if model is None:
        raise CkptError(f"{path}: no diffusion model in it")
    adapter = adapter_for(model)  # refuses UNets and other non-flow models
    for part in parts.values():
        if isinstance(part, torch.nn.Module):
            part.to(device).eval()
    return ModelSet(model, adapter,
                    text_encoders={k: v for k, v in parts.items() if k.startswith("text_encoder")},
                    tokenizers={k: v for k, v in parts.items() if k.startswith("tokenizer")},
                    vae=parts.get("vae"), time_scale=scale)
