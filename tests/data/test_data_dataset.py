from pathlib import Path

import numpy as np
import pytest
from data_fixtures import head

from medk2n.config import DEFAULT_MODALITIES, default_normalization
from medk2n.data.cases import discover_dataset
from medk2n.data.dataset import SliceDataset, split_cases
from medk2n.errors import DataError

VOCAB = list(DEFAULT_MODALITIES)
SIZE = 16


@pytest.fixture
def dataset_root(tmp_path, write_case) -> Path:
    write_case(tmp_path / "case_a", {"t1": None, "t2": None, "flair": None, "adc": None})
    write_case(tmp_path / "case_b", {"t1": None, "flair": None, "dwi": None})
    write_case(tmp_path / "case_c", {"t2": None})  # one modality: no source/target pair
    return tmp_path


def make(root: Path, **kwargs) -> SliceDataset:
    options = dict(max_sources=2, max_targets=3, seed=7)
    options.update(kwargs)
    return SliceDataset(discover_dataset(root), VOCAB, default_normalization(), SIZE, **options)


def counts(ds: SliceDataset) -> list[tuple[int, int]]:
    return [(int(item["avail"].sum()), int(item["tgt_valid"].sum())) for item in (ds[i] for i in range(len(ds)))]


def test_items_have_fixed_shapes_dtypes_and_padding(dataset_root):
    ds = make(dataset_root)
    assert ds.case_names == ["case_a", "case_b"]
    assert [name for name, _ in ds.skipped] == ["case_c"]
    assert len(ds) > 0
    for i in range(len(ds)):
        item = ds[i]
        assert item["x"].shape == (2, SIZE, SIZE) and item["x"].dtype == np.float32
        assert item["target"].shape == (3, SIZE, SIZE) and item["target"].dtype == np.float32
        assert item["src"].dtype == item["tgt"].dtype == np.int64
        assert item["avail"].dtype == item["tgt_valid"].dtype == item["mask"].dtype == np.float32
        assert item["mask"].shape == (SIZE, SIZE) and item["mask"].any()
        src = item["src"][item["avail"] == 1]
        tgt = item["tgt"][item["tgt_valid"] == 1]
        assert not set(src) & set(tgt)
        assert np.all(item["src"][item["avail"] == 0] == 0) and not item["x"][item["avail"] == 0].any()
        assert np.all(item["tgt"][item["tgt_valid"] == 0] == 0) and not item["target"][item["tgt_valid"] == 0].any()
        assert 0.0 <= item["x"].min() and item["target"].max() <= 1.0


@pytest.mark.parametrize(
    "stage, ks, ns",
    [("1to1", {1}, {1}), ("kto1", {1, 2}, {1}), ("1ton", {1}, {1, 2, 3}), ("kton", {1, 2}, {1, 2, 3})],
)
def test_stage_sets_the_source_and_target_ranges(dataset_root, stage, ks, ns):
    ds = make(dataset_root, stage=stage)
    seen = set()
    for epoch in range(3):
        ds.set_epoch(epoch)
        seen |= set(counts(ds))
    assert {k for k, _ in seen} == ks
    assert {n for _, n in seen} == ns
    assert all(k + n <= 4 for k, n in seen)  # never more than a case has


def roles(item) -> tuple[set[str], set[str]]:
    return ({VOCAB[i] for i in item["src"][item["avail"] == 1]}, {VOCAB[i] for i in item["tgt"][item["tgt_valid"] == 1]})


@pytest.mark.parametrize("stage", ["1to1", "kto1", "1ton", "kton"])
def test_role_pools_limit_what_is_drawn_as_source_and_target(dataset_root, stage):
    ds = make(dataset_root, stage=stage, sources=["flair", "T2"], targets=["t1", "adc", "dwi"])
    seen_sources, seen_targets = set(), set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            src, tgt = roles(ds[i])
            assert src and tgt and src <= {"flair", "t2"} and tgt <= {"t1", "adc", "dwi"}
            seen_sources |= src
            seen_targets |= tgt
    assert seen_sources == {"flair", "t2"} and seen_targets == {"t1", "adc", "dwi"}


def test_overlapping_pools_never_leave_a_sample_without_a_target(dataset_root):
    # case_b has t1, flair, dwi: with t1 in both pools, t1 alone cannot be both roles
    ds = make(dataset_root, stage="kton", sources=["t1", "flair"], targets=["t1"])
    assert ds.case_names == ["case_a", "case_b"]
    for epoch in range(5):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            src, tgt = roles(ds[i])
            assert tgt == {"t1"} and src == {"flair"}


def test_cases_without_a_pair_in_the_pools_are_skipped_and_unknown_names_refused(dataset_root):
    ds = make(dataset_root, sources=["dwi"], targets=["t1"])
    assert ds.case_names == ["case_b"]
    assert ("case_a", "has no source and target of the training roles among ['t1', 't2', 'flair', 'adc']") in ds.skipped
    with pytest.raises(DataError, match="'swi'"):
        make(dataset_root, sources=["swi"])


