"""Find the NIfTI files of a case and map them onto modality names.

Three layouts land on the same `Case` (DESIGN.md, "Data contract"):

- generic: `DATASET/<case>/<modality>.nii[.gz]`, names case-insensitive,
  masks named `brain_mask` / `lesion_mask` (any `<name>_mask`);
- ISLES 2022 (BIDS): `sub-*/ses-*/dwi/*_dwi.nii.gz`, `*_adc.nii.gz`,
  `anat/*_FLAIR.nii.gz`, lesion masks under `derivatives/` when present;
- BraTS 2023: `BraTS-GLI-XXXXX-XXX/BraTS-GLI-XXXXX-XXX-{t1n,t1c,t2w,t2f,seg}.nii.gz`
  (the older `_{t1,t1ce,t2,flair,seg}` naming works through the same rule);
- nnU-Net raw: `DatasetXXX/dataset.json` naming the channels (`channel_names`,
  or v1's `modality`) and `imagesTr|imagesTs/<case>_<XXXX>.nii.gz`, one file
  per channel; `labelsTr/<case>.nii.gz` is the case's lesion mask.

`discover_dataset` reads a dataset root; `resolve_cases` reads whatever one
command-line argument names (a case folder of any layout, a BIDS subject, an
nnU-Net images folder or a dataset root), so `medk2n-run` and `medk2n-data
check` see the same cases under the same names.

Discovery never reads voxels; it records unknown files and name clashes on the
`Case` so `medk2n-data check` can report every case instead of stopping at the
first, while `find_case_files` / `load_case` raise on what they are asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

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

# nnU-Net raw: `<case>_<XXXX><file_ending>`, XXXX the zero-padded channel index of dataset.json.
_NNUNET_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_NNUNET_IMAGES = ("imagesTr", "imagesTs")
NNUNET_JSON = "dataset.json"


def _nnunet_channels(dataset_json: Path) -> dict[int, str]:
    """Channel index -> channel name from an nnU-Net dataset.json (v2 `channel_names`, v1 `modality`)."""
    try:
        meta = json.loads(dataset_json.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{dataset_json}: not a readable nnU-Net dataset.json ({exc})") from None
    names = meta.get("channel_names", meta.get("modality")) if isinstance(meta, dict) else None
    if not isinstance(names, dict) or not names:
        raise DataError(f"{dataset_json}: no 'channel_names' (or 'modality') mapping of channel index to name")
    channels = {}
    for index, name in names.items():
        if not str(index).isdigit() or not isinstance(name, str) or not name.strip():
            raise DataError(f"{dataset_json}: channel {index!r}: {name!r} is not an index -> name entry")
        channels[int(index)] = name
    return channels


def _scan_nnunet_images(images: Path, channels: dict[int, str], labels: Path | None,
                        vocabulary: set[str]) -> list[Case]:
    """The cases of one nnU-Net images folder; a file of no declared channel is recorded as unknown."""
    builders: dict[str, _CaseBuilder] = {}
    for stem, path in _nifti_files(images):
        match = _NNUNET_FILE.match(stem)
        case = match.group("case") if match else stem
        builder = builders.setdefault(case, _CaseBuilder(case, vocabulary))
        channel = int(match.group("channel")) if match else None
        if channel is None or channel not in channels:
            builder.case.unknown.append(path)
        else:
            builder.add(channels[channel], path)
    # dataset.json's file_ending may be .nii as well as .nii.gz: take the label by stem, like the images.
    label_files = dict(_nifti_files(labels)) if labels is not None and labels.is_dir() else {}
    for case, builder in builders.items():
        if case in label_files:
            builder.case.masks["lesion"] = label_files[case]
    return [b.case for b in builders.values()]


def _nnunet_json(folder: Path) -> Path | None:
    """The dataset.json governing `folder`: its own (a dataset root) or its parent's (an images folder)."""
    for candidate in (folder / NNUNET_JSON, folder.parent / NNUNET_JSON):
        if candidate.is_file():
            return candidate
    return None


