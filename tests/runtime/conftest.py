"""Fixtures for the runtime tests; helpers live in runtime_fixtures and triton_fixtures (unique module names
across test folders)."""

from runtime_fixtures import bundle_dir, fixed_bundle_dir  # noqa: F401
from triton_fixtures import served  # noqa: F401
