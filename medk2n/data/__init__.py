"""Data layer (numpy + nibabel only): NIfTI I/O, cases, geometry, normalisation, slicing, phantom."""
