"""`medk2n-bench preprocess`: both mask implementations timed on the same volumes, and compared voxel by voxel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medk2n.benchmarks.preprocess import mask_implementation, markdown, run_preprocess, write_outputs
from medk2n.data import mask as mask_module
from medk2n.errors import ConfigError


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from medk2n.data.phantom import generate_dataset

    root = tmp_path_factory.mktemp("phantom")
    generate_dataset(root, subjects=2, seed=4, spacing=6.0)
    return root


def test_each_implementation_really_runs(monkeypatch):
    calls = []
    monkeypatch.setattr(mask_module, "largest_component_numpy", lambda m: calls.append("numpy") or m)
    with mask_implementation("numpy"):
        mask_module.largest_component(mask_module.np.ones((3, 3, 3), bool))
    with mask_implementation("scipy"):
        mask_module.largest_component(mask_module.np.ones((3, 3, 3), bool))
    assert calls == ["numpy"]
    monkeypatch.setattr(mask_module, "_ndimage", lambda: None)
    with pytest.raises(ConfigError, match="scipy is not installed"), mask_implementation("scipy"):
        pass


def test_times_both_and_checks_the_masks_agree(phantom: Path, tmp_path: Path):
    results = run_preprocess(phantom, ["flair", "adc"], size=32, cases=5, repeats=1)
    assert [r["case"] for r in results["cases"]] == ["sub-000", "sub-001"]
    for row in results["cases"]:
        assert row["identical"] is True and all(n > 0 for n in row["masked_voxels"])
        assert set(row["mask_ms"]) == set(row["prepare_ms"]) == {"numpy", "scipy"}
        assert all(v > 0 for v in [*row["mask_ms"].values(), *row["prepare_ms"].values()])
    json_path, md_path = write_outputs(results, tmp_path)
    assert json.loads(json_path.read_text())["settings"]["sources"] == ["flair", "adc"]
    table = markdown(results)
    assert table == md_path.read_text() and table.count("| sub-00") == 2 and "| yes |" in table
    with pytest.raises(ConfigError, match="no case has every source"):
        run_preprocess(phantom, ["flair", "swi"], cases=1, repeats=1)
