import subprocess
import sys

DATA_MODULES = [
    "medk2n.data.cases",
    "medk2n.data.check",
    "medk2n.data.cli",
    "medk2n.data.dataset",
    "medk2n.data.geometry",
    "medk2n.data.mask",
    "medk2n.data.nifti",
    "medk2n.data.normalize",
    "medk2n.data.preprocess",
    "medk2n.data.slicing",
]


def test_data_layer_never_imports_torch_or_scipy():
    """The runtime shares this code; a blocked import fails loudly if anything pulls torch or scipy."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['scipy'] = None\n"
        + "".join(f"import {name}\n" for name in DATA_MODULES)
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