def scan_nnunet(folder: Path, modalities: Sequence[str] | None = None) -> list[Case] | None:
    """Cases of an nnU-Net raw dataset root (imagesTr and imagesTs) or of one of its images folders;
    None when `folder` is neither."""
    dataset_json = _nnunet_json(folder)
    if dataset_json is None:
        return None
    root = dataset_json.parent
    if folder == root:
        folders = [root / name for name in _NNUNET_IMAGES if (root / name).is_dir()]
        if not folders:
            return None
    elif any(_NNUNET_FILE.match(stem) for stem, _ in _nifti_files(folder)):
        folders = [folder]
    else:
        return None
    channels, vocabulary = _nnunet_channels(dataset_json), _vocabulary(modalities)
    labels = root / "labelsTr"
    cases = []
    for images in folders:
        cases.extend(_scan_nnunet_images(images, channels, labels if images.name == "imagesTr" else None, vocabulary))
    return cases


def discover_dataset(root: Path, modalities: Sequence[str] | None = None) -> list[Case]:
    """Every case under `root`, whichever supported layout each folder follows, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    vocabulary = _vocabulary(modalities)
    nnunet = scan_nnunet(root, modalities)
    if nnunet is not None:
        return _named_once(root, nnunet)
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
    return _named_once(root, cases)


def _named_once(root: Path, cases: list[Case]) -> list[Case]:
    """Cases sorted by name; DataError when there are none, or two share a name (their outputs would collide)."""
    if not cases:
        raise DataError(
            f"{root}: no cases found (expected <case>/<modality>.nii.gz folders, "
            "ISLES 2022 sub-*/ses-*/{anat,dwi}, BraTS-*/BraTS-*-{t1n,t1c,t2w,t2f}.nii.gz, "
            "or an nnU-Net dataset.json with imagesTr/imagesTs)"
        )
    names = [c.name for c in cases]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise DataError(f"{root}: several cases are named {clash[0]!r}")
    return sorted(cases, key=lambda c: c.name)


def resolve_cases(path: Path, modalities: Sequence[str] | None = None) -> list[Case]:
    """The cases one command-line argument names, whatever layout it follows.

    A BIDS subject folder gives its sessions; a BraTS case folder, or a folder
    holding `<modality>.nii.gz` files, one case; an nnU-Net images folder its
    cases; anything else is read as a dataset root (`discover_dataset`). The
    path is resolved first so `.` is named after the folder it is.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: {'not a folder' if path.exists() else 'folder not found'} "
                        "(expected a case folder or a dataset root)")
    path = path.resolve()
    vocabulary = _vocabulary(modalities)
    if _is_bids_subject(path):
        top = path.parent.parent if path.parent.name == "rawdata" else path.parent
        derivatives = top / "derivatives"
        cases = _scan_bids_subject(path, derivatives if derivatives.is_dir() else None, vocabulary)
        return _named_once(path, cases)
    brats = _scan_brats_case(path, vocabulary)
    if brats is not None:
        return [brats]
    nnunet = scan_nnunet(path, modalities)
    if nnunet is not None:
        return _named_once(path, nnunet)
    if _nifti_files(path):
        return [scan_generic_case(path, modalities)]
    return discover_dataset(path, modalities)


def case_folder(case: Case) -> Path:
    """The folder that holds a case's files (the deepest one common to all of them)."""
    files = [*case.files.values(), *case.masks.values(), *case.unknown]
    if not files:
        return Path(case.name)
    return Path(os.path.commonpath([str(p.parent) for p in files]))


def load_case(case: Case | Path, modalities: Sequence[str],
              max_voxels: int = MAX_VOXELS) -> dict[str, tuple[np.ndarray, VolumeInfo]]:
    """Read the requested modalities of a case (validated 3-D, finite, non-constant, at most
    `max_voxels` each)."""
    return {m: read() for m, read in case_readers(case, modalities, max_voxels).items()}


def case_readers(case: Case | Path, modalities: Sequence[str],
                 max_voxels: int = MAX_VOXELS) -> dict[str, Callable[[], tuple[np.ndarray, VolumeInfo]]]:
    """`load_case` deferred: modality -> a call that reads it. `prepare_case` calls each on its turn
    and drops the array after, so a large case is never in memory K volumes at once. Missing
    modalities are still refused here, before anything is read."""
    case = case if isinstance(case, Case) else open_case(case, modalities)
    case.require(modalities)
    return {normalise_modality_name(m): partial(read_volume, case.files[normalise_modality_name(m)],
                                                max_voxels=max_voxels)
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
