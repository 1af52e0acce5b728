import pytest

from ckptkit.fixtures.factory import write_bundle


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("build-sources")
    write_bundle("sd1", folder / "sd1.safetensors")
    write_bundle("sd1", folder / "tuned.safetensors", seed=1)  # a fine-tune: the same layout, other weights
    return folder