def test_set_stage_switches_and_validates(dataset_root):
    ds = make(dataset_root, stage="1to1")
    ds.set_stage("kton")
    assert max(n for _, n in counts(ds)) > 1
    with pytest.raises(DataError, match="curriculum stage"):
        ds.set_stage("2to2")


def test_same_seed_same_items_and_epochs_differ(dataset_root):
    a, b = make(dataset_root), make(dataset_root)
    for i in range(len(a)):
        for key, value in a[i].items():
            np.testing.assert_array_equal(value, b[i][key])
    before = [a[i]["src"].tolist() + a[i]["tgt"].tolist() for i in range(len(a))]
    a.set_epoch(1)
    after = [a[i]["src"].tolist() + a[i]["tgt"].tolist() for i in range(len(a))]
    assert before != after
    other = make(dataset_root, seed=8)
    assert before != [other[i]["src"].tolist() + other[i]["tgt"].tolist() for i in range(len(other))]


def test_augmentation_changes_pixels_not_the_draw(dataset_root):
    plain, augmented = make(dataset_root, augment=False), make(dataset_root, augment=True)
    changed = 0
    for i in range(len(plain)):
        p, q = plain[i], augmented[i]
        np.testing.assert_array_equal(p["src"], q["src"])
        np.testing.assert_array_equal(p["tgt"], q["tgt"])
        changed += not np.allclose(p["x"], q["x"])
    assert changed > 0


def test_quantitative_maps_are_not_gamma_augmented(dataset_root):
    plain, augmented = make(dataset_root, augment=False), make(dataset_root, augment=True)
    adc = VOCAB.index("adc")
    for i in range(len(plain)):
        p, q = plain[i], augmented[i]
        for images, ids, valid in (("x", "src", "avail"), ("target", "tgt", "tgt_valid")):
            for j in np.flatnonzero((p[ids] == adc) & (p[valid] == 1)):
                a, b = p[images][j], q[images][j]
                assert np.allclose(a, b) or np.allclose(a[:, ::-1], b)  # at most flipped


def test_slices_per_volume_and_index_bounds(dataset_root):
    ds = make(dataset_root, slices_per_volume=2)
    assert len(ds) == 4
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_case_folders_work_like_discovered_cases(dataset_root):
    from_paths = SliceDataset(
        [dataset_root / "case_a", dataset_root / "case_b"], VOCAB, default_normalization(), SIZE, seed=7
    )
    discovered = make(dataset_root, max_targets=4)
    assert from_paths.case_names == discovered.case_names and len(from_paths) == len(discovered)
    np.testing.assert_array_equal(from_paths[0]["x"], discovered[0]["x"])
    with pytest.raises(DataError, match="case folder not found"):
        SliceDataset([dataset_root / "nope"], VOCAB, default_normalization(), SIZE)


def test_dataset_without_pairs_is_an_error(tmp_path, write_case):
    write_case(tmp_path / "only_t2", {"t2": None})
    with pytest.raises(DataError, match="no usable slices"):
        make(tmp_path)


def test_split_cases_is_deterministic_disjoint_and_order_free(tmp_path):
    cases = [tmp_path / f"case{i:02d}" for i in range(10)]
    train, val = split_cases(cases, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val)
    assert split_cases(list(reversed(cases)), 0.2, seed=3) == (train, val)
    assert split_cases(cases, 0.2, seed=4) != (train, val)
    assert split_cases(cases[:1], 0.5, seed=0) == (cases[:1], [])
    assert split_cases(cases[:2], 0.01, seed=0)[1] != []


def test_items_carry_the_shipped_lesion_mask_through_flips(tmp_path, write_case):
    """`lesion` covers the bright lesion pixels of every draw (flipped with the images) and is 0 without a mask."""
    shape = (12, 10, 8)
    lesion = np.zeros(shape, dtype=np.float32)
    lesion[2:5, 6:9, 3:5] = 1.0  # off-centre in-plane, on slices 3 and 4
    flair = head(shape) * 100
    flair[lesion > 0] = 400
    write_case(tmp_path / "lesioned", {"flair": flair, "t2": None, "lesion_mask": lesion})
    write_case(tmp_path / "plain", {"flair": None, "t2": None})
    ds = make(tmp_path, min_brain_fraction=0.0)
    assert ds.case_names == ["lesioned", "plain"]
    lesion_slices = ds.lesion_indices
    assert lesion_slices.tolist() == [3, 4]  # the lesioned case's slices come first in the index
    for index in range(len(ds)):
        for epoch in range(4):  # several draws, so both flipped and unflipped items occur
            ds.set_epoch(epoch)
            item = ds[index]
            if index not in lesion_slices:
                assert not item["lesion"].any()
                continue
            flair_image = item["x"][0] if item["src"][0] == VOCAB.index("flair") else item["target"][0]
            cover = item["lesion"]
            inside = (flair_image * cover).sum() / cover.sum()
            mirrored = (flair_image * cover[..., ::-1]).sum() / cover.sum()  # where an unflipped mask would be
            assert cover.max() > 0.5 and inside > mirrored + 0.3


