"""Fit the output standard scales a config asks for, from the training subjects' acquisitions.

The scale of a modality is the mean layout of its histogram landmarks over the
training subjects (data/standardize.py), measured inside the head mask the
runtime restores from model space, so training and the runtime see the same
voxels. Fitted once before the first step and stored in the modality's
NormSpec: every checkpoint (and so every bundle) carries it, and `--resume`
keeps the scale the run started with.
"""

from __future__ import annotations

from typing import Sequence

from medk2n.config import ExperimentConfig
from medk2n.data.cases import Case, load_case
from medk2n.data.preprocess import prepare_case
from medk2n.data.standardize import fit_standard
from medk2n.errors import DataError
from medk2n.runtime.synthesizer import restored_head


def fit_output_scales(cfg: ExperimentConfig, cases: Sequence[Case]) -> None:
    """Set `standard` on each modality of `cfg.train.standardize_outputs`; DataError if one has no volume."""
    wanted = [m.lower() for m in cfg.train.standardize_outputs]
    if not wanted:
        return
    norms, pairs = cfg.model.normalization, {m: [] for m in wanted}
    for case in cases:
        present = [m for m in cfg.model.modalities if m in case.files]
        if not any(m in pairs for m in present):
            continue
        volumes = load_case(case, present)
        head = restored_head(prepare_case(volumes, {m: norms[m] for m in present}, cfg.model.image_size))
        for m in present:
            if m in pairs:
                pairs[m].append((volumes[m][0], head))
    for m in wanted:
        standard = fit_standard(pairs[m])
        if standard is None:
            raise DataError(f"train.standardize_outputs: no training case has a usable {m} volume to fit its scale")
        norms[m].standard = standard
