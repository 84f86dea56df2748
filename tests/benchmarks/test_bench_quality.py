"""`medk2n-bench quality`: results assembly and tables from fixed rows, the split, and one tiny real run."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medk2n.benchmarks.cli import cli
from medk2n.benchmarks.quality import (DEFAULT_TASKS, Task, kept_methods, method_config, parse_task, run_quality,
                                       split_dataset)
from medk2n.benchmarks.quality_report import ALL, assemble, markdown
from medk2n.errors import ConfigError, DataError

CASES = [f"sub-{i:03d}" for i in range(6)]
TASK = Task(("flair",), ("adc", "dwi"))


def fake_rows() -> list[dict]:
    """B5 beats B4 by 1 dB and the U-Net by 2 dB on every subject; INT8 loses 0.5 dB against ONNX FP32."""
    rows = []
    offsets = {"B5": 0.0, "B4": -1.0, "unet": -2.0, "copy:flair": -6.0, "mean-train": -4.0,
               "B5:onnx-fp32": 0.0, "B5:onnx-int8": -0.5}
    for method, offset in offsets.items():
        for i, case in enumerate(CASES):
            for j, target in enumerate(TASK.targets):
                row = {"task": TASK.key, "method": method, "case": case, "target": target,
                       "masked_psnr": 20.0 + i + j + offset, "masked_ssim": 0.8 + offset / 100,
                       "masked_mae": 0.05 - offset / 100, "psnr": 18.0 + offset, "ssim": 0.7}
                if target == "adc":
                    row["masked_mae_physical"] = 100.0
                if ":onnx-" in method:
                    row["precision"] = method.rsplit("-", 1)[1]
                rows.append(row)
    return rows


def fake_results() -> dict:
    runs = {m: {"steps": s, "step_seconds": 0.5, "stage_steps": {"1to1": 10, "kton": s - 10}, "last_lr": 5e-5,
                "train_seconds": 60.0,
                "eval_seconds": 3.0, "best_val_masked_psnr": 20.0, "checkpoint": Path("/nowhere")}
            for m, s in (("B5", 100), ("B4", 120), ("unet", 300))}
    export = {"k": 2, "n": 4, "errors": {}, "bundles": {"int8": {
        "parity": {"int8": {"passed": True, "reference": "onnx-fp32"}},
        "accuracy": {"int8": {"passed": False, "drop_db": 1.5}}}}}
    split = {"train": CASES, "test": CASES, "excluded": [], "train_dir": Path("/x"), "test_dir": Path("/y")}
    settings = {"preset": "tiny", "seed": 0, "budget_minutes": 1.0, "device": "cpu"}
    return assemble(fake_rows(), runs, [TASK], split, export, "B5", settings)


def test_summaries_pvalues_and_precision_drop_from_fixed_rows():
    results = fake_results()
    summary = results["summary"][TASK.key]
    # Subject means over adc (20+i) and dwi (21+i): 20.5 .. 25.5, sd of 0..5 = sqrt(3.5).
    assert summary["B5"][ALL]["masked_psnr"]["mean"] == pytest.approx(23.0)
    assert summary["B5"][ALL]["masked_psnr"]["sd"] == pytest.approx(math.sqrt(3.5))
    assert summary["B5"]["adc"]["masked_mae_physical"]["mean"] == 100.0
    assert "masked_mae_physical" not in summary["B5"][ALL]  # physical units are not averaged with dwi
    # Every subject favours B5 on both tested metrics: exact two-sided p = 2 / 2**6.
    assert results["pvalues"][TASK.key]["unet"][ALL]["masked_psnr"]["p"] == pytest.approx(0.03125)
    assert results["pvalues"][TASK.key]["B4"]["dwi"]["masked_ssim"]["p"] == pytest.approx(0.03125)
    assert "B5:onnx-int8" not in results["pvalues"][TASK.key]
    drop = results["precision"]["drop"][TASK.key]
    assert drop["int8"][ALL]["masked_psnr"]["mean"] == pytest.approx(-0.5) and drop["int8"][ALL]["vs"] == "B5:onnx-fp32"
    assert drop["fp32"][ALL]["masked_psnr"]["mean"] == pytest.approx(0.0) and drop["fp32"][ALL]["vs"] == "B5"
    assert "checkpoint" not in results["methods"]["B5"]
    json.dumps(results, allow_nan=False)  # strict JSON as it is


def test_markdown_tables_from_fixed_results():
    text = markdown(fake_results())
    lines = text.splitlines()
    b5 = next(line for line in lines if line.startswith("| all (mean of targets) | Med-K2N (B5, full) |"))
    assert "23.00 ± 1.87" in b5 and b5.endswith("| – | – |")
    unet = next(line for line in lines if line.startswith("| all (mean of targets) | U-Net baseline |"))
    assert "21.00 ± 1.87" in unet and "0.0312" in unet
    assert any(line.startswith("| adc | copy:flair (copy of source) |") for line in lines)
    assert any(line.startswith("| dwi | mean training image |") for line in lines)
    # Ladder: only B4 -> B5 present; the module's gain is paired per subject, with its spread and p.
    assert "| B5 (CMIM) | 23.00; +1.00 ± 0.00 (0.0312) |" in text
    assert "| flair->adc,dwi | int8 | 22.50 ± 1.87" in text and "-0.500 ± 0.000" in text
    assert "int8 parity vs onnx-fp32 passed; INT8 masked-PSNR drop 1.50 dB failed, exported with --force" in text
    assert "1 min of training wall-clock per method" in text and "B4 120" in text and "| 10 / 0 / 0 / 110 |" in text


def test_task_parsing_and_method_configs():
    assert parse_task("flair, ADC->dwi,t2") == Task(("flair", "adc"), ("dwi", "t2"))
    assert [t.key for t in DEFAULT_TASKS] == ["flair->adc,dwi", "adc,flair->dwi", "flair,adc->dwi,t2,t1,pd"]
    with pytest.raises(ConfigError, match="SOURCES->TARGETS"):
        parse_task("flair")
    b2 = method_config("tiny", "B2", seed=7, overrides={"model": {"image_size": 32}})
    assert (b2.model.arch, b2.model.ablation, b2.model.image_size, b2.train.seed) == ("medk2n", "B2", 32, 7)
    assert method_config("tiny", "unet", seed=0).model.arch == "unet"
    recipe = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"  # a YAML recipe over a preset
    demo = method_config(str(recipe), "unet", seed=0)
    assert (demo.model.arch, demo.loss.gradient, list(demo.train.standardize_outputs)) == ("unet", 3.0,
                                                                                          ["t1", "t2", "pd"])
    # The quality-ordered recipes are the demo's and the bare preset's with the fusion's base chosen by quality.
    for name, base in (("demo-ordered.yaml", demo), ("tiny-ordered.yaml", method_config("tiny", "B5", seed=0))):
        ordered = method_config(str(recipe.with_name(name)), "B5", seed=0)
        assert ordered.model.base_by_quality and ordered.train.degrade_any_source
        assert (ordered.loss, ordered.train.standardize_outputs) == (base.loss, base.train.standardize_outputs)
    # The recipes of the shipped model and of results made before the source check keep it off.
    for name in ("demo.yaml", "demo-ordered.yaml", "tiny-ordered.yaml", "tiny-request-order.yaml"):
        assert not method_config(str(recipe.with_name(name)), "B5", seed=0).model.source_check
    assert method_config("tiny", "B5", seed=0).model.source_check
    with pytest.raises(ConfigError, match="image_sise"):
        method_config("tiny", "B5", seed=0, overrides={"model": {"image_sise": 32}})


def test_split_is_seeded_disjoint_and_skips_incomplete_subjects(phantom, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for case in sorted(phantom.iterdir()):
        os.symlink(case, data / case.name)
    partial = data / "sub-partial"
    partial.mkdir()
    os.symlink(phantom / "sub-000" / "flair.nii.gz", partial / "flair.nii.gz")
    first = split_dataset(data, tmp_path / "a", [TASK], test_fraction=0.25, seed=3)
    again = split_dataset(data, tmp_path / "b", [TASK], test_fraction=0.25, seed=3)
    assert (first["train"], first["test"]) == (again["train"], again["test"])
    assert len(first["test"]) == 1 and len(first["train"]) == 3 and first["excluded"] == ["sub-partial"]
    assert not set(first["train"]) & set(first["test"])
    assert sorted(p.name for p in (tmp_path / "a" / "test" / first["test"][0]).iterdir()) == [
        "adc.nii.gz", "brain_mask.nii.gz", "dwi.nii.gz", "flair.nii.gz", "lesion_mask.nii.gz", "pd.nii.gz",
        "t1.nii.gz", "t2.nii.gz"]
    with pytest.raises(DataError, match="at least 3 subjects"):
        split_dataset(data, tmp_path / "c", [Task(("flair",), ("t1c",))], test_fraction=0.25, seed=3)


@pytest.mark.slow
def test_tiny_run_writes_every_output_with_finite_numbers(phantom, tmp_path):
    out = tmp_path / "results"
    # A step budget: the result cannot depend on how loaded the machine is (the wall-clock path,
    # fit_to_budget, is tested in tests/train/test_loop.py).
    results = run_quality(phantom, 0.05, out, seed=0, progress=lambda _: None, methods=["B5", "unet"],
                          tasks=["flair->adc,dwi"], test_fraction=0.25, export_precisions=("fp32",),
                          overrides={"model": {"image_size": 32}, "train": {"batch_size": 4}}, steps="B5=6,unet=9",
                          work=tmp_path / "work")
    assert sorted(p.name for p in out.iterdir()) == ["quality.json", "quality.md", "quality.png",
                                                     "quality_examples.png"]
    assert json.loads((out / "quality.json").read_text()) == results
    for name in ("quality.png", "quality_examples.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = results["summary"]["flair->adc,dwi"]
    for method in ("B5", "unet", "B5:onnx-fp32", "mean-train"):
        for metric in ("masked_psnr", "masked_psnr_affine", "masked_ssim", "masked_mae", "psnr", "ssim"):
            assert np.isfinite(summary[method][ALL][metric]["mean"]), (method, metric)
    assert results["methods"]["B5"]["steps"] == 6 and results["methods"]["unet"]["steps"] == 9
    assert results["settings"]["steps"] == {"B5": 6, "unet": 9} and results["settings"]["budget_minutes"] is None
    assert "a fixed number of steps per method (B5 6, unet 9" in (out / "quality.md").read_text()
    assert results["split"]["test"] and results["machine"]["cpu"] and results["machine"]["device"] == "cpu"
    # The FP32 ONNX export scores like the PyTorch checkpoint it came from.
    drop = results["precision"]["drop"]["flair->adc,dwi"]["fp32"][ALL]["masked_psnr"]["mean"]
    assert abs(drop) < 0.1
    assert "U-Net baseline" in (out / "quality.md").read_text()
    # The kept work folder holds what a later re-scoring needs.
    for method in ("B5", "unet"):
        assert (tmp_path / "work" / "runs" / method / "checkpoints" / "best" / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "work" / "split" / "test").iterdir()) == results["split"]["test"]

    # --trained re-scores those checkpoints on their own split without training, and writes nothing into the
    # kept folder: every score repeats, subject by subject.
    kept_files = sorted(str(p) for p in (tmp_path / "work").rglob("*"))
    again = run_quality(None, 0.05, tmp_path / "again", progress=lambda _: None, tasks=["flair->adc,dwi"],
                        export_precisions=("fp32",), methods=kept_methods(tmp_path / "work"), trained=tmp_path / "work")
    assert sorted(str(p) for p in (tmp_path / "work").rglob("*")) == kept_files
    assert again["settings"]["steps"] == {"B5": 6, "unet": 9} and again["settings"]["trained"] == str(tmp_path / "work")
    assert again["settings"]["seed"] == 0 and again["split"]["test"] == results["split"]["test"]

    def scores(res: dict) -> dict:
        return {(r["method"], r["case"], r["target"]): r["masked_psnr"] for r in res["rows"]}

    assert scores(again) == pytest.approx(scores(results))
    assert again["methods"]["B5"]["best_val_masked_psnr"] == pytest.approx(results["methods"]["B5"]["best_val_masked_psnr"])
    assert "preset kept run work" in (tmp_path / "again" / "quality.md").read_text()


def test_a_kept_work_folder_is_never_reused(phantom, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "runs").mkdir()
    with pytest.raises(ConfigError, match="work folder must be new or empty"):
        run_quality(phantom, 0.05, tmp_path / "out", progress=lambda _: None, methods=["unet"], work=work)
    assert not (tmp_path / "out").exists() and sorted(p.name for p in work.iterdir()) == ["runs"]


def test_cli_wants_data_or_a_kept_run_and_says_so_in_one_line(tmp_path):
    for extra in ([], ["--data", str(tmp_path), "--trained", str(tmp_path)], ["--trained", str(tmp_path / "none")]):
        result = CliRunner().invoke(cli, ["quality", "--out", str(tmp_path / "out"), *extra])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert ("--trained" in lines[0] if len(extra) != 2 else "not a kept quality run" in lines[0]), lines[0]
        assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_cli_refuses_a_used_work_folder_in_one_line(phantom, tmp_path):
    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    result = CliRunner().invoke(cli, ["quality", "--data", str(phantom), "--methods", "unet", "--out",
                                      str(tmp_path / "out"), "--work", str(work)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(work) in lines[0], result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
