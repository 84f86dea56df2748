"""The shipped demo model: made only from a finished run, traceable to the demo table the README quotes."""

import json
from pathlib import Path

import pytest

from medk2n.benchmarks.demo_model import PROVENANCE, ship_demo_model
from medk2n.config import preset
from medk2n.errors import MedK2NError
from medk2n.eval.evaluate import EvalResult, model_provenance
from medk2n.eval.report import markdown
from medk2n.manifest import sha256_file
from medk2n.train.checkpoint import load_checkpoint, read_checkpoint_config

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "assets" / "demo-model"


def tiny_cfg():
    cfg = preset("tiny")
    cfg.model.image_size = 32
    cfg.train.batch_size = 2
    cfg.train.val_every = 100
    cfg.train.log_every = 1
    cfg.train.warmup_steps = 1
    cfg.train.val_fraction = 0.34
    return cfg


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from medk2n.data.phantom import generate_dataset

    root = tmp_path_factory.mktemp("demo-model") / "data"
    generate_dataset(root, subjects=3, seed=3, spacing=4.0)
    return root


@pytest.mark.slow
def test_ships_a_finished_run_and_refuses_one_cut_short(phantom, tmp_path):
    from medk2n.train.loop import train

    train(tiny_cfg(), phantom, tmp_path / "done", max_steps=3, progress=False)
    out = ship_demo_model(tmp_path / "done", tmp_path / "shipped", recipe="test recipe")
    record = json.loads((out / PROVENANCE).read_text())
    assert record["recipe"] == "test recipe" and record["steps"] == 3
    assert record["weights_sha256"] == sha256_file(out / "model.safetensors")
    load_checkpoint(out)  # loads strictly, as medk2n-export will
    assert (out / "train.csv").is_file() and (out / "val.csv").is_file()
    with pytest.raises(MedK2NError, match="exists; pass --replace"):
        ship_demo_model(tmp_path / "done", tmp_path / "shipped", recipe="again")

    cut = train(tiny_cfg(), phantom, tmp_path / "cut", max_steps=6, stop_at_step=2, progress=False)
    assert cut.stopped_early == "stop_at_step=2"
    with pytest.raises(MedK2NError, match="step 2 of 6"):
        ship_demo_model(tmp_path / "cut", tmp_path / "cut-shipped", recipe="test recipe")
    assert not (tmp_path / "cut-shipped").exists()

    # Every report made from the cut-short checkpoint says so at its top.
    _, meta = read_checkpoint_config(tmp_path / "cut" / "checkpoints" / "last")
    report = EvalResult(["flair"], ["t1"], model=model_provenance({"training": meta}),
                        rows=[{"method": "model", "case": "c", "target": "t1", "masked_psnr": 10.0}])
    assert "training stopped at step 2 of 6, by stop_at_step=2" in markdown(report, "t").splitlines()[2]
    finished = EvalResult(["flair"], ["t1"], model=model_provenance({"training": json.loads(
        (out / "config.json").read_text())["training"]}))
    assert finished.training_warning is None


def test_the_shipped_demo_model_is_the_one_the_demo_table_was_made_from():
    """README -> benchmarks/results/demo.* is checked by the readme tests; this closes the chain to the weights."""
    record = json.loads((SHIPPED / PROVENANCE).read_text())
    weights = sha256_file(SHIPPED / "model.safetensors")
    assert record["weights_sha256"] == weights
    demo = json.loads((ROOT / "benchmarks" / "results" / "demo.json").read_text())
    assert demo["model"]["weights_sha256"] == weights
    assert demo["model"]["training"]["schedule_complete"] is True
    assert record["steps"] == demo["model"]["training"]["step"]
