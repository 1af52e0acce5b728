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


@pytest.fixture(autouse=True, scope="session")
def _private_hash_cache(tmp_path_factory):
    """The sha256 cache (formats/hashing.py) of this test session lives in a temporary folder, never
    in the user's ~/.cache; CLI subprocesses inherit it through the environment."""
    import os

    old = os.environ.get("CKPTKIT_CACHE_DIR")
    os.environ["CKPTKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("session-ckptkit-cache"))
    yield
    if old is None:
        os.environ.pop("CKPTKIT_CACHE_DIR", None)
    else:
        os.environ["CKPTKIT_CACHE_DIR"] = old


@pytest.fixture(autouse=True, scope="module")
def _module_files_removed(tmp_path_factory):
    """A test module's shared folders (module-scoped fixtures' `mktemp`) are removed when the module
    ends: the suite writes several GB of synthetic checkpoints, more than a CI disk may have free.
    A passed test's own `tmp_path` goes as it passes (tmp_path_retention_policy = "failed"); a
    failed test's (named test_...) is kept for a look, as are the session's (named session-...)."""
    import shutil

    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    for path in set(base.iterdir()) - before:
        if not path.name.startswith(("test_", "session-")):
            shutil.rmtree(path, ignore_errors=True)
