import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT.parent / "shared" / "manifests"
VECTORS = ROOT.parent / "shared" / "vectors"


def load_manifest(name: str) -> dict:
    """A manifest from ../shared/manifests (the real tensor names and shapes of released files)."""
    path = MANIFESTS / f"{name}.json"
    if not path.exists():
        pytest.fail(f"{path} is missing: tests need ../shared beside the checkout")
    return json.loads(path.read_text())


def manifest_shapes(name: str, component: str) -> dict[str, tuple[int, ...]]:
    comp = load_manifest(name)["components"][component]
    return {k: tuple(v[0]) for k, v in comp["tensors"].items()}
