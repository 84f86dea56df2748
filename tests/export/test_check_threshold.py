"""The source check's per-contrast thresholds, fitted at export on held-out subjects."""

from __future__ import annotations

from medk2n.data.cases import discover_dataset
from medk2n.export.check_threshold import CORRECTLY_NAMED, MIN_SERIES, WRONG, calibrate_check, fit
from medk2n.export.exporter import export_bundle
from medk2n.runtime.bundle import load_bundle


def test_the_threshold_is_the_lowest_correctly_named_median_and_recall_is_reported() -> None:
    block = fit({"flair": {"clean": [0.96, 0.95, 0.97], "noise": [0.93, 0.94, 0.95], "ghosting": [0.95, 0.96, 0.96],
                           WRONG: [0.5, 0.94, 0.2]},
                 "adc": {"clean": [0.99] * 9, WRONG: [0.97]}})
    assert block["thresholds"] == {"adc": 0.99, "flair": 0.93}  # a noisy FLAIR is still a FLAIR
    assert block["series"] == {"adc": 9, "flair": 9} and MIN_SERIES == 9
    assert block["false_alarm_bound"] == {"adc": 0.1, "flair": 0.1}
    assert block["held_out_recall"]["flair"] == {"caught": 2, "of": 3, "caught_at_0.5": 1}
    assert block["held_out_recall"]["adc"] == {"caught": 1, "of": 1, "caught_at_0.5": 0}
    assert fit({}) == {} and fit({"t2": {WRONG: [0.1]}}) == {}  # nothing correctly named: no line to draw


def test_too_few_held_out_series_keep_the_networks_boundary() -> None:
    block = fit({"flair": {"clean": [0.96], "noise": [0.93], "ghosting": [0.95]}})
    assert block["thresholds"] == {} and block["too_few_series"] == {"min": MIN_SERIES, "flair": 3}


def test_fitted_on_held_out_subjects_through_the_bundle(fp32_bundle, phantom_data) -> None:
    cases = discover_dataset(phantom_data)[:3]  # 3 subjects x 5 correctly named conditions
    block = calibrate_check(load_bundle(fp32_bundle.path), cases, "test subjects",
                            {"sources": ["flair", "adc"], "targets": ["t2", "dwi"]})
    assert set(block["thresholds"]) == {"flair", "adc"} and block["subjects"] == [c.name for c in cases]
    for contrast, conditions in block["medians"].items():
        named = [p for c in CORRECTLY_NAMED for p in conditions[c]]
        assert len(named) == len(CORRECTLY_NAMED) * len(cases) and all(0.0 <= p <= 1.0 for p in named)
        assert set(conditions) == {*CORRECTLY_NAMED, WRONG}
        assert block["thresholds"][contrast] == round(min(named), 4)
        assert len(conditions[WRONG]) == len(cases)


def test_an_export_with_too_few_held_out_subjects_records_why_it_fitted_no_line(make_options, phantom_data,
                                                                              tmp_path) -> None:
    one = tmp_path / "heldout"  # one subject keeps the export's conformal and check steps short
    one.mkdir()
    first = discover_dataset(phantom_data)[0]
    (one / first.name).symlink_to(first.files[next(iter(first.files))].parent)
    result = export_bundle(make_options(tmp_path / "bundle", heldout=one))
    block = result.manifest.source_check
    assert block["subjects"] == [first.name] and block["subjects_from"].startswith("--heldout")
    assert block["thresholds"] == {} and set(block["too_few_series"]) > {"min", "flair"}
    assert load_bundle(tmp_path / "bundle").check_thresholds == {}  # the network's 0.5 decides


def test_without_held_out_subjects_the_bundle_keeps_the_networks_boundary(fp32_bundle) -> None:
    assert fp32_bundle.manifest.source_check == {} and load_bundle(fp32_bundle.path).check_thresholds == {}
