"""Find the NIfTI files of a case and map them onto modality names.

Three layouts land on the same `Case` (DESIGN.md, "Data contract"):

- generic: `DATASET/<case>/<modality>.nii[.gz]`, names case-insensitive,
  masks named `brain_mask` / `lesion_mask` (any `<name>_mask`);
- ISLES 2022 (BIDS): `sub-*/ses-*/dwi/*_dwi.nii.gz`, `*_adc.nii.gz`,
  `anat/*_FLAIR.nii.gz`, lesion masks under `derivatives/` when present;
- BraTS 2023: `BraTS-GLI-XXXXX-XXX/BraTS-GLI-XXXXX-XXX-{t1n,t1c,t2w,t2f,seg}.nii.gz`
  (the older `_{t1,t1ce,t2,flair,seg}` naming works through the same rule).

Discovery never reads voxels; it records unknown files and name clashes on the
`Case` so `medk2n-data check` can report every case instead of stopping at the
first, while `find_case_files` / `load_case` raise on what they are asked for.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from medk2n.config import DEFAULT_MODALITIES
from medk2n.data.nifti import MAX_VOXELS, VolumeInfo, read_volume, strip_nifti_suffix
from medk2n.errors import DataError

MODALITY_ALIASES: dict[str, str] = {
    "t1w": "t1",
    "t1n": "t1",
    "t1ce": "t1c",
    "t1gd": "t1c",
    "t1post": "t1c",
    "t2w": "t2",
    "t2f": "flair",
    "t2flair": "flair",
    "t2_flair": "flair",
    "pdw": "pd",
    "trace": "dwi",
}

# Mask file stems (after lower-casing) and the mask role they play.
MASK_NAMES: dict[str, str] = {"seg": "lesion", "msk": "lesion", "mask": "brain"}
_MASK_SUFFIX = "_mask"


def normalise_modality_name(name: str) -> str:
    """`T2W` -> `t2`, `FLAIR` -> `flair`: lower-case, then the alias map."""
    key = name.strip().lower()
    return MODALITY_ALIASES.get(key, key)


@dataclass
class Case:
    """One subject/session: modality -> file, mask role -> file.

    `unknown` lists NIfTI files whose name is no known modality and
    `duplicates` the modalities claimed by more than one file; both are kept
    for reporting and only become errors when such a modality is requested.
    """

    name: str
    files: dict[str, Path]
    masks: dict[str, Path]
    unknown: list[Path] = field(default_factory=list)
    duplicates: dict[str, list[Path]] = field(default_factory=dict)

    def require(self, modalities: Sequence[str]) -> None:
        """DataError naming the case when a requested modality is absent or ambiguous."""
        for raw in modalities:
            modality = normalise_modality_name(raw)
            if modality in self.duplicates:
                names = ", ".join(p.name for p in self.duplicates[modality])
                raise DataError(f"{self.name}: several files map to modality '{modality}' ({names})")
            if modality not in self.files:
                found = ", ".join(sorted(self.files)) or "none"
                hint = ""
                if self.unknown:
                    hint = f"; ignored files with unknown names: {', '.join(p.name for p in self.unknown)}"
                raise DataError(f"{self.name}: missing modality '{modality}' (found: {found}){hint}")


class _CaseBuilder:
    """Collects (token, path) pairs of one case and sorts them into modalities, masks, unknowns."""

    def __init__(self, name: str, vocabulary: set[str]) -> None:
        self.case = Case(name=name, files={}, masks={})
        self.vocabulary = vocabulary

    def add(self, token: str, path: Path) -> None:
        key = token.strip().lower()
        if key in MASK_NAMES or key.endswith(_MASK_SUFFIX):
            role = MASK_NAMES.get(key) or key[: -len(_MASK_SUFFIX)]
            self.case.masks[role] = path
            return
        modality = normalise_modality_name(key)
        if modality not in self.vocabulary:
            self.case.unknown.append(path)
        elif modality in self.case.files:
            self.case.duplicates.setdefault(modality, [self.case.files[modality]]).append(path)
        else:
            self.case.files[modality] = path


def _vocabulary(modalities: Sequence[str] | None) -> set[str]:
    return set(DEFAULT_MODALITIES) | {normalise_modality_name(m) for m in modalities or ()}


def _nifti_files(folder: Path) -> list[tuple[str, Path]]:
    """(stem, path) of every NIfTI file directly in `folder`, sorted by name."""
    out = []
    for path in sorted(folder.iterdir()):
        stem = strip_nifti_suffix(path.name)
        if stem is not None and path.is_file() and not path.name.startswith("."):
            out.append((stem, path))
    return out


def scan_generic_case(case_dir: Path, modalities: Sequence[str] | None = None) -> Case:
    """A folder of `<modality>.nii[.gz]` files; odd names are recorded on the Case, not raised."""
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise DataError(f"{case_dir}: case folder not found")
    builder = _CaseBuilder(case_dir.name, _vocabulary(modalities))
    for stem, path in _nifti_files(case_dir):
        builder.add(stem, path)
    return builder.case


def open_case(case_dir: Path, modalities: Sequence[str] | None = None) -> Case:
    """A generic case folder as a `Case`; DataError if a requested modality is missing or ambiguous."""
    case = scan_generic_case(case_dir, modalities)
    case.require(modalities or ())
    return case


def find_case_files(case_dir: Path, modalities: Sequence[str] | None = None) -> dict[str, Path]:
    """Modality -> file for a generic case folder; DataError if a requested modality is missing."""
    return open_case(case_dir, modalities).files


def _brats_token(stem: str, prefix: str) -> str | None:
    """`BraTS-GLI-00000-000-t2f` with prefix `brats-gli-00000-000` -> `t2f`; None if the prefix differs."""
    if len(stem) <= len(prefix) + 1 or not stem.lower().startswith(prefix) or stem[len(prefix)] not in "-_":
        return None
    return stem[len(prefix) + 1 :]


def _scan_brats_case(case_dir: Path, vocabulary: set[str]) -> Case | None:
    """BraTS names every file `<case folder name>-<token>`; None when this folder does not."""
    prefix = case_dir.name.lower()
    files = [(_brats_token(stem, prefix), path) for stem, path in _nifti_files(case_dir)]
    if not files or any(token is None for token, _ in files):
        return None
    builder = _CaseBuilder(case_dir.name, vocabulary)
    for token, path in files:
        builder.add(token, path)
    return builder.case


# ISLES 2022 / BIDS: `<entities>_<suffix>.nii.gz`, the suffix after the last underscore.
_BIDS_SUBJECT = re.compile(r"^sub-[A-Za-z0-9]+$")
_BIDS_DATATYPES = ("anat", "dwi")


def _bids_suffix(stem: str) -> str:
    return stem.rsplit("_", 1)[-1]


def _scan_bids_subject(subject_dir: Path, derivatives: Path | None, vocabulary: set[str]) -> list[Case]:
    sessions = sorted(p for p in subject_dir.glob("ses-*") if p.is_dir()) or [subject_dir]
    cases = []
    for session in sessions:
        name = subject_dir.name if len(sessions) == 1 else f"{subject_dir.name}_{session.name}"
        builder = _CaseBuilder(name, vocabulary)
        for datatype in _BIDS_DATATYPES:
            folder = session / datatype
            if folder.is_dir():
                for stem, path in _nifti_files(folder):
                    builder.add(_bids_suffix(stem), path)
        if derivatives is not None:
            deriv = derivatives / session.relative_to(subject_dir.parent)
            if deriv.is_dir():
                for folder in [deriv, *sorted(p for p in deriv.iterdir() if p.is_dir())]:
                    for stem, path in _nifti_files(folder):
                        if _bids_suffix(stem).lower() in MASK_NAMES:
                            builder.add(_bids_suffix(stem), path)
        if builder.case.files or builder.case.unknown:
            cases.append(builder.case)
    return cases


def _is_bids_subject(folder: Path) -> bool:
    """`sub-*` with session or datatype folders (a plain `sub-001/flair.nii.gz` case is generic)."""
    if not _BIDS_SUBJECT.match(folder.name):
        return False
    return any(p.is_dir() and (p.name.startswith("ses-") or p.name in _BIDS_DATATYPES) for p in folder.iterdir())


def _bids_root(root: Path) -> Path:
    """ISLES ships subjects at the top level or under `rawdata/`."""
    raw = root / "rawdata"
    return raw if raw.is_dir() else root


_SKIPPED_FOLDERS = {"derivatives", "code", "sourcedata", "rawdata"}


def discover_dataset(root: Path, modalities: Sequence[str] | None = None) -> list[Case]:
    """Every case under `root`, whichever supported layout each folder follows, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    vocabulary = _vocabulary(modalities)
    cases: list[Case] = []
    bids = _bids_root(root)
    derivatives = root / "derivatives"
    for sub in sorted(p for p in bids.iterdir() if p.is_dir() and _is_bids_subject(p)):
        cases.extend(_scan_bids_subject(sub, derivatives if derivatives.is_dir() else None, vocabulary))
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name in _SKIPPED_FOLDERS or folder.name.startswith(".") or _is_bids_subject(folder):
            continue
        case = _scan_brats_case(folder, vocabulary)
        if case is None:
            case = scan_generic_case(folder, modalities)
        if case.files or case.unknown or case.duplicates:
            cases.append(case)
    if not cases:
        raise DataError(
            f"{root}: no cases found (expected <case>/<modality>.nii.gz folders, "
            "ISLES 2022 sub-*/ses-*/{anat,dwi}, or BraTS-*/BraTS-*-{t1n,t1c,t2w,t2f}.nii.gz)"
        )
    return sorted(cases, key=lambda c: c.name)


def load_case(case: Case | Path, modalities: Sequence[str],
              max_voxels: int = MAX_VOXELS) -> dict[str, tuple[np.ndarray, VolumeInfo]]:
    """Read the requested modalities of a case (validated 3-D, finite, non-constant, at most
    `max_voxels` each)."""
    case = case if isinstance(case, Case) else open_case(case, modalities)
    case.require(modalities)
    return {normalise_modality_name(m): read_volume(case.files[normalise_modality_name(m)], max_voxels=max_voxels)
            for m in modalities}


FINGERPRINT_BYTES = 1 << 16


def case_fingerprint(case: Case) -> str:
    """A short content id of a case: its modality files' sizes and first 64 KiB, hashed.

    Names do not identify subjects (every phantom seed has a sub-000, sites reuse ids), so
    export tells training subjects from held-out ones by this instead; reading 64 KiB per
    file keeps it cheap on full-resolution data.
    """
    digest = hashlib.sha256()
    for modality, path in sorted(case.files.items()):
        digest.update(f"{modality}:{path.stat().st_size}:".encode())
        with open(path, "rb") as fh:
            digest.update(fh.read(FINGERPRINT_BYTES))
    return digest.hexdigest()[:16]
