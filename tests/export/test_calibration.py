import shutil

import numpy as np
import pytest

from medk2n.config import preset
from medk2n.errors import ExportError
from medk2n.export import calibration
from medk2n.export.spec import GraphSpec, parse_batch

CFG = preset("tiny").model
SPEC = GraphSpec(k=2, n=4, size=CFG.image_size, batch=parse_batch("1"))


@pytest.fixture(scope="module")
def pools(phantom_data):
    return calibration.load_pools(CFG, CFG.image_size, phantom_data, calib_slices=12)


def test_pools_split_by_subject(pools):
    calib, held = pools
    assert len(calib) == 12 and len(held) == calibration.EVAL_SLICES
    assert set(calib.cases).isdisjoint(held.cases)
    assert calib.images.shape[1:] == (len(CFG.modalities), CFG.image_size, CFG.image_size)
    assert np.all(calib.brain.mean(axis=(1, 2)) >= calibration.MIN_BRAIN_FRACTION)
    absent = ~calib.present
    assert np.all(calib.images[absent] == 0)  # t1c is not in the phantom


def test_samples_are_valid_tasks_with_ground_truth(pools):
    calib, _ = pools
    samples = calibration.draw_samples(calib, SPEC, seed=0)
    feeds = samples.feeds
    assert feeds["x"].shape == (12, 2, 64, 64) and feeds["tgt"].shape == (12, 4)
    for i in range(len(samples)):
        live = feeds["src"][i][feeds["avail"][i] > 0]
        assert len(set(live)) == len(live) >= 1
        assert calib.present[i, live].all() and calib.present[i, feeds["tgt"][i]].all()
        assert set(feeds["tgt"][i]).isdisjoint(live)
        assert np.array_equal(feeds["x"][i, feeds["avail"][i] > 0], calib.images[i, live])
        assert np.all(feeds["x"][i, feeds["avail"][i] == 0] == 0)
        assert np.array_equal(samples.target[i], calib.images[i, feeds["tgt"][i]])
    assert (feeds["avail"].sum(axis=1) == 1).any()  # some 1->N tasks through avail
    present = [m for m, p in zip(CFG.modalities, calib.present.any(axis=0)) if p]
    assert calibration.source_coverage(samples, CFG.modalities) == present


def test_samples_keep_to_the_trained_roles(pools):
    calib, _ = pools
    roles = {"sources": ["flair", "adc"], "targets": ["dwi", "t2", "pd"]}
    samples = calibration.draw_samples(calib, SPEC, seed=0, roles=roles, modalities=list(CFG.modalities))
    feeds, ids = samples.feeds, {m: CFG.modalities.index(m) for m in CFG.modalities}
    assert len(samples) == len(calib)
    for i in range(len(samples)):
        live = feeds["src"][i][feeds["avail"][i] > 0]
        assert set(live) <= {ids["flair"], ids["adc"]} and set(feeds["tgt"][i]) <= {ids["dwi"], ids["t2"], ids["pd"]}
    assert calibration.source_coverage(samples, CFG.modalities) == ["flair", "adc"]
    with pytest.raises(ExportError, match="no calibration slice has a source and a target"):
        calibration.draw_samples(calib, SPEC, seed=0, roles={"sources": ["t1c"]}, modalities=list(CFG.modalities))


def test_iter_batches_fill_fixed_batches_by_wrapping():
    feeds = {"a": np.arange(5)}
    batches = list(calibration.iter_batches(feeds, 2))
    assert [b["a"].tolist() for b, _ in batches] == [[0, 1], [2, 3], [4, 0]]
    assert [valid for _, valid in batches] == [2, 2, 1]
    reader = calibration.FeedReader(feeds, 4)
    assert reader.get_next()["a"].tolist() == [0, 1, 2, 3]
    assert reader.get_next()["a"].tolist() == [4, 0, 1, 2]
    assert reader.get_next() is None


def test_single_case_dataset_splits_slices(phantom_data, tmp_path):
    shutil.copytree(phantom_data / "sub-000", tmp_path / "sub-000")
    calib, held = calibration.load_pools(CFG, CFG.image_size, tmp_path, calib_slices=6)
    assert len(calib) >= 6 and len(held) >= 6
    assert set(calib.cases) == set(held.cases) == {"sub-000"}


def test_dataset_without_usable_cases(phantom_data, tmp_path):
    (tmp_path / "case1").mkdir()
    shutil.copy(phantom_data / "sub-000" / "t1.nii.gz", tmp_path / "case1" / "t1.nii.gz")
    with pytest.raises(ExportError, match="no case has two or more modalities"):
        calibration.load_pools(CFG, CFG.image_size, tmp_path, calib_slices=4)
