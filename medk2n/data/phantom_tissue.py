"""Tissue maps, published 3 T relaxation/diffusion values and MR signal equations for the phantom.

Why a physics model and not an intensity lookup: the synthesis model must learn
the *relations* between contrasts (CSF bright on T2, nulled on FLAIR, dark on
T1; restricted diffusion bright on DWI and dark on ADC). Those follow from
each tissue's (PD, T1, T2, ADC) through the textbook signal equations, so
deriving every contrast from one set of tissue properties keeps the phantom's
cross-contrast relations the same as a real scanner's.

Tissue fractions come from the MNI ICBM152 2009a symmetric T1/GM/WM maps that
ship in the nilearn wheel (Fonov et al., NeuroImage 2011). The files are found
through the import system's spec without importing nilearn (importing it costs
seconds). The template T1 is brain-extracted, so everything inside its support
that is neither GM nor WM is CSF where the T1 is dark (ventricles, sulci).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from medk2n.errors import DataError

TISSUES = ("gm", "wm", "csf")
WEIGHTED = ("t1", "t2", "flair", "pd", "dwi")  # magnitude images; ADC is a computed map
B_VALUE = 1000.0  # s/mm^2, the clinical stroke DWI b-value (ISLES 2022 trace images)

# Template T1 intensities (0-255 scale) of pure tissue, measured on the template
# itself (median T1 where GM > 0.9, and where GM+WM < 0.1); used to split the
# non-GM/WM remainder into dark CSF and unlabelled (deep) grey matter.
_TEMPLATE_T1_GM = 166.0
_TEMPLATE_T1_CSF = 65.0


@dataclass(frozen=True)
class Tissue:
    """Intrinsic MR properties of one tissue: T1/T2 in ms, PD relative to water, ADC in 1e-6 mm^2/s."""

    t1: float
    t2: float
    pd: float
    adc: float


# 3 T values. WM/GM T1 and T2: Wansapura et al., JMRI 9:531 (1999) (WM 832/80 ms,
# GM 1331/110 ms). CSF T1 ~4.2 s: Lu et al., JMRI 22:13 (2005); CSF T2 is
# free-water-like, ~2 s. PD (water content relative to CSF): WM ~0.69,
# GM ~0.80 (Tofts, "Quantitative MRI of the Brain", 2003, ch. 4).
# ADC: WM ~0.7e-3, GM ~0.8e-3 mm^2/s (Helenius et al., AJNR 23:194, 2002);
# CSF = self-diffusion of free water at 37 C, ~3.0e-3 mm^2/s (Holz et al.,
# PCCP 2:4740, 2000).
TISSUE_VALUES: dict[str, Tissue] = {
    "gm": Tissue(t1=1331.0, t2=110.0, pd=0.80, adc=800.0),
    "wm": Tissue(t1=832.0, t2=80.0, pd=0.69, adc=700.0),
    "csf": Tissue(t1=4163.0, t2=2000.0, pd=1.00, adc=3000.0),
}

# Acute ischaemic stroke (hours old), as multipliers on the affected tissue:
# ADC falls to ~55-65 % of normal (cytotoxic oedema; Schlaug et al.,
# Neurology 49:113, 1997), T2 lengthens by ~30-50 % and PD rises as water
# accumulates, T1 lengthens (lesion slightly dark on T1w).
LESION_FACTORS = Tissue(t1=1.20, t2=1.40, pd=1.08, adc=0.60)


@dataclass(frozen=True)
class Sequence:
    """Acquisition timing in ms; `ti` set only for inversion recovery."""

    tr: float
    te: float
    ti: float | None = None


def null_inversion_time(t1: float, tr: float) -> float:
    """TI that nulls a tissue in IR: solve 1 - 2 exp(-TI/T1) + exp(-TR/T1) = 0."""
    return float(t1 * np.log(2.0 / (1.0 + np.exp(-tr / t1))))


# Clinical-style 3 T protocol. FLAIR's TI nulls nominal CSF (~2.43 s at TR 9 s);
# per-subject T1 jitter leaves CSF near, not exactly at, zero as on real scans.
# The DWI b=0 image is a long-TR spin-echo EPI, i.e. T2-weighted.
SEQUENCES: dict[str, Sequence] = {
    "t1": Sequence(tr=500.0, te=10.0),
    "t2": Sequence(tr=4000.0, te=100.0),
    "pd": Sequence(tr=3000.0, te=15.0),
    "flair": Sequence(tr=9000.0, te=120.0, ti=null_inversion_time(TISSUE_VALUES["csf"].t1, 9000.0)),
    "dwi_b0": Sequence(tr=6000.0, te=90.0),
}


def spin_echo(pd, t1, t2, seq: Sequence):
    """S = PD (1 - exp(-TR/T1)) exp(-TE/T2) (spin echo with TR >> TE)."""
    return pd * (1.0 - np.exp(-seq.tr / t1)) * np.exp(-seq.te / t2)


def inversion_recovery(pd, t1, t2, seq: Sequence):
    """Magnitude IR: S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)."""
    return pd * np.abs(1.0 - 2.0 * np.exp(-seq.ti / t1) + np.exp(-seq.tr / t1)) * np.exp(-seq.te / t2)


def diffusion_weighted(s0, adc, b_value: float = B_VALUE):
    """Stejskal-Tanner: S = S0 exp(-b ADC); b in s/mm^2, ADC in 1e-6 mm^2/s."""
    return s0 * np.exp(-b_value * adc * 1e-6)


def weighted_signal(name: str, pd, t1, t2):
    """Noise-free signal of one compartment for the sequence `name`."""
    seq = SEQUENCES[name]
    return spin_echo(pd, t1, t2, seq) if seq.ti is None else inversion_recovery(pd, t1, t2, seq)


def jittered_tissues(rng: np.random.Generator, sd: float) -> dict[str, Tissue]:
    """Per-subject tissue values: every property of every tissue scaled by 1 + N(0, sd)."""
    out = {}
    for name in TISSUES:
        base = TISSUE_VALUES[name]
        factors = 1.0 + sd * rng.standard_normal(4)
        out[name] = Tissue(*(v * f for v, f in zip((base.t1, base.t2, base.pd, base.adc), factors)))
    return out


def compartment_signals(fractions: np.ndarray, tissues: dict[str, Tissue], lesion: np.ndarray) -> dict[str, np.ndarray]:
    """Noise-free WEIGHTED images and the ADC map from tissue fractions (TISSUES, *shape).

    Each voxel sums its compartments' signals (partial volume). `lesion`
    (0..1) moves the GM/WM compartments towards `LESION_FACTORS`; CSF is
    unaffected. ADC is what a scanner computes from the b=0 and b=1000 images,
    -ln(S_b / S_0) / b, so partial-volume voxels get a signal-weighted ADC.
    """
    images = {name: np.zeros(lesion.shape, dtype=np.float32) for name in (*WEIGHTED, "dwi_b0")}
    for frac, name in zip(fractions, TISSUES):
        t, weight = tissues[name], (0.0 if name == "csf" else lesion)
        t1 = t.t1 * (1.0 + (LESION_FACTORS.t1 - 1.0) * weight)
        t2 = t.t2 * (1.0 + (LESION_FACTORS.t2 - 1.0) * weight)
        pd = t.pd * (1.0 + (LESION_FACTORS.pd - 1.0) * weight)
        adc = t.adc * (1.0 + (LESION_FACTORS.adc - 1.0) * weight)
        for seq in ("t1", "t2", "flair", "pd", "dwi_b0"):
            images[seq] += frac * weighted_signal(seq, pd, t1, t2)
        images["dwi"] += frac * diffusion_weighted(weighted_signal("dwi_b0", pd, t1, t2), adc)
    b0 = images.pop("dwi_b0")
    ratio = np.divide(images["dwi"], b0, out=np.ones_like(b0), where=b0 > 1e-6)
    images["adc"] = (-np.log(np.clip(ratio, 1e-6, 1.0)) / B_VALUE * 1e6).astype(np.float32)
    return images


@dataclass(frozen=True)
class Template:
    """Tissue fractions (3, X, Y, Z) in TISSUES order on the cropped 1 mm template grid."""

    fractions: np.ndarray
    affine: np.ndarray  # voxel -> MNI mm
    brain_points: np.ndarray  # (P, 3) world mm of every 3rd brain voxel per axis, for field-of-view planning

    @property
    def brain_centre(self) -> np.ndarray:
        return (self.brain_points.min(axis=0) + self.brain_points.max(axis=0)) / 2


def template_dir() -> Path:
    """Folder of the MNI152 maps inside the installed nilearn package (not imported)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("nilearn is not installed: the phantom needs its MNI152 template (pip install 'medk2n[data]')")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def _read_map(name: str) -> tuple[np.ndarray, np.ndarray]:
    path = template_dir() / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"
    if not path.is_file():
        raise DataError(f"{path}: MNI152 template map missing from the nilearn install")
    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine, dtype=np.float64)


