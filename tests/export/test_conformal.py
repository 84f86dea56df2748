"""Which subjects calibrate the uncertainty, and which requests it is calibrated on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medk2n.data.cases import Case, case_fingerprint, discover_dataset
from medk2n.errors import ExportError
from medk2n.export.conformal import TASKS_PER_CASE, draw_tasks, heldout_cases

VOCAB = ["t1", "t1c", "t2", "flair", "pd", "dwi", "adc"]


def _dataset(root: Path, names: list[str], modalities: tuple[str, ...] = ("t2", "flair")) -> Path:
    for name in names:
        for m in modalities:
            path = root / name / f"{m}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"{root.name}/{name}/{m}".encode())  # distinct content per case
    return root


def _training(data: Path, names: list[str], validation: list[str] = ()) -> dict:
    """The split record training writes: names, and content fingerprints of the training side."""
    cases = {c.name: c for c in discover_dataset(data)}
    return {"subjects": {"train": names, "validation": list(validation),
                         "train_fingerprints": [case_fingerprint(cases[n]) for n in names]}}


def _case(name: str, modalities: list[str]) -> Case:
    return Case(name=name, files={m: Path(f"/{name}/{m}.nii.gz") for m in modalities}, masks={})


def test_calibration_uses_only_the_subjects_the_checkpoint_did_not_train_on(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data", ["sub-0", "sub-1", "sub-2", "sub-3"])
    training = _training(data, ["sub-0", "sub-2", "sub-3"], ["sub-1"])
    cases, origin = heldout_cases(None, data, training)
    assert [c.name for c in cases] == ["sub-1"] and "not trained on" in origin


def test_heldout_subjects_are_told_from_training_ones_by_content_not_name(tmp_path: Path) -> None:
    train = _dataset(tmp_path / "train", ["sub-0", "sub-1", "sub-2"])
    training = _training(train, ["sub-0", "sub-1", "sub-2"])
    fresh = _dataset(tmp_path / "fresh", ["sub-0", "sub-1"])  # another seed: same names, other subjects
    cases, _ = heldout_cases(fresh, None, training)
    assert sorted(c.name for c in cases) == ["sub-0", "sub-1"]
    mixed = _dataset(tmp_path / "mixed", ["sub-9"])
    shutil.copytree(train / "sub-2", mixed / "renamed")  # a training subject under another name
    with pytest.raises(ExportError, match="'renamed' was used to train this checkpoint"):
        heldout_cases(mixed, None, training)


def test_no_calibration_when_untrained_subjects_cannot_be_told_apart(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data", ["sub-0", "sub-1"])
    assert heldout_cases(None, data, {})[0] == []  # an old checkpoint: its split is unknown
    assert heldout_cases(None, None, _training(data, ["sub-0"]))[0] == []


def test_tasks_are_k_to_n_requests_the_model_was_trained_for() -> None:
    cases = [_case(f"s{i}", VOCAB) for i in range(4)] + [_case("partial", ["flair", "dwi"])]
    roles = {"sources": ["flair", "adc", "t2"], "targets": ["dwi", "t2", "t1", "pd"]}
    tasks = draw_tasks(cases, k=2, n=3, modalities=VOCAB, roles=roles)
    assert len(tasks) == TASKS_PER_CASE * len(cases)
    for task in tasks:
        assert 1 <= len(task.sources) <= 2 and 1 <= len(task.targets) <= 3
        assert set(task.sources) <= set(roles["sources"]) and set(task.targets) <= set(roles["targets"])
        assert not set(task.sources) & set(task.targets)
        assert set(task.sources + task.targets) <= set(task.case.files)
    assert {t for task in tasks for t in task.targets} == set(roles["targets"])
    assert draw_tasks(cases, 2, 3, VOCAB, roles) == tasks  # seeded: one bundle, one calibration


def test_every_target_a_case_offers_gets_calibrated() -> None:
    """One held-out subject and three random draws would miss targets; they are added explicitly."""
    cases = [_case("only", VOCAB)]
    tasks = draw_tasks(cases, k=2, n=1, modalities=VOCAB, roles={})
    assert {t for task in tasks for t in task.targets} == set(VOCAB)
    assert all(not set(t.sources) & set(t.targets) for t in tasks)
