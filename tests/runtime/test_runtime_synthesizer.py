"""Synthesizer as a library: arrays in, arrays on the input grid out, no files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import nibabel as nib
from runtime_fixtures import (NORMS, QUANTILE_SLOPE, SHAPE, edit_manifest, expected_outputs, fields, interior,
                              make_affine, make_bundle, write_case)

from medk2n.config import STANDARD_PERCENTILES
from medk2n.data.mask import grow_2d
from medk2n.data.standardize import standardize, standardize_with_slope
from medk2n.data.nifti import VolumeInfo
from medk2n.errors import BundleError, DataError
from medk2n.runtime.bundle import load_bundle
from medk2n.runtime.synthesizer import Synthesizer, as_volumes, restored_head, volume_info

ADC_TOL = 20.0  # 0.5 % of the 0..4000 range; resampling error in the interior is ~2
UNIT_TOL = 5e-3


@pytest.fixture(scope="module")
def synth(bundle_dir: Path) -> Synthesizer:
    with Synthesizer(bundle_dir, backend="cpu", threads=1) as s:
        yield s


def check(outputs: dict, volumes: dict, sources: list[str], targets: list[str], affine: np.ndarray) -> None:
    assert list(outputs) == targets
    inner = interior(affine, SHAPE)
    for target, (expected, scale_value) in expected_outputs(volumes, sources, targets).items():
        image, scale = outputs[target]
        assert image.shape == scale.shape == SHAPE and image.dtype == scale.dtype == np.float32
        tol = ADC_TOL if target == "adc" else UNIT_TOL
        np.testing.assert_allclose(image[inner], expected[inner], atol=tol)
        np.testing.assert_allclose(scale, scale_value, rtol=1e-5)  # range targets: times their range


@pytest.mark.parametrize("kind", ["iso", "aniso", "lps", "oblique", "sagittal"])
def test_run_on_arrays_matches_the_model_function(synth: Synthesizer, kind: str) -> None:
    volumes = fields()
    affine = make_affine(kind)
    out = synth.run({"t2": volumes["t2"], "flair": volumes["flair"]}, ["t2", "flair"], ["dwi", "adc"],
                    affine=affine)
    check(out, volumes, ["t2", "flair"], ["dwi", "adc"], affine)


def test_range_target_comes_back_in_physical_units(synth: Synthesizer) -> None:
    volumes = fields()
    out = synth.run({"t2": volumes["t2"], "flair": volumes["flair"]}, None, ["adc"])
    adc = out["adc"][0]
    assert adc.max() > 1000  # 0..4000 units, not [0, 1]
    assert list(out) == ["adc"]  # N=1 of the bundle's 2: the padded target is dropped


def test_fewer_sources_than_k_marks_slots_absent(synth: Synthesizer) -> None:
    volumes = fields()
    info = volume_info(SHAPE, make_affine("aniso"), "t1")
    out = synth.run({"T1W": (volumes["t1"], info)}, ["t1w"], ["dwi", "adc"])  # aliases resolve
    check(out, volumes, ["t1"], ["dwi", "adc"], make_affine("aniso"))  # scale 1/2


def test_exclude_mislabelled_runs_as_if_the_doubted_source_was_not_given(tmp_path: Path) -> None:
    volumes, affine = fields(), make_affine("iso")
    given = {"t2": volumes["t2"], "flair": volumes["flair"]}
    with Synthesizer(make_bundle(tmp_path / "checked", source_check=True), backend="cpu", threads=1) as checked:
        check(checked.run(given, ["t2", "flair"], ["dwi", "adc"], affine=affine, exclude_mislabelled=True),
              volumes, ["flair"], ["dwi", "adc"], affine)  # the fake check doubts t2 only
        check(checked.run(given, ["t2", "flair"], ["dwi", "adc"], affine=affine), volumes, ["t2", "flair"],
              ["dwi", "adc"], affine)  # without the option the doubted source is used


def test_eval_scores_what_exclusion_writes_and_records_it(tmp_path: Path) -> None:
    from medk2n.eval.evaluate import MODEL, evaluate

    data = tmp_path / "data"
    for name in ("sub-1", "sub-2"):
        write_case(data / name, modalities=("t2", "flair", "t1"))
    with Synthesizer(make_bundle(tmp_path / "checked", source_check=True), backend="cpu", threads=1) as checked:
        plain, excluding = (evaluate(checked, data, ["t2", "flair"], ["t1"], exclude_mislabelled=flag)
                            for flag in (False, True))
    assert plain.excluded == {} and excluding.excluded == {"sub-1": ["t2"], "sub-2": ["t2"]}
    assert excluding.source_check == plain.source_check == {c: {"t2": 0.2, "flair": 0.9} for c in ("sub-1", "sub-2")}
    scores = [[r["masked_mae"] for r in result.rows if r["method"] == MODEL] for result in (plain, excluding)]
    assert scores[0] != scores[1]
    copies = [[r["masked_mae"] for r in result.rows if r["method"] == "copy:t2"] for result in (plain, excluding)]
    assert copies[0] == copies[1] and copies[0]  # the references still copy every source given


def test_fixed_batch_bundle_gives_the_same_result(synth: Synthesizer, fixed_bundle_dir: Path) -> None:
    volumes = {m: v for m, v in fields().items() if m != "t1"}
    with Synthesizer(fixed_bundle_dir, backend="cpu") as fixed:
        assert fixed.batch_size == 4
        a = fixed.run(volumes, None, ["dwi"])["dwi"][0]
    np.testing.assert_allclose(a, synth.run(volumes, None, ["dwi"])["dwi"][0], atol=1e-6)


def test_a_graph_with_a_target_axis_computes_only_the_targets_asked_for(synth: Synthesizer, tmp_path: Path) -> None:
    """Bundles since 2026-12-02 take 1..N targets; older fixed-N ones get the request padded to N."""
    volumes = {m: v for m, v in fields().items() if m in ("t2", "flair")}
    with Synthesizer(make_bundle(tmp_path / "axis", n=4, target_axis=True), backend="cpu") as axis:
        assert axis.bundle.dynamic_targets and not synth.bundle.dynamic_targets
        sent = []
        infer = axis.runner.infer
        axis.runner.infer = lambda feed: sent.append(feed["tgt"].shape) or infer(feed)
        one = axis.run(volumes, None, ["dwi"])
        three = axis.run(volumes, None, ["dwi", "adc", "t1"])
    assert {shape[1] for shape in sent[:len(sent) // 2]} == {1} and {shape[1] for shape in sent[len(sent) // 2:]} == {3}
    np.testing.assert_allclose(one["dwi"][0], three["dwi"][0], atol=1e-6)
    check(three, fields(), ["t2", "flair"], ["dwi", "adc", "t1"], np.eye(4))
    padded = synth.run(volumes, None, ["dwi"])  # the fixed N=2 graph: [dwi, dwi] sent, one kept
    np.testing.assert_allclose(padded["dwi"][0], one["dwi"][0], atol=1e-6)
    with Synthesizer(make_bundle(tmp_path / "axis2", n=2, target_axis=True), backend="cpu") as axis:
        with pytest.raises(BundleError, match="at most N=2"):
            axis.run(volumes, None, ["dwi", "adc", "t1"])


def test_slices_without_brain_are_zero(synth: Synthesizer) -> None:
    volumes = {m: v.copy() for m, v in fields().items() if m != "t1"}
    for v in volumes.values():
        v[:, :, 8:] = 0  # no head in the top three slices
    out = synth.run(volumes, ["t2", "flair"], ["dwi", "adc"])
    for image, scale in out.values():
        assert np.all(image[:, :, 8:] == 0) and np.all(scale[:, :, 8:] == 0)
        assert np.all(scale[:, :, :8] > 0.9)


@pytest.mark.parametrize("sources, targets, error, message", [
    (["t2", "foo"], ["dwi"], BundleError, "case7: unknown modality 'foo'"),
    (["t2"], ["mri"], BundleError, "unknown modality 'mri'"),
    (["t1", "t2", "flair"], ["dwi"], BundleError, "3 sources .* at most K=2"),
    (["t2"], ["t1", "dwi", "adc"], BundleError, "3 targets .* at most N=2"),
    (["t2", "flair"], ["flair"], DataError, "'flair' is both a source and a target"),
    (["t2", "t2"], ["dwi"], DataError, "sources listed twice"),
    ([], ["dwi"], DataError, "at least one source"),
])
def test_bad_requests_name_the_case(synth: Synthesizer, sources: list[str], targets: list[str],
                                    error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        synth.request(sources, targets, name="case7")


def test_missing_volume_and_bad_reference(synth: Synthesizer) -> None:
    volumes = fields()
    with pytest.raises(DataError, match="input: missing modality 'flair'"):
        synth.run({"t2": volumes["t2"]}, ["t2", "flair"], ["dwi"])
    with pytest.raises(DataError, match="reference 't1' is not one of the sources"):
        synth.run({"t2": volumes["t2"]}, None, ["dwi"], reference="t1")


def test_bad_arrays_are_refused(synth: Synthesizer) -> None:
    with pytest.raises(DataError, match="input/t2: expected a 3-D array"):
        synth.run({"t2": np.ones((4, 4))}, None, ["dwi"])
    bad = fields()["t2"].copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="input/t2: contains 1 NaN"):
        synth.run({"t2": bad}, None, ["dwi"])


def test_reference_resamples_other_grids(synth: Synthesizer) -> None:
    volumes = fields()
    shifted = make_affine("iso")
    shifted[0, 3] += 0.5
    inputs = {"t2": (volumes["t2"], volume_info(SHAPE, make_affine("iso"), "t2")),
              "flair": (volumes["flair"], volume_info(SHAPE, shifted, "flair"))}
    with pytest.raises(DataError, match="t2|flair"):
        synth.run(inputs, None, ["dwi"])
    out = synth.run(inputs, None, ["dwi"], reference="t2")
    assert out["dwi"][0].shape == SHAPE


def test_batch_size_outside_the_bundle_range(bundle_dir: Path) -> None:
    with pytest.raises(BundleError, match="batch size 9 is outside the bundle's range 1..8"):
        Synthesizer(load_bundle(bundle_dir), backend="cpu", batch_size=9)


def test_volume_info_carries_zooms() -> None:
    info = volume_info(SHAPE, make_affine("aniso"), "x")
    assert isinstance(info, VolumeInfo)
    np.testing.assert_allclose(info.zooms, [0.9, 1.2, 3.0])


def test_run_case_writes_a_whole_folder_or_nothing(tmp_path: Path, synth: Synthesizer) -> None:
    case = write_case(tmp_path / "case9", "lps")
    report = synth.run_case(case, ["t2", "flair"], ["adc"], tmp_path / "out", png=True)
    assert report.ok and report.slices == SHAPE[2]
    assert sorted(p.name for p in (tmp_path / "out" / "case9").iterdir()) == [
        "adc.nii.gz", "adc_uncertainty.nii.gz", "montage.png"]
    # half-width = q(0.9) * scale, in ADC's physical units: 1.8 * (2 of 2 sources present) * 4000
    width = nib.load(tmp_path / "out" / "case9" / "adc_uncertainty.nii.gz").get_fdata()
    np.testing.assert_allclose(width, QUANTILE_SLOPE * 0.9 * 1.0 * 4000.0, rtol=1e-5)
    with pytest.raises(DataError, match="already exists"):
        synth.run_case(case, ["t2", "flair"], ["adc"], tmp_path / "out")
    (case / "flair.nii.gz").unlink()
    with pytest.raises(DataError, match="missing modality 'flair'"):
        synth.run_case(case, ["t2", "flair"], ["adc"], tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def haze_everywhere(synth: Synthesizer):
    """A stand-in network that paints 0.5 on every pixel, air included."""

    def infer(slots, src, tgt, avail, keep, progress=None):
        shape = (synth.bundle.n, *slots[0].shape)
        return np.full(shape, 0.5, np.float32), np.ones(shape, np.float32), None

    return infer


def test_background_outside_the_grown_head_is_zero(bundle_dir: Path) -> None:
    """What the network paints over the air (it is never trained there) is written as 0."""
    volumes = {m: v.copy() for m, v in fields().items() if m != "t1"}
    for v in volumes.values():
        v[:8] = 0  # air over the first 8 voxels of the first in-plane axis
    with Synthesizer(bundle_dir, backend="cpu", threads=1) as synth:
        request = synth.request(["t2", "flair"], ["dwi"])
        prepared = synth.prepare(as_volumes(volumes, make_affine("iso"), "air"), request)
        synth.inferer = haze_everywhere(synth)
        images, scale = synth.infer(prepared, request)
    kept = grow_2d(prepared.brain, 1)
    assert (kept & ~prepared.brain).any() and not kept.all()
    np.testing.assert_array_equal(images[0][kept], 0.5)  # the head and a one-pixel margin
    np.testing.assert_array_equal(images[0][~kept], 0.0)  # the air beyond
    np.testing.assert_array_equal(scale[0][kept], 1.0)  # the predicted error follows the image:
    np.testing.assert_array_equal(scale[0][~kept], 0.0)  # none where nothing is synthesised


def test_tissue_outside_the_head_mask_is_not_blanked(bundle_dir: Path) -> None:
    """No air in the field of view: the mask drops the darkest border tissue, the sources' signal keeps it."""
    volumes = {m: v for m, v in fields().items() if m != "t1"}
    with Synthesizer(bundle_dir, backend="cpu", threads=1) as synth:
        request = synth.request(["t2", "flair"], ["dwi"])
        prepared = synth.prepare(as_volumes(volumes, make_affine("iso"), "tight"), request)
        synth.inferer = haze_everywhere(synth)
        images, _ = synth.infer(prepared, request)
    inside_fov = np.max(np.stack([prepared.slices[m] for m in request.sources]), axis=0) > 0.05
    assert not grow_2d(prepared.brain, 1)[inside_fov].all()  # the mask alone would blank tissue
    np.testing.assert_array_equal(images[0][inside_fov], 0.5)