@lru_cache(maxsize=1)
def load_template() -> Template:
    """GM/WM/CSF fractions from the template, cropped to the brain plus a small margin."""
    t1, affine = _read_map("t1")
    gm = _read_map("gm")[0] / 255.0
    wm = _read_map("wm")[0] / 255.0
    support = t1 > 0
    remainder = np.clip(1.0 - gm - wm, 0.0, 1.0) * support
    darkness = np.clip((_TEMPLATE_T1_GM - t1) / (_TEMPLATE_T1_GM - _TEMPLATE_T1_CSF), 0.0, 1.0)
    csf = remainder * darkness
    gm = gm + remainder * (1.0 - darkness)  # bright unlabelled tissue: deep grey matter
    fractions = np.stack([gm, wm, csf]).astype(np.float32)
    idx = np.argwhere(support)
    lo = np.maximum(idx.min(0) - 4, 0)
    hi = np.minimum(idx.max(0) + 5, support.shape)
    fractions = np.ascontiguousarray(fractions[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]])
    cropped = affine.copy()
    cropped[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    coarse = np.argwhere(support[::3, ::3, ::3]) * 3
    return Template(fractions, cropped, coarse @ affine[:3, :3].T + affine[:3, 3])


@lru_cache(maxsize=4)
def blurred_fractions(sigma_vox: tuple[float, float, float]) -> np.ndarray:
    """Template fractions blurred by the acquisition's point-spread (partial volume of large voxels)."""
    fractions = load_template().fractions
    if not any(s > 0 for s in sigma_vox):
        return fractions
    return np.stack([ndi.gaussian_filter(f, sigma_vox, mode="constant", truncate=3.0) for f in fractions])
