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
from typing import Callable, Mapping, Union

import numpy as np

from medk2n.config import NormSpec
from medk2n.data.geometry import (
    Orientation,
    check_same_geometry,
    canonical_view,
    geometry_mismatch,
    resample_to_reference,
    to_canonical,
)
from medk2n.data.mask import brain_mask
from medk2n.data.nifti import VolumeInfo
from medk2n.data.normalize import NormParams, apply_norm, as_norm_spec, denormalize, norm_params
from medk2n.data.slabs import slabs
from medk2n.data.slicing import SliceGeometry, slab_to_slices, slice_geometry, slices_to_volume, volume_to_slices
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


# A source: (array, info) as `read_volume` gives, or a reader returning that when called.
Source = Union[tuple[np.ndarray, VolumeInfo], Callable[[], tuple[np.ndarray, VolumeInfo]]]


def prepare_case(
    volumes: Mapping[str, Source],
    norms: dict[str, NormSpec | dict],
    size: int,
    reference: str | None = None,
) -> PreparedCase:
    """Volumes of one case -> normalised model-space slices and the parameters to invert them.

    One source at a time (issue 22: memory follows the header, not K whole volumes): a reader
    (`cases.case_readers`) is called on that source's turn and its array dropped after it, and
    the normalised volume is never built whole: it is scaled slab by slab into the model slices
    and into the running sum the joint brain mask is taken on. Peak memory is then about three
    float32 volumes (the sum, the current source, the mask's labels) for any K.
    """
    missing = [name for name in volumes if name not in norms]
    if missing:
        raise DataError(f"no normalisation declared for modalities {missing} (known: {', '.join(norms)})")
    if not volumes:
        raise DataError("no volumes to prepare")
    if reference is not None and reference not in volumes:
        raise DataError(f"reference modality '{reference}' is not among the inputs ({', '.join(volumes)})")
    held = _read(volumes[reference]) if reference is not None else None  # its grid is needed first
    ref_name, ref = (reference, held[1]) if held is not None else (None, None)
    total = geom = orientation = None
    slices: dict[str, np.ndarray] = {}
    params: dict[str, NormParams] = {}
    for name, source in volumes.items():
        if name == reference:
            (array, info), held = held, None
        else:
            array, info = _read(source)
        if ref is None:  # without --reference the first source's grid is the one
            ref_name, ref = name, info
        oriented, orientation = to_canonical(_on_grid(array, info, ref_name, ref, name, reference is not None),
                                             ref.affine)
        del array
        # Percentiles are taken inside the volume's own head mask, not over
        # every voxel above zero: unmasked scanner images have a noise floor
        # everywhere, and percentiles over mostly-background voxels clip the
        # brightest few percent of tissue (CSF on T2, lesions on DWI) to 1.
        # The mask comes from this volume alone, so a modality is scaled the
        # same whichever other contrasts come with it (training vs serving).
        params[name] = norm_params(oriented, norms[name], mask=brain_mask(oriented), source=info.path)
        if total is None:
            geom = slice_geometry(oriented.shape, orientation.zooms, size)
            total = np.zeros(oriented.shape, dtype=np.float32)
        slices[name] = _scale_into(oriented, params[name], geom, total)
        del oriented
    mask_volume = brain_mask(total)
    del total
    mask_slices, _ = volume_to_slices(mask_volume, orientation.zooms, size)
    return PreparedCase(
        slices=slices,
        brain=mask_slices > 0.5,
        norm=params,
        orientation=orientation,
        slicing=geom,
        reference=ref,
    )


def _read(source: Source) -> tuple[np.ndarray, VolumeInfo]:
    return source() if callable(source) else source


def _on_grid(array: np.ndarray, info: VolumeInfo, ref_name: str, ref: VolumeInfo, name: str,
             resample: bool) -> np.ndarray:
    """`array` on the reference grid: resampled onto it (`--reference`) or checked to be on it."""
    if resample:
        return array if geometry_mismatch(ref, info) is None else resample_to_reference(array, info, ref)
    check_same_geometry({ref_name: ref, name: info})
    return array


def _scale_into(oriented: np.ndarray, params: NormParams, geom: SliceGeometry, total: np.ndarray) -> np.ndarray:
    """Model slices of the normalised `oriented`, made slab by slab; each scaled slab is also added to
    `total` (in source order, as np.sum over the stacked volumes added them, so the sum is the same)."""
    slices = np.empty((geom.shape[2], geom.size, geom.size), dtype=np.float32)
    for part in slabs(geom.shape[2], geom.shape[0] * geom.shape[1]):
        scaled = apply_norm(oriented[:, :, part], params)
        slices[part] = slab_to_slices(scaled, geom)
        total[:, :, part] += scaled
    return slices


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

    Written slab by slab straight into the input's axis order (through the canonical view of
    the output array), so the restored volume exists once, not once per step.
    """
    volume = np.empty(prepared.orientation.shape, dtype=np.float32)
    slices_to_volume(slices, prepared.slicing, out=canonical_view(volume, prepared.orientation))
    if norm is not None:
        spec = as_norm_spec(norm)
        if spec.kind == "range":
            denormalize(volume, NormParams(kind="range", lo=float(spec.low), hi=float(spec.high)), out=volume)
    return volume