def test_source_artifacts_degrade_one_auxiliary_source_never_the_base_or_targets(dataset_root):
    clean, faulty = make(dataset_root, source_artifacts=0.0), make(dataset_root, source_artifacts=1.0)
    degraded = 0
    for i in range(len(clean)):
        a, b = clean.sample(i, "kton", np.random.default_rng(i)), faulty.sample(i, "kton", np.random.default_rng(i))
        # Same draw of sources and targets (the artefact draws come after), clean targets, base slot untouched.
        for key in ("src", "tgt", "avail", "tgt_valid", "target", "mask"):
            np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a["x"][0], b["x"][0])
        if a["avail"][1] == 1:
            degraded += int(not np.array_equal(a["x"][1], b["x"][1]))
            assert 0.0 <= b["x"][1].min() and b["x"][1].max() <= 1.0
        else:
            np.testing.assert_array_equal(a["x"], b["x"])
    assert degraded > 0
    with pytest.raises(DataError, match="probability"):
        make(dataset_root, source_artifacts=1.5)


def test_degrade_any_source_also_degrades_the_base_and_lone_sources(dataset_root):
    clean = make(dataset_root, source_artifacts=0.0)
    faulty = make(dataset_root, source_artifacts=1.0, degrade_any_source=True)
    base_hit, lone_hit, two_source = 0, 0, 0
    for i in range(len(clean)):
        a, b = clean.sample(i, "kton", np.random.default_rng(i)), faulty.sample(i, "kton", np.random.default_rng(i))
        for key in ("src", "tgt", "avail", "tgt_valid", "target", "mask"):
            np.testing.assert_array_equal(a[key], b[key])
        changed = [not np.array_equal(a["x"][s], b["x"][s]) for s in range(len(a["x"]))]
        assert sum(changed) <= 1 and 0.0 <= b["x"].min() and b["x"].max() <= 1.0  # one source at most
        if a["avail"][1] == 1:
            two_source += 1
            base_hit += int(changed[0])
        else:
            lone_hit += int(changed[0])
    assert base_hit > 0 and lone_hit > 0 and two_source > 0


def test_named_right_labels_mark_exactly_the_slot_given_another_contrast(dataset_root):
    """The source check learns from these labels: 0 where the 'contrast' artefact put another contrast under
    the slot's name, 1 everywhere else, noise and ghosts included (a noisy FLAIR is still a FLAIR)."""
    from medk2n.data import dataset as dataset_module

    clean = make(dataset_root, source_artifacts=0.0)
    faulty = make(dataset_root, source_artifacts=1.0, degrade_any_source=True)
    kinds = []
    real = dataset_module.degrade

    def spy(image, kind, rng, other=None):
        kinds.append(kind)
        return real(image, kind, rng, other)

    dataset_module.degrade = spy
    seen = set()
    try:
        for i in range(len(clean)):
            for seed in range(4):
                a = clean.sample(i, "kton", np.random.default_rng(seed))
                kinds.clear()
                b = faulty.sample(i, "kton", np.random.default_rng(seed))
                assert a["named_right"].dtype == np.float32 and a["named_right"].shape == (2,)
                assert np.all(a["named_right"] == 1.0)
                (kind,) = kinds  # one artefact per sample here
                seen.add(kind)
                changed = [not np.array_equal(a["x"][s], b["x"][s]) for s in range(2)]
                expected = [0.0 if kind == "contrast" and changed[s] else 1.0 for s in range(2)]
                np.testing.assert_array_equal(b["named_right"], expected)
    finally:
        dataset_module.degrade = real
    assert seen == {"noise", "ghosting", "contrast"}


def test_a_wrong_contrast_artefact_is_never_a_target_of_the_sample(dataset_root):
    """The 'contrast' artefact puts another contrast under a source's name; a target there would be the answer."""
    from medk2n.data import dataset as dataset_module

    faulty = make(dataset_root, source_artifacts=1.0, degrade_any_source=True)
    calls = []
    real = dataset_module.degrade

    def spy(image, kind, rng, other=None):
        calls.append((kind, None if other is None else other.copy()))
        return real(image, kind, rng, other)

    dataset_module.degrade = spy
    contrasts = 0
    try:
        for i in range(len(faulty)):
            for seed in range(12):
                calls.clear()
                item = faulty.sample(i, "kton", np.random.default_rng(seed))
                targets = item["target"][item["tgt_valid"] > 0]
                for kind, other in calls:
                    if kind == "contrast":
                        contrasts += 1
                        assert not any(np.array_equal(other, t) for t in targets)
    finally:
        dataset_module.degrade = real
    assert contrasts > 5