def test_targets_with_a_standard_scale_are_standardised_inside_the_head(tmp_path: Path) -> None:
    skewed = [0.0, 0.3, 0.45, 0.55, 0.62, 0.68, 0.74, 0.8, 0.86, 0.92, 1.0]
    plain = make_bundle(tmp_path / "plain")
    scaled = make_bundle(tmp_path / "scaled")
    edit_manifest(scaled, normalization={**NORMS, "dwi": {**NORMS["dwi"], "standard": skewed}})
    volumes = fields()
    request = dict(volumes={"t2": volumes["t2"], "flair": volumes["flair"]}, sources=["t2", "flair"],
                   targets=["dwi", "adc"], affine=make_affine("oblique"))
    with Synthesizer(plain, backend="cpu", threads=1) as a, Synthesizer(scaled, backend="cpu", threads=1) as b:
        raw, out = a.run(**request), b.run(**request)
        prepared = a.prepare(as_volumes(request["volumes"], request["affine"], "x"),
                             a.request(["t2", "flair"], ["dwi", "adc"]), None, "x")
    head = restored_head(prepared)
    np.testing.assert_allclose(out["dwi"][0], standardize(raw["dwi"][0], head, skewed), atol=1e-6)
    np.testing.assert_allclose(np.percentile(out["dwi"][0][head], STANDARD_PERCENTILES), skewed, atol=0.03)
    np.testing.assert_array_equal(out["adc"][0], raw["adc"][0])  # physical units are never remapped
    np.testing.assert_array_equal(out["adc"][1], raw["adc"][1])
    # the scale follows the standardisation's mean slope (1 / span of the synthesis' own landmarks)
    slope = standardize_with_slope(raw["dwi"][0], head, skewed)[1]
    np.testing.assert_allclose(out["dwi"][1], raw["dwi"][1] * slope, rtol=1e-6)
    assert slope > 1.0  # a synthesis narrower than [0, 1] is stretched


