"""A few real training steps on phantom slices: checkpoints, exact resume, CLI errors."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from safetensors.torch import load_file

from medk2n.config import preset
from medk2n.train.checkpoint import load_checkpoint
from medk2n.train.cli import main as train_main
from medk2n.train.distributed import DistContext
from medk2n.train.loop import StepBatches, train

pytestmark = pytest.mark.slow


def tiny_cfg():
    cfg = preset("tiny")
    cfg.model.image_size = 32
    cfg.train.batch_size = 4
    cfg.train.val_every = 4
    cfg.train.warmup_steps = 2
    cfg.train.val_fraction = 0.34
    return cfg


def test_training_writes_loadable_checkpoints(phantom, tmp_path):
    result = train(tiny_cfg(), phantom, tmp_path / "run", max_steps=4, progress=False)
    assert result.step == 4 and np.isfinite(result.last_loss)
    for name in ("best", "last"):
        model, cfg, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / name)
        assert cfg.model.image_size == 32 and meta["step"] == 4
        x = torch.rand(1, 2, 32, 32)
        images, conf = model.eval()(x, torch.tensor([[0, 3]]), torch.tensor([[2]]), torch.ones(1, 2))
        assert images.shape == (1, 1, 32, 32) and torch.isfinite(conf).all()
    assert (tmp_path / "run" / "logs" / "val.csv").is_file()


@pytest.mark.parametrize("arch", ["medk2n", "unet"])
def test_resume_continues_with_the_same_losses_and_weights(phantom, tmp_path, arch):
    """Byte-exact resume for every architecture: the U-Net's modality dropout draws from torch's RNG."""
    def cfg():
        c = tiny_cfg()
        c.model.arch = arch
        return c

    full = train(cfg(), phantom, tmp_path / "full", max_steps=6, progress=False)
    # Interrupted at step 4 of a 6-step schedule (what SIGTERM or --budget-minutes do).
    part = train(cfg(), phantom, tmp_path / "part", max_steps=6, stop_at_step=4, progress=False)
    assert part.step == 4
    resumed = train(cfg(), phantom, tmp_path / "part", max_steps=6, resume=True, progress=False)
    assert resumed.history[0]["step"] == 5
    full_tail = [row["loss"] for row in full.history[4:]]
    resumed_losses = [row["loss"] for row in resumed.history]
    np.testing.assert_allclose(resumed_losses, full_tail, rtol=1e-5)
    a = load_file(str(tmp_path / "full" / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "checkpoints" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_rejects_unknown_config_keys_and_empty_datasets(tmp_path, phantom):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: tiny\nmodel:\n  image_sise: 32\n")
    result = CliRunner().invoke(train_main, ["--config", str(bad), "--data", str(phantom), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "image_sise" in result.output and "Traceback" not in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(train_main, ["--config", "tiny", "--data", str(empty), "--out", str(tmp_path / "r2")])
    assert result.exit_code == 2 and "empty" in result.output
    assert not (tmp_path / "r2" / "checkpoints").exists()


def test_cli_refuses_to_reuse_a_run_folder(tmp_path, phantom):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = CliRunner().invoke(train_main, ["--config", "tiny", "--data", str(phantom), "--out", str(out)])
    assert result.exit_code == 2 and "not empty" in result.output
    assert (out / "notes.txt").read_text() == "mine"


def test_checkpoint_config_is_json_with_vocabulary(phantom, tmp_path):
    train(tiny_cfg(), phantom, tmp_path / "run", max_steps=2, progress=False)
    doc = json.loads((tmp_path / "run" / "checkpoints" / "last" / "config.json").read_text())
    assert doc["experiment"]["model"]["modalities"][:2] == ["t1", "t1c"]
    assert doc["experiment"]["model"]["normalization"]["adc"]["kind"] == "range"


def test_batches_draw_the_lesion_fraction_from_lesion_slices():
    focus = np.array([3, 17, 40])
    sampler = StepBatches(100, 8, seed=5, start=0, stop=50, ctx=DistContext(), focus=focus, focus_fraction=0.25)
    batches = [[index for index, *_ in batch] for batch in sampler]
    assert len(batches) == 50 and all(len(b) == 8 for b in batches)
    assert all(np.isin(b, focus).sum() >= 2 for b in batches)
    # No lesion slices, or a zero fraction: uniform draws, exactly as before the option existed.
    for plain in (StepBatches(100, 8, 5, 0, 50, DistContext(), focus=focus, focus_fraction=0.0),
                  StepBatches(100, 8, 5, 0, 50, DistContext(), focus=np.array([], dtype=int), focus_fraction=0.25)):
        expected = [np.random.default_rng([5, step]).choice(100, size=8, replace=False).tolist() for step in range(50)]
        assert [[index for index, *_ in batch] for batch in plain] == expected
    # Deterministic per step, so a resumed run replays the same batches.
    resumed = StepBatches(100, 8, seed=5, start=20, stop=50, ctx=DistContext(), focus=focus, focus_fraction=0.25)
    assert [[index for index, *_ in batch] for batch in resumed] == batches[20:]


def test_standardised_targets_get_a_fitted_scale_that_outputs_follow(phantom, tmp_path):
    from medk2n.config import STANDARD_PERCENTILES
    from medk2n.data.cases import discover_dataset, load_case
    from medk2n.eval.predictor import checkpoint_synthesizer
    from medk2n.runtime.synthesizer import restored_head

    cfg = tiny_cfg()
    cfg.train.standardize_outputs = ["pd", "t2"]
    train(cfg, phantom, tmp_path / "run", max_steps=2, progress=False)
    last = tmp_path / "run" / "checkpoints" / "last"
    norms = json.loads((last / "config.json").read_text())["experiment"]["model"]["normalization"]
    assert norms["t1"]["standard"] is None and norms["adc"]["standard"] is None
    for m in ("pd", "t2"):
        scale = norms[m]["standard"]
        assert len(scale) == len(STANDARD_PERCENTILES) and scale[0] == 0 and scale[-1] == 1
        assert np.all(np.diff(scale) >= 0) and 0.2 < scale[5] < 0.95  # a real histogram's median, not a stub
    # The synthesis of a standardised target has the scale's landmarks inside the restored head.
    case = discover_dataset(phantom)[0]
    with checkpoint_synthesizer(last, 2, 2) as synth:
        volumes = load_case(case, ["flair", "adc"])
        request = synth.request(["flair", "adc"], ["pd", "t1"], case.name)
        prepared = synth.prepare(volumes, request, None, case.name)
        out = synth.restore(*synth.infer(prepared, request), prepared, request)
    head = restored_head(prepared)
    np.testing.assert_allclose(np.percentile(out["pd"][0][head], STANDARD_PERCENTILES), norms["pd"]["standard"],
                               atol=0.03)
    # --resume keeps the scale the run started with rather than refitting.
    train(cfg, phantom, tmp_path / "run", max_steps=4, resume=True, progress=False)
    again = json.loads((last / "config.json").read_text())["experiment"]["model"]["normalization"]
    assert again["pd"]["standard"] == norms["pd"]["standard"]


def test_standardising_a_physical_map_is_a_config_error():
    from medk2n.config import ExperimentConfig
    from medk2n.errors import ConfigError

    data = preset("tiny").to_dict()
    data["train"]["standardize_outputs"] = ["adc"]
    with pytest.raises(ConfigError, match="standardize_outputs: 'adc'"):
        ExperimentConfig.from_dict(data)


@pytest.mark.parametrize("sources, targets, message", [
    (["flair", "swi"], [], "train.sources: 'swi' is not in the vocabulary"),
    ([], ["T3"], "train.targets: 't3' is not in the vocabulary"),
    (["pd"], ["PD"], "leave no source-target pair"),
])
def test_training_roles_are_checked_against_the_vocabulary(sources, targets, message):
    from medk2n.config import ExperimentConfig
    from medk2n.errors import ConfigError

    data = preset("tiny").to_dict()
    data["train"].update(sources=sources, targets=targets)
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict(data)
    data["train"].update(sources=["FLAIR", "adc"], targets=["dwi"])
    assert ExperimentConfig.from_dict(data).train.sources == ["flair", "adc"]


def test_trim_padding_drops_only_columns_that_are_padding_in_every_sample():
    from medk2n.train.loop import trim_padding

    batch = {
        "x": torch.rand(3, 2, 8, 8), "src": torch.tensor([[1, 0], [2, 0], [3, 0]]),
        "avail": torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]),
        "target": torch.rand(3, 4, 8, 8), "tgt": torch.tensor([[4, 5, 0, 0], [4, 0, 0, 0], [6, 0, 0, 0]]),
        "tgt_valid": torch.tensor([[1.0, 1.0, 0, 0], [1.0, 0, 0, 0], [1.0, 0, 0, 0]]),
        "mask": torch.ones(3, 8, 8), "lesion": torch.zeros(3, 8, 8),
    }
    out = trim_padding(batch)
    assert out["x"].shape[1] == out["src"].shape[1] == out["avail"].shape[1] == 1
    assert out["target"].shape[1] == out["tgt"].shape[1] == out["tgt_valid"].shape[1] == 2
    torch.testing.assert_close(out["target"], batch["target"][:, :2])
    assert out["mask"] is batch["mask"]
    full = trim_padding({**batch, "avail": torch.ones(3, 2), "tgt_valid": torch.ones(3, 4)})
    assert full["x"].shape[1] == 2 and full["target"].shape[1] == 4


def test_fit_to_budget_ends_in_the_last_stage_with_the_rate_decayed(phantom, tmp_path, monkeypatch):
    """A budget-fitted run's curriculum and decay follow the clock, not max_steps: every stage is
    trained in order and the run ends at the rate's floor, however fast the steps are. A fake
    clock that advances a fixed amount per reading keeps the test independent of the machine."""
    import time as time_module

    ticks = {"now": 1000.0, "calls": 0}

    def fake_monotonic():
        ticks["now"] += 0.05
        ticks["calls"] += 1
        return ticks["now"]

    monkeypatch.setattr(time_module, "monotonic", fake_monotonic)
    cfg = tiny_cfg()
    cfg.train.val_every = 1000
    result = train(cfg, phantom, tmp_path / "run", progress=False, budget_minutes=0.1, fit_to_budget=True)
    stages = [row["stage"] for row in result.history]
    order = ["1to1", "kto1", "1ton", "kton"]
    assert sorted(set(stages), key=order.index) == order
    assert [order.index(s) for s in stages] == sorted(order.index(s) for s in stages)
    assert result.history[-1]["lr"] < 0.1 * cfg.train.lr
    assert (tmp_path / "run" / "checkpoints" / "best" / "model.safetensors").is_file()


def test_fit_to_budget_needs_a_budget_and_a_fresh_run(phantom, tmp_path):
    from medk2n.errors import ConfigError

    with pytest.raises(ConfigError, match="needs a budget"):
        train(tiny_cfg(), phantom, tmp_path / "a", progress=False, fit_to_budget=True)
    with pytest.raises(ConfigError, match="cannot be resumed"):
        train(tiny_cfg(), phantom, tmp_path / "b", progress=False, budget_minutes=1, fit_to_budget=True, resume=True)
