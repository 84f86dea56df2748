import pytest


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """Three small 4 mm phantom subjects: enough for a train/val split at 32x32."""
    from medk2n.data.phantom import generate_dataset

    root = tmp_path_factory.mktemp("phantom")
    generate_dataset(root, subjects=3, seed=3, spacing=4.0)
    return root
