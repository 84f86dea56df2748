"""torchrun runs the same `medk2n-train` command line on several processes (Gloo on CPU here)."""

import json
import subprocess
import sys

import pytest

from medk2n.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def test_torchrun_two_cpu_processes_train_and_checkpoint_once(tmp_path):
    from medk2n.data.phantom import generate_dataset

    data = tmp_path / "data"
    generate_dataset(data, subjects=3, seed=3, spacing=4.0)
    config = tmp_path / "ddp.yaml"
    config.write_text(
        "base: tiny\nmodel:\n  image_size: 32\n"
        "train:\n  batch_size: 2\n  val_every: 2\n  warmup_steps: 1\n  val_fraction: 0.34\n"
    )
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "medk2n.train.cli", "--config", str(config), "--data", str(data), "--out", str(out),
           "--max-steps", "4", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={"OMP_NUM_THREADS": "1", **__import__("os").environ})
    assert done.returncode == 0, done.stderr[-3000:]
    _, cfg, meta = load_checkpoint(out / "checkpoints" / "last")
    assert meta["step"] == 4 and cfg.model.image_size == 32
    # Rank 0 alone logs: one header and one row per logged validation, not two.
    val_rows = (out / "logs" / "val.csv").read_text().strip().splitlines()
    assert val_rows[0].startswith("step") and [r.split(",")[0] for r in val_rows[1:]] == ["2", "4"]
    assert json.loads((out / "checkpoints" / "best" / "config.json").read_text())["training"]["step"] in (2, 4)
