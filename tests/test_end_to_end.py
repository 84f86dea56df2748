"""The whole product on phantom cases: medk2n-train -> medk2n-export -> medk2n-run (base install) -> medk2n-eval.

This is the path a user walks, through the real console entry points, on
cases of every geometry the phantom makes (isotropic, anisotropic, LPS,
oblique). The runtime runs in the torch-free base environment when `make test`
provides it, and its NIfTI outputs are compared voxel by voxel with the
PyTorch checkpoint driven through the same volume pipeline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medk2n.data.cases import discover_dataset
from medk2n.data.phantom import generate_dataset
from medk2n.eval.predictor import checkpoint_synthesizer, open_predictor
from medk2n.export.cli import main as export_main
from medk2n.runtime.uncertainty import interval_factor
from medk2n.train.cli import main as train_main

pytestmark = pytest.mark.slow

SOURCES = ["flair", "adc"]
TARGETS = ["dwi", "t2", "t1", "pd"]


def _run(main, args: list[str]) -> None:
    """Call a console entry point in-process, as the shell would, and insist on exit 0."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None), f"{main.__module__} {args} exited {exit_info.value.code}"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = root / "data"
    generate_dataset(data, subjects=4, seed=11, spacing=4.0)
    config = root / "tiny32.yaml"
    config.write_text("base: tiny\nmodel:\n  image_size: 32\ntrain:\n  batch_size: 4\n  val_every: 3\n"
                      "  val_fraction: 0.25\n")
    run = root / "run"
    _run(train_main, ["--config", str(config), "--data", str(data), "--out", str(run), "--max-steps", "3",
                      "--no-progress"])
    bundle = root / "bundle"
    _run(export_main, [str(run / "checkpoints" / "best"), "--k", "2", "--n", "4", "--precision", "fp32",
                       "--calib", str(data), "--calib-slices", "4", "--batch", "1:4:8", "--out", str(bundle)])
    return {"data": data, "run": run, "bundle": bundle, "root": root}


def _runtime_python() -> str:
    """The torch-free base environment when `make test` gives one, else this interpreter."""
    return os.environ.get("MEDK2N_BASE_PYTHON") or sys.executable


