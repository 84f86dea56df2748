import json

import pytest

from medk2n.config import preset
from medk2n.models.summary import main, model_summary


def test_model_summary_counts_parameters_and_flops():
    cfg = preset("tiny").model
    row = model_summary(cfg, k=2, n=4)
    assert row["arch"] == "medk2n" and row["encoder"] == "hiera_micro" and row["image_size"] == 64
    assert 1e5 < row["params"] < 1e7 and row["trainable_params"] == row["params"]
    assert row["gflops_per_slice"] > 0
    # More targets cost more: the heads and fusion run per target.
    assert model_summary(cfg, k=2, n=1)["gflops_per_slice"] < row["gflops_per_slice"]


def test_cli_prints_json_for_the_tiny_preset(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "tiny", "--json"])
    assert exit_info.value.code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["preset"], r["arch"]) for r in rows] == [("tiny", "medk2n"), ("tiny", "unet")]


def test_cli_table_and_help(capsys):
    with pytest.raises(SystemExit):
        main(["--preset", "tiny", "--arch", "unet"])
    out = capsys.readouterr().out
    assert "GFLOPs" in out and "unet" in out and "medk2n" not in out.split("\n", 1)[1]
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