def test_a_model_trained_for_fixed_roles_refuses_others(tmp_path: Path) -> None:
    """train.sources / train.targets travel in the manifest; a request outside them is refused."""
    folder = make_bundle(tmp_path / "roles")
    edit_manifest(folder, roles={"sources": ["t2", "flair"], "targets": ["dwi"]})
    with Synthesizer(load_bundle(folder), backend="cpu") as synth:
        assert synth.request(["flair"], ["dwi"], name="c").sources == ["flair"]
        with pytest.raises(BundleError, match="c: 't1' cannot be one of the sources: .*trained with sources t2, flair"):
            synth.request(["t1"], ["dwi"], name="c")
        with pytest.raises(BundleError, match="'adc' cannot be one of the targets"):
            synth.request(["t2"], ["dwi", "adc"], name="c")


def test_coverage_sets_the_half_width_and_must_be_a_probability(bundle_dir: Path) -> None:
    volumes = {m: v for m, v in fields().items() if m != "t1"}
    widths = {}
    for coverage in (0.5, 0.9, 0.99):
        with Synthesizer(bundle_dir, backend="cpu", threads=1, coverage=coverage) as synth:
            image, scale = synth.run(volumes, ["t2", "flair"], ["adc"])["adc"]
            widths[coverage] = synth.halfwidth("adc", scale)
        np.testing.assert_allclose(widths[coverage], QUANTILE_SLOPE * coverage * scale, rtol=1e-5)
    assert widths[0.5].max() < widths[0.9].max() < widths[0.99].max()
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(DataError, match="--coverage .*between 0 and 1"):
            Synthesizer(bundle_dir, backend="cpu", coverage=bad)
    with pytest.raises(DataError, match="calibrated only from"):
        Synthesizer(bundle_dir, backend="cpu", coverage=0.9999)


