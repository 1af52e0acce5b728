"""The component-set manifest `ckptkit.json`: what a folder of component files holds and where
it came from (source hash, family, per-component file, layout, dtypes, counts and hashes)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from ckptkit import __version__
from ckptkit.convert.execute import WrittenFile
from ckptkit.convert.plan import Plan
from ckptkit.errors import CkptError
from ckptkit.formats.atomic import atomic_write
from ckptkit.formats.hashing import source_sha256

MANIFEST = "ckptkit.json"


class SourceHasher:
    """sha256 of the source file(s), read sequentially on a background thread while the executor
    works (the reads mostly hit the page cache the executor fills); a file hashed before and not
    changed since is served from the hash cache (formats/hashing.py)."""

    def __init__(self, paths: list[Path]):
        self.paths = [p for p in paths if p.is_file()]
        self.result: dict[str, dict] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        for path in self.paths:
            self.result[str(path)] = {"size": path.stat().st_size, "sha256": source_sha256(path)}

    def join(self) -> dict[str, dict]:
        self._thread.join()
        return self.result


def build_manifest(plan: Plan, written: list[WrittenFile], sources: dict[str, dict], extra: dict | None = None) -> dict:
    components = {}
    for w in written:
        info = plan.info.get("components", {}).get(w.component, {})
        components[w.component or w.path] = {
            "role": info.get("role"), "file": w.path, "layout": w.layout, "naming": info.get("naming"),
            "diffusers_class": info.get("diffusers_class"), "dtypes": w.dtypes, "tensor_count": w.tensors,
            "param_count": w.params, "bytes": w.bytes, "sha256": w.sha256,
            **({"policy": info["policy"]} if "policy" in info else {}),
        }
    dropped: dict[str, list[str]] = {}
    for name, reason in plan.dropped.items():
        dropped.setdefault(reason, []).append(name)
    return {
        "format": "ckptkit.component-set/1",
        "tool": f"ckptkit {__version__}",
        "kind": plan.kind,
        "source": {"path": plan.source, "files": sources},
        "family": plan.info.get("family"),
        "variant": plan.info.get("variant"),
        "layout": plan.info.get("layout"),
        "components": components,
        "dropped": {reason: {"count": len(names), "names": names[:50]} for reason, names in dropped.items()},
        "notes": plan.notes,
        **(extra or {}),
    }


def write_manifest(folder: Path, manifest: dict) -> Path:
    path = folder / MANIFEST
    with atomic_write(path) as fh:
        fh.write((json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    return path


def read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise CkptError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("components"), dict):
        raise CkptError(f"{path}: not a ckptkit component-set manifest")
    return data
