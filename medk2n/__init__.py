"""medk2n: K->N cross-modal MRI synthesis (train -> export -> torch-free runtime).

Kept import-light on purpose: `import medk2n.runtime` must never pull torch.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

# In a source checkout `export/`, `runtime/` and `benchmarks/` sit beside this folder, not in it
# (setup.cfg maps them into the package at install). Run from the checkout's root, Python finds
# this folder before any installed medk2n, so without this `import medk2n.runtime` failed there
# even with medk2n installed. An installed package has them inside and is left as it is.
_checkout = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).resolve().parent / "runtime").is_dir() and (_checkout / "runtime" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # type: ignore[name-defined]  # noqa: F821
del _Path, _checkout