@pytest.mark.parametrize("kind", ["legacy", "uncalibrated"])
def test_bundles_without_calibration_write_images_only(tmp_path: Path, kind: str) -> None:
    folder = make_bundle(tmp_path / kind, legacy=kind == "legacy", calibrated=False)
    case = write_case(tmp_path / "case3")
    with Synthesizer(folder, backend="cpu", threads=1) as synth:
        assert synth.uncertainty_note and ("predates" if kind == "legacy" else "no conformal") in synth.uncertainty_note
        report = synth.run_case(case, ["t2", "flair"], ["dwi", "adc"], tmp_path / "out")
    assert report.ok and sorted(report.outputs) == ["adc.nii.gz", "dwi.nii.gz"]


def test_a_calibration_the_runtime_could_misread_is_refused(tmp_path: Path) -> None:
    from runtime_fixtures import calibration

    folder = make_bundle(tmp_path / "bad")
    broken = calibration()
    broken["quantiles"]["fp32"]["dwi"] = broken["quantiles"]["fp32"]["dwi"][::-1]  # decreasing
    edit_manifest(folder, uncertainty=broken)
    with pytest.raises(BundleError, match="bad uncertainty calibration: fp32/dwi: quantiles must not decrease"):
        load_bundle(folder)


def test_a_bundle_from_a_cut_short_training_run_is_flagged():
    from types import SimpleNamespace

    from medk2n.runtime.synthesizer import Synthesizer

    def note(training):
        fake = SimpleNamespace(bundle=SimpleNamespace(manifest=SimpleNamespace(source={"training": training})))
        return Synthesizer.training_note.fget(fake)

    assert note({"step": 152, "max_steps": 2200, "schedule_complete": False, "stopped_by": "the wall-clock budget"}) \
        == ("this bundle's model stopped training at step 152 of 2200 (the wall-clock budget), "
            "before the end of its schedule")
    assert note({"step": 2200, "max_steps": 2200, "schedule_complete": True}) is None
    assert note({"step": 900, "max_steps": 2200, "schedule_complete": False}) is None  # `best`, mid-run
    assert note({"step": 10}) is None  # bundles from before the record: nothing known, nothing claimed
