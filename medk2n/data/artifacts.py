"""Source artefacts for training: the faults a quality-driven fusion exists to turn down.

A gate can only learn to weigh a source by its quality if training ever shows
it a source of poor quality; on clean data every source is worth taking, and
the gates learn a constant. So, with probability `train.source_artifacts`, one
auxiliary source of a sample (never the base slot, which the fusion cannot
reject) is degraded before the model sees it, while the targets stay clean:

- `noise`: Rician noise (magnitude of a complex Gaussian), sigma drawn from
  5-30 % of the slice's 99th percentile, as TorchIO's RandomNoise does for
  magnitude images;
- `ghosting`: motion ghosts, random phase errors on every m-th phase-encode
  line (m drawn 2-6, along a random in-plane axis), as TorchIO's RandomGhosting;
- `contrast`: another contrast of the same subject in the source's place (a
  mislabelled series).

Every parameter is drawn at random, so the model learns the kinds of fault,
not the settings of a benchmark. The slices are normalised intensities in
[0, 1]; the degraded slice is clipped back to that range.
"""

from __future__ import annotations

import numpy as np

from medk2n.data.mask import brain_mask
from medk2n.errors import ConfigError, DataError

ARTIFACTS = ("noise", "ghosting", "contrast")
NOISE_RANGE = (0.05, 0.30)  # sigma as a fraction of the slice's 99th percentile
GHOST_EVERY = (2, 6)


def rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise of sd `sigma` (float64, any shape)."""
    real = image + rng.normal(0.0, sigma, image.shape)
    return np.hypot(real, rng.normal(0.0, sigma, image.shape))


def motion_ghosts(image: np.ndarray, axis: int, lines: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Magnitude after random phase errors (sd pi/2) on the phase-encode `lines` along `axis` (float64)."""
    kspace = np.fft.fft(image, axis=axis)
    phase = np.exp(1j * rng.normal(0.0, np.pi / 2, len(lines)))
    index, shape = [slice(None)] * image.ndim, [1] * image.ndim
    index[axis], shape[axis] = lines, len(lines)
    kspace[tuple(index)] *= phase.reshape(shape)
    return np.abs(np.fft.ifft(kspace, axis=axis))


def degrade(image: np.ndarray, kind: str, rng: np.random.Generator, other: np.ndarray | None = None) -> np.ndarray:
    """A degraded copy of one normalised slice [H,W] (float32 in [0,1]); `other` is the wrong contrast."""
    image = np.asarray(image, dtype=np.float32)
    if kind == "noise":
        out = rician_noise(image, rng.uniform(*NOISE_RANGE) * max(float(np.percentile(image, 99)), 1e-3), rng)
    elif kind == "ghosting":
        axis = int(rng.integers(0, 2))
        lines = np.arange(int(rng.integers(0, 2)), image.shape[axis], int(rng.integers(GHOST_EVERY[0], GHOST_EVERY[1] + 1)))
        out = motion_ghosts(image, axis, lines, rng)
    elif kind == "contrast":
        if other is None or other.shape != image.shape:
            raise ValueError("contrast artefact needs another contrast's slice of the same shape")
        out = other
    else:
        raise ValueError(f"artefact {kind!r}: choose one of {', '.join(ARTIFACTS)}")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# Test-time faults of a whole volume, at fixed settings (the robustness benchmark's and the export's
# source-check calibration's): heavy noise, ghosts on every 4th phase-encode line, or another contrast.
VOLUME_NOISE_FRACTION = 0.2  # Rician sigma as a fraction of the brain's 99th percentile
VOLUME_GHOST_EVERY = 4


def degrade_volume(volume: np.ndarray, kind: str, rng: np.random.Generator,
                   other: np.ndarray | None = None) -> np.ndarray:
    """One degraded copy of `volume` (3-D, scanner or physical units); `other` is the wrong contrast."""
    volume = np.asarray(volume, dtype=np.float32)
    if kind == "noise":
        sigma = VOLUME_NOISE_FRACTION * float(np.percentile(volume[brain_mask(volume)], 99))
        return rician_noise(volume, sigma, rng).astype(np.float32)
    if kind == "ghosting":
        return motion_ghosts(volume, 1, np.arange(0, volume.shape[1], VOLUME_GHOST_EVERY), rng).astype(np.float32)
    if kind == "contrast":
        if other is None or other.shape != volume.shape:
            raise DataError("contrast corruption needs another modality's volume on the same grid")
        return np.asarray(other, dtype=np.float32).copy()
    raise ConfigError(f"corruption {kind!r}: choose one of {', '.join(ARTIFACTS)}")
