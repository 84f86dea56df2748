"""The one preprocessing pipeline shared by training, evaluation and the runtime.

volumes on one grid (checked, or resampled onto a reference modality)
  -> closest-RAS reorientation (transpose/flip only)
  -> per-modality normalisation to [0, 1] (percentiles inside the volume's head)
  -> brain mask from the normalised volumes
  -> axial slices at model size (square physical FOV).

Every step keeps the parameters of its inverse in `PreparedCase`, and
`restore_volume` applies the inverses in reverse order, so a model output
lands on exactly the reference grid (and, for quantitative maps, back in
physical units). Training and serving call the same two functions, so they
cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medk2n.config import NormSpec
from medk2n.data.geometry import (
    Orientation,
    check_same_geometry,
    from_canonical,
    geometry_mismatch,
    resample_to_reference,
    to_canonical,
)
from medk2n.data.mask import brain_mask
from medk2n.data.nifti import VolumeInfo
from medk2n.data.normalize import NormParams, as_norm_spec, denormalize, normalize
from medk2n.data.slicing import SliceGeometry, slices_to_volume, volume_to_slices
from medk2n.errors import DataError


@dataclass
class PreparedCase:
    """Model-space slices of one case plus what is needed to write outputs back."""

    slices: dict[str, np.ndarray]  # modality -> float32 [S, size, size] in [0, 1]
    brain: np.ndarray  # bool [S, size, size]
    norm: dict[str, NormParams]
    orientation: Orientation
    slicing: SliceGeometry
    reference: VolumeInfo  # grid on which outputs are written


def align_to_reference(
    volumes: dict[str, tuple[np.ndarray, VolumeInfo]], reference: str | None
) -> tuple[dict[str, np.ndarray], VolumeInfo]:
    """All arrays on one grid: checked (reference=None) or resampled onto `volumes[reference]`."""
    if not volumes:
        raise DataError("no volumes to prepare")
    if reference is None:
        check_same_geometry({name: info for name, (_, info) in volumes.items()})
        return {name: array for name, (array, _) in volumes.items()}, next(iter(volumes.values()))[1]
    if reference not in volumes:
        raise DataError(f"reference modality '{reference}' is not among the inputs ({', '.join(volumes)})")
    ref = volumes[reference][1]
    arrays = {}
    for name, (array, info) in volumes.items():
        same = geometry_mismatch(ref, info) is None
        arrays[name] = array if same else resample_to_reference(array, info, ref)
    return arrays, ref


def prepare_case(
    volumes: dict[str, tuple[np.ndarray, VolumeInfo]],
    norms: dict[str, NormSpec | dict],
    size: int,
    reference: str | None = None,
) -> PreparedCase:
    """Volumes of one case -> normalised model-space slices and the parameters to invert them."""
    missing = [name for name in volumes if name not in norms]
    if missing:
        raise DataError(f"no normalisation declared for modalities {missing} (known: {', '.join(norms)})")
    arrays, ref = align_to_reference(volumes, reference)
    orientation = None
    canonical: dict[str, np.ndarray] = {}
    params: dict[str, NormParams] = {}
    for name, array in arrays.items():
        oriented, orientation = to_canonical(array, ref.affine)
        # Percentiles are taken inside the volume's own head mask, not over
        # every voxel above zero: unmasked scanner images have a noise floor
        # everywhere, and percentiles over mostly-background voxels clip the
        # brightest few percent of tissue (CSF on T2, lesions on DWI) to 1.
        # The mask comes from this volume alone, so a modality is scaled the
        # same whichever other contrasts come with it (training vs serving).
        canonical[name], params[name] = normalize(
            oriented, norms[name], mask=brain_mask(oriented), source=volumes[name][1].path
        )
    mask_volume = brain_mask(np.sum(list(canonical.values()), axis=0))
    slices: dict[str, np.ndarray] = {}
    geom = None
    for name, vol in canonical.items():
        slices[name], geom = volume_to_slices(vol, orientation.zooms, size)
    mask_slices, _ = volume_to_slices(mask_volume.astype(np.float32), orientation.zooms, size)
    return PreparedCase(
        slices=slices,
        brain=mask_slices > 0.5,
        norm=params,
        orientation=orientation,
        slicing=geom,
        reference=ref,
    )


def mask_to_slices(mask: np.ndarray, info: VolumeInfo, prepared: PreparedCase) -> np.ndarray:
    """A label mask (e.g. a shipped lesion mask) on the model slices of `prepared`: float32 [S, size, size].

    Values are the fraction of each model pixel the label covers, not a
    thresholded copy: a 1-voxel lesion at 1 mm would vanish at 64 x 64 if
    cut at 0.5, but its partial weight still counts in a loss. A mask on
    another grid than the case's reference (lesions drawn on DWI, images on
    FLAIR) is resampled onto it by nearest neighbour, as images are with
    `reference`.
    """
    label = (np.asarray(mask) > 0.5).astype(np.float32)
    if geometry_mismatch(prepared.reference, info) is not None:
        label = resample_to_reference(label, info, prepared.reference, order=0)
    oriented, _ = to_canonical(label, prepared.reference.affine)
    slices, _ = volume_to_slices(oriented, prepared.orientation.zooms, prepared.slicing.size)
    return np.clip(slices, 0.0, 1.0).astype(np.float32, copy=False)


def restore_volume(slices: np.ndarray, prepared: PreparedCase, norm: NormSpec | dict | None) -> np.ndarray:
    """Model output [S, size, size] -> float32 array of `prepared.reference.shape`.

    A "range" modality is denormalised to physical units with its fixed range;
    "percentile" modalities and None (e.g. the scale maps) stay in model units,
    because weighted images have no absolute scale to return to.
    """
    canonical = slices_to_volume(np.asarray(slices, dtype=np.float32), prepared.slicing)
    volume = from_canonical(canonical, prepared.orientation)
    if norm is not None:
        spec = as_norm_spec(norm)
        if spec.kind == "range":
            volume = denormalize(volume, NormParams(kind="range", lo=float(spec.low), hi=float(spec.high)))
    return volume.astype(np.float32, copy=False)
