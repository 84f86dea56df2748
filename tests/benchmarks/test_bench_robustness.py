"""The paired drop summary of `medk2n-bench robustness` (its test-time degradations: tests/data/test_data_artifacts.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medk2n.benchmarks.quality import Task
from medk2n.benchmarks.robustness import (ABSENT, CORRUPTIONS, EXCLUDING, KINDS, _corrupted_sources, drops, markdown,
                                          run_robustness, summarise, without_source)
from medk2n.benchmarks.source_check import auc
from medk2n.errors import ConfigError, DataError


def _rows(scores: dict[str, float], targets=("dwi", "t2")) -> list[dict]:
    return [{"case": case, "target": t, "masked_psnr": value} for case, value in scores.items() for t in targets]


def test_drops_are_paired_per_subject_and_compared():
    task = Task(("flair", "adc"), ("dwi", "t2"))
    clean = {"s1": 20.0, "s2": 21.0, "s3": 19.0}
    rows = {
        "B5": {"clean": _rows(clean), **{k: _rows({c: v - 1.0 for c, v in clean.items()}) for k in CORRUPTIONS}},
        "unet": {"clean": _rows(clean), **{k: _rows({c: v - 3.0 for c, v in clean.items()}) for k in CORRUPTIONS}},
    }
    assert drops(rows["B5"]["clean"], rows["B5"]["noise"], task.targets) == {"s1": 1.0, "s2": 1.0, "s3": 1.0}
    summary = summarise(rows, task, "adc", {"B5": {"steps": 10}, "unet": {"steps": 20}})
    assert summary["methods"]["unet"]["noise"]["drop"]["mean"] == pytest.approx(3.0)
    test = summary["comparisons"]["B5 vs unet (ghosting)"]
    assert test["wins_of_first"] == 3 and test["subjects"] == 3 and test["median_diff"] == pytest.approx(-2.0)
    summary.update(settings={"task": task.key, "corrupted_source": "adc", "preset": "tiny", "budget_minutes": 1,
                             "seed": 0}, split={"test": ["s1", "s2", "s3"]})
    text = markdown(summary)
    assert "| B5 | 10 |" in text and "B5 vs unet (contrast) | 3/3" in text


def test_a_step_budget_is_parsed_per_method_and_named_in_the_table():
    from medk2n.benchmarks.quality import parse_step_budget

    assert parse_step_budget(None, ["B5", "unet"]) is None
    assert parse_step_budget("300", ["B5", "unet"]) == {"B5": 300, "unet": 300}
    assert parse_step_budget("B5=1510, unet=2721", ["B5", "unet"]) == {"B5": 1510, "unet": 2721}
    for bad in ("B5=10", "B5=ten,unet=3", "B5=0,unet=3", "many"):
        with pytest.raises(ConfigError, match="--steps"):
            parse_step_budget(bad, ["B5", "unet"])
    task = Task(("flair", "adc"), ("dwi",))
    rows = {"B5": {"clean": _rows({"s1": 20.0}), **{k: _rows({"s1": 19.0}) for k in CORRUPTIONS}}}
    summary = summarise(rows, task, "adc", {"B5": {"steps": 1510}})
    summary.update(settings={"task": task.key, "corrupted_source": "adc", "preset": "tiny", "budget_minutes": None,
                             "steps": {"B5": 1510}, "seed": 0}, split={"test": ["s1"]})
    assert "a fixed step budget per method (B5 1510)" in markdown(summary)


def test_the_absent_column_is_a_drop_like_the_others_and_older_results_lack_it():
    task = Task(("flair", "adc"), ("dwi",))
    rows = {"B5": {"clean": _rows({"s1": 20.0, "s2": 22.0}), **{k: _rows({"s1": 19.0, "s2": 21.5}) for k in KINDS}}}
    rows["B5"][ABSENT] = _rows({"s1": 19.5, "s2": 20.0})
    summary = summarise(rows, task, "adc", {"B5": {"steps": 5}})
    assert summary["methods"]["B5"][ABSENT]["per_subject_drop"] == {"s1": 0.5, "s2": 2.0}
    summary.update(settings={"task": task.key, "corrupted_source": "adc", "preset": "tiny", "budget_minutes": 1,
                             "seed": 0}, split={"test": ["s1", "s2"]})
    text = markdown(summary)
    assert "drop: absent |" in text and "the task without `adc`" in text
    older = {"B5": {k: v for k, v in rows["B5"].items() if k != ABSENT}}
    old_summary = summarise(older, task, "adc", {"B5": {"steps": 5}})
    assert ABSENT not in old_summary["methods"]["B5"]
    old_summary.update({k: summary[k] for k in ("settings", "split")})
    assert "absent" not in markdown(old_summary)


def test_corrupted_sources_are_named_sources_of_the_task_once_each():
    task = Task(("flair", "adc"), ("dwi", "t2"))
    assert _corrupted_sources(None, task) == ["adc"]
    assert _corrupted_sources("flair, adc", task) == ["flair", "adc"]
    assert _corrupted_sources(["flair"], task) == ["flair"]
    for bad in ("t1", "flair,flair", "flair,t2"):
        with pytest.raises(ConfigError, match="--corrupt"):
            _corrupted_sources(bad, task)
    with pytest.raises(ConfigError, match="needs two"):
        _corrupted_sources(None, Task(("flair",), ("dwi",)))
    assert without_source(task, "flair") == Task(("adc",), ("dwi", "t2"))


@pytest.mark.slow
def test_two_corrupted_sources_train_once_and_write_a_result_each(phantom, tmp_path):
    out = tmp_path / "results"
    every = run_robustness(phantom, out, "flair,adc->dwi", "flair,adc", ["B5"], preset="tiny", seed=0,
                           test_fraction=0.25, steps="3", tag="t",
                           overrides={"model": {"image_size": 32}, "train": {"batch_size": 4}})
    assert sorted(p.name for p in out.iterdir()) == ["robustness-t-adc.json", "robustness-t-adc.md",
                                                     "robustness-t-flair.json", "robustness-t-flair.md"]
    flair, adc = every["flair"]["methods"]["B5"], every["adc"]["methods"]["B5"]
    assert flair["clean"] == adc["clean"] and flair["steps"] == adc["steps"] == 3  # one training, one clean score
    for row in (flair, adc):
        for kind in KINDS:
            assert all(np.isfinite(v) for v in row[kind]["per_subject_drop"].values()) and row[kind]["per_subject_drop"]
    # Leaving a different source out changes the score: the column really drops the named source.
    assert flair[ABSENT]["per_subject_drop"] != adc[ABSENT]["per_subject_drop"]
    assert json.loads((out / "robustness-t-adc.json").read_text())["settings"]["corrupted_source"] == "adc"
    # The preset's source check is scored on the same test sets: a probability per condition, an AUC per
    # corruption, and a table in the report.
    check = every["flair"]["source_check"]["B5"]
    assert set(check["p_named_right"]) == {"clean", *CORRUPTIONS} and set(check["auc"]) == set(CORRUPTIONS)
    assert set(check["flagged"]) == {"clean", *CORRUPTIONS}
    assert all(0.0 <= v <= 1.0 for part in ("p_named_right", "auc", "flagged") for v in check[part].values())
    assert check["slices"] > 0
    assert set(check["per_subject"]["contrast"]) == set(flair["contrast"]["per_subject_drop"])
    assert "Source check" in (out / "robustness-t-flair.md").read_text()
    # The checked model is scored a second time as `medk2n-run --exclude-mislabelled` runs it: a row of its
    # own, compared paired with the plain one (its drops are from its own clean score, false alarms included).
    excluding = every["flair"]["methods"]["B5" + EXCLUDING]
    assert excluding["steps"] == 3
    for kind in KINDS:
        assert set(excluding[kind]["per_subject_drop"]) == set(flair[kind]["per_subject_drop"])
    assert f"B5 vs B5{EXCLUDING} (contrast)" in every["flair"]["comparisons"]
    assert f"B5{EXCLUDING}" in (out / "robustness-t-flair.md").read_text()


def test_auc_counts_how_often_a_clean_slice_outscores_a_degraded_one():
    assert auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert auc(np.array([0.1]), np.array([0.9])) == 0.0
    assert auc(np.array([0.5, 0.9]), np.array([0.5, 0.1])) == pytest.approx(0.875)  # one tie, counted half


@pytest.mark.slow
def test_a_kept_quality_run_is_scored_as_it_was_trained_and_a_leak_is_refused(phantom, tmp_path):
    """--trained scores the very checkpoints of a quality table, on its own test subjects: the clean column
    repeats the quality run's scores subject by subject, and no training happens."""
    from medk2n.benchmarks.quality import run_quality
    from medk2n.benchmarks.stats import per_subject

    work = tmp_path / "work"
    quality = run_quality(phantom, 0.05, tmp_path / "q", seed=3, progress=lambda _: None, methods=["B5", "unet"],
                          tasks=["flair,adc->dwi"], test_fraction=0.25, export_precisions=(),
                          overrides={"model": {"image_size": 32}, "train": {"batch_size": 4}}, steps="B5=4,unet=5",
                          work=work)
    out = tmp_path / "results"
    every = run_robustness(None, out, "flair,adc->dwi", "adc", ["B5", "unet"], trained=work, tag="kept")
    results = every["adc"]
    assert results["split"]["test"] == quality["split"]["test"]
    assert results["settings"]["seed"] == 3 and results["settings"]["steps"] == {"B5": 4, "unet": 5}
    assert results["settings"]["trained"] == str(work)
    for method in ("B5", "unet"):
        mine = [r for r in quality["rows"] if r["method"] == method]
        expected = per_subject(mine, "masked_psnr", ["dwi"])
        assert results["methods"][method]["clean"]["mean"] == pytest.approx(np.mean(list(expected.values())))
    assert "run kept in `work/`" in (out / "robustness-kept.md").read_text()
    assert sorted(p.name for p in (work / "runs").iterdir()) == ["B5", "unet"]  # nothing trained, nothing added

    # A checkpoint that saw a test subject in training is refused before anything is scored.
    config = work / "runs" / "unet" / "checkpoints" / "best" / "config.json"
    doc = json.loads(config.read_text())
    doc["training"]["subjects"]["train"].append(quality["split"]["test"][0])
    config.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="trained on test subject"):
        run_robustness(None, tmp_path / "leak", "flair,adc->dwi", "adc", ["unet"], trained=work)
    with pytest.raises(ConfigError, match="no B0 checkpoint"):
        run_robustness(None, tmp_path / "none", "flair,adc->dwi", "adc", ["B0"], trained=work)
    assert not (tmp_path / "leak").exists() and not (tmp_path / "none").exists()


def test_the_cli_wants_data_or_a_kept_run_and_says_so_in_one_line(tmp_path):
    from click.testing import CliRunner

    from medk2n.benchmarks.cli import cli

    for extra in ([], ["--data", str(tmp_path), "--trained", str(tmp_path)]):
        result = CliRunner().invoke(cli, ["robustness", "--out", str(tmp_path / "out"), *extra])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and "--trained" in lines[0], result.stderr
        assert "Traceback" not in result.output and not (tmp_path / "out").exists()
    result = CliRunner().invoke(cli, ["robustness", "--trained", str(tmp_path / "missing"), "--out",
                                      str(tmp_path / "out")])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "not a kept quality run" in lines[0], result.stderr
