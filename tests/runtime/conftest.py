"""Fixtures for the runtime tests; helpers live in runtime_fixtures (unique module name across test folders)."""

from runtime_fixtures import bundle_dir, fixed_bundle_dir  # noqa: F401
