"""Torch-free runtime: bundle loading, backends, slice-wise volume pipeline, `medk2n-run`."""