def test_runtime_outputs_sit_on_the_input_grid_and_match_pytorch(pipeline):
    cases = discover_dataset(pipeline["data"])
    images = [nib.load(c.files["flair"]) for c in cases]
    # The four phantom geometries: isotropic, anisotropic, LPS-flipped, oblique.
    assert len({nib.aff2axcodes(im.affine) for im in images}) >= 2
    assert any(max(im.header.get_zooms()) > 1.2 * min(im.header.get_zooms()) for im in images)
    assert any(not np.allclose(np.abs(im.affine[:3, :3]) * (np.abs(im.affine[:3, :3]) > 1e-6),
                               np.abs(im.affine[:3, :3])) or np.count_nonzero(np.abs(im.affine[:3, :3]) > 1e-6) > 3
               for im in images)
    out = pipeline["root"] / "out"
    proc = subprocess.run(
        [_runtime_python(), "-m", "medk2n.runtime.cli", str(pipeline["bundle"]),
         *[str(c.files["flair"].parent) for c in cases],
         "--sources", ",".join(SOURCES), "--targets", ",".join(TARGETS), "--out", str(out),
         "--json", str(pipeline["root"] / "run.json")],
        capture_output=True, text=True, timeout=600,
        cwd=pipeline["root"],  # not the checkout: its medk2n/ folder would shadow the installed package
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((pipeline["root"] / "run.json").read_text())
    assert "cpu" in json.dumps(report).lower() and "infer" in json.dumps(report)
    manifest = json.loads((pipeline["bundle"] / "manifest.json").read_text())
    assert manifest["parity"]["fp32"]["passed"]
    # The conformal calibration ran on the subject the checkpoint held out, and on no training subject.
    training = manifest["source"]["training"]["subjects"]
    assert manifest["uncertainty"]["subjects"] == training["validation"]
    assert not set(manifest["uncertainty"]["subjects"]) & set(training["train"])
    # So did the source check's threshold fit; one subject gives too few series to fit a line from.
    check = manifest["source_check"]
    assert check["subjects"] == training["validation"] and check["thresholds"] == {}
    assert check["too_few_series"]["min"] > len(training["validation"]) * 3

    torch_synth = checkpoint_synthesizer(pipeline["run"] / "checkpoints" / "best", k=2, n=4)
    with torch_synth:
        for case in cases:
            flair = nib.load(case.files["flair"])
            volumes = {m: np.asarray(nib.load(case.files[m]).dataobj, np.float32) for m in SOURCES}
            reference = torch_synth.run(volumes, SOURCES, TARGETS, affine=flair.affine, name=case.name)
            for target in TARGETS:
                written = nib.load(out / case.name / f"{target}.nii.gz")
                uncertainty = nib.load(out / case.name / f"{target}_uncertainty.nii.gz")
                assert written.shape == flair.shape == uncertainty.shape
                np.testing.assert_allclose(written.affine, flair.affine, atol=1e-5)
                ours = np.asarray(written.dataobj, np.float64)
                theirs = reference[target][0].astype(np.float64)
                assert theirs.std() > 0, (case.name, target)
                scale = max(float(np.abs(theirs).max()), 1e-6)
                # Same tolerance the export gate uses on [0, 1] outputs: at most 0.1% of voxels
                # may differ by more than 1e-3 of the range (argmin head ties may flip).
                outliers = np.mean(np.abs(ours - theirs) > 1e-3 * scale)
                assert outliers <= 1e-3, (case.name, target, outliers)
                # The half-width is the calibrated quantile times the checkpoint's own restored scale.
                width = np.asarray(uncertainty.dataobj, np.float64)
                expected = interval_factor(manifest["uncertainty"], target, 0.9, "fp32") * reference[target][1]
                assert np.mean(np.abs(width - expected) > 1e-3 * max(float(expected.max()), 1e-6)) <= 1e-3
                assert np.all(width[ours == 0] == 0) and width.max() > 0  # none where nothing is synthesised


def test_eval_scores_checkpoint_and_bundle_alike(pipeline):
    """medk2n-eval goes through one pipeline for both, so an FP32 bundle scores as its checkpoint does."""
    from medk2n.eval.evaluate import MODEL, evaluate

    scores, checks = {}, {}
    for name, path in (("checkpoint", pipeline["run"] / "checkpoints" / "best"), ("bundle", pipeline["bundle"])):
        with open_predictor(path, k=2, n=1) as predictor:
            result = evaluate(predictor, pipeline["data"], ["flair", "adc"], ["dwi"], train_dir=pipeline["data"])
        scores[name] = [r["masked_psnr"] for r in result.rows if r["method"] == MODEL]
        checks[name] = [[p[s] for s in ("flair", "adc")] for p in result.source_check.values()]
        methods = {r["method"] for r in result.rows}
        assert {"copy:flair", "copy:adc", "mean-train"} <= methods
    np.testing.assert_allclose(scores["bundle"], scores["checkpoint"], atol=0.05)
    assert len(checks["bundle"]) == len(scores["bundle"])  # the tiny preset's source check, per subject
    np.testing.assert_allclose(checks["bundle"], checks["checkpoint"], atol=1e-3)


def test_eval_cli_writes_every_report(pipeline, tmp_path):
    from medk2n.eval.cli import main as eval_main

    out = tmp_path / "metrics.json"
    _run(eval_main, [str(pipeline["bundle"]), str(pipeline["data"]), "--sources", "flair",
                     "--targets", "adc,dwi", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc and out.with_suffix(".csv").is_file() and out.with_suffix(".md").is_file()
    assert out.with_suffix(".png").stat().st_size > 1000
    assert out.with_name("metrics_risk_coverage.png").stat().st_size > 1000
    text = out.with_suffix(".md").read_text()
    assert "adc" in text and "dwi" in text and "copy:flair" in text
    rows = [r for r in doc["subjects"] if r["method"] == "model"]
    assert rows and all(0.0 <= r["coverage"] <= 1.0 and -1.0 <= r["uncertainty_spearman"] <= 1.0 for r in rows)
    assert set(doc["risk_coverage"]) == {"adc", "dwi"}
    cases = {r["case"] for r in rows}
    assert set(doc["source_check"]) == cases and all(set(p) == {"flair"} for p in doc["source_check"].values())
    assert "Source check (the model's p" in text
    # --exclude-mislabelled scores what medk2n-run writes with it, and says per subject what it left out.
    excluding = tmp_path / "excluding.json"
    _run(eval_main, [str(pipeline["bundle"]), str(pipeline["data"]), "--sources", "flair", "--targets", "adc,dwi",
                     "--out", str(excluding), "--no-montage", "--exclude-mislabelled"])
    assert set(json.loads(excluding.read_text())["excluded_sources"]) == cases
    assert "With --exclude-mislabelled: sources left out" in excluding.with_suffix(".md").read_text()


def test_eval_names_a_mask_off_the_volume_grid(pipeline, tmp_path, capsys):
    """A shipped lesion mask cropped by one voxel: one line naming the file, a failing exit, no report."""
    import shutil

    from medk2n.eval.cli import main as eval_main

    case = sorted(p for p in pipeline["data"].iterdir() if p.is_dir())[0]
    data = tmp_path / "data"
    shutil.copytree(case, data / case.name)
    mask_path = data / case.name / "lesion_mask.nii.gz"
    mask = nib.load(str(mask_path))
    nib.save(nib.Nifti1Image(np.asanyarray(mask.dataobj)[:-1], mask.affine), str(mask_path))
    out = tmp_path / "metrics.json"
    with pytest.raises(SystemExit) as exit_info:
        eval_main([str(pipeline["bundle"]), str(data), "--sources", "flair", "--targets", "dwi", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code not in (0, None) and "\n" not in err, err
    assert str(mask_path) in err and "lesion mask is not on the grid" in err
    assert not any(tmp_path.glob("metrics.*"))
