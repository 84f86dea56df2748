import struct
import sys

import numpy as np
import pytest

from medk2n.errors import MedK2NError
from medk2n.eval.uncertainty import (
    RETAINED,
    ause,
    coverage,
    save_risk_coverage,
    sparsification,
    uncertainty_scores,
)

N = 20_000


@pytest.fixture
def error() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(N)  # signed, as pred - truth


def test_coverage_known_case():
    error = np.array([-1.0, 2.0, -5.0, 0.5, 3.0])
    halfwidth = np.array([1.0, 1.0, 6.0, 0.25, 3.0])  # inside: 1 (edge), 5, 3 (edge)
    assert coverage(error, halfwidth) == pytest.approx(3 / 5)
    assert coverage(error, np.zeros(5)) == 0.0
    with pytest.raises(ValueError):
        coverage(error, halfwidth[:4])


def test_sparsification_by_hand():
    error = np.array([1.0, -2.0, 3.0, -4.0])
    curves = sparsification(error, np.array([4.0, 3.0, 2.0, 1.0]), fractions=[1.0, 0.5, 0.25])
    assert curves["retained"] == [1.0, 0.5, 0.25]
    assert curves["model"] == pytest.approx([2.5, 3.5, 4.0])  # keeps the largest errors: worst case
    assert curves["oracle"] == pytest.approx([2.5, 1.5, 1.0])
    assert curves["random"] == pytest.approx(2.5)


def test_ties_are_averaged_not_resolved_optimistically():
    # Voxel 0 is alone at the lowest uncertainty; the other three tie. Keeping two voxels
    # takes voxel 0 plus the tie group's mean error (6), not its smallest (3).
    error = np.array([0.0, 3.0, 6.0, 9.0])
    curves = sparsification(error, np.array([0.0, 1.0, 1.0, 1.0]), fractions=[0.5])
    assert curves["model"] == pytest.approx([3.0])
    assert curves["oracle"] == pytest.approx([1.5])


def test_perfect_uncertainty_matches_oracle(error):
    curves = sparsification(error, np.abs(error))
    assert len(curves["retained"]) == len(RETAINED)
    assert curves["model"] == pytest.approx(curves["oracle"])
    assert curves["model"][0] == pytest.approx(curves["random"])
    assert ause(curves) == pytest.approx(0.0, abs=1e-12)


def test_random_uncertainty_is_flat_and_scores_worse_than_oracle(error):
    curves = sparsification(error, np.random.default_rng(1).random(N))
    model = np.asarray(curves["model"])
    assert np.allclose(model, curves["random"], rtol=0.1)
    assert curves["oracle"][-1] < 0.1 * curves["random"]  # the oracle curve does fall steeply
    assert 0.3 < ause(curves) < 0.8


def test_inverted_uncertainty_is_worse_than_random(error):
    random_ause = ause(sparsification(error, np.random.default_rng(2).random(N)))
    inverted = sparsification(error, -np.abs(error))
    assert np.all(np.diff(inverted["model"]) >= 0)  # removing the best voxels first raises the error
    assert ause(inverted) > random_ause + 0.3


def test_constant_uncertainty_gives_random_curve_not_oracle(error):
    curves = sparsification(error, np.full(N, 0.7))
    assert np.allclose(curves["model"], curves["random"], rtol=1e-9)
    assert ause(curves) > 0.3


def test_ause_is_unitless(error):
    u = np.abs(error) + np.random.default_rng(3).random(N)
    assert ause(sparsification(1000 * error, u)) == pytest.approx(ause(sparsification(error, u)))


def test_sparsification_rejects_bad_input(error):
    with pytest.raises(ValueError):
        sparsification(error, np.full(N, np.nan))
    with pytest.raises(ValueError):
        sparsification(error, np.abs(error), fractions=[0.0, 0.5])


def test_uncertainty_scores_keys_and_spearman_sign(error):
    good = np.abs(error) + 0.3 * np.random.default_rng(4).random(N)
    scores = uncertainty_scores(error, good)
    assert set(scores) == {"uncertainty_spearman", "ause"}
    assert scores["uncertainty_spearman"] > 0.8
    bad = uncertainty_scores(error, -good, halfwidth=np.full(N, 1.645))
    assert set(bad) == {"uncertainty_spearman", "ause", "coverage"}
    assert bad["uncertainty_spearman"] < -0.8
    assert bad["ause"] > scores["ause"]
    assert bad["coverage"] == pytest.approx(0.90, abs=0.01)  # standard normal within +-1.645
    assert all(isinstance(v, float) for v in bad.values())


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_save_risk_coverage_writes_legible_png(tmp_path, error):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(5)
    curves = {
        "T2": sparsification(error, np.abs(error) + rng.random(N)),
        "FLAIR": {**sparsification(error, rng.random(N)), "units": "HU"},
    }
    out = save_risk_coverage(curves, tmp_path / "plots" / "risk.png", title="phantom")
    assert out == tmp_path / "plots" / "risk.png"
    assert out.stat().st_size > 20_000
    width, height = _png_size(out)
    assert width >= 900 and 350 <= height <= width  # two panels side by side
    assert [p.name for p in out.parent.iterdir()] == ["risk.png"]  # no temporary left behind


def test_save_risk_coverage_without_matplotlib_names_the_extra(tmp_path, error, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(MedK2NError, match=r"medk2n\[data\]"):
        save_risk_coverage({"T2": sparsification(error, np.abs(error))}, tmp_path / "r.png")
    assert not (tmp_path / "r.png").exists()


def test_reports_without_matplotlib_keep_the_metrics_and_say_so(tmp_path, monkeypatch, capsys):
    """A base install plus eval: the metrics are written, the pictures skipped with one note."""
    import importlib.util

    from medk2n.eval.evaluate import EvalResult
    from medk2n.eval.report import write_reports

    result = EvalResult(["flair"], ["dwi"])
    result.rows.append({"method": "model", "case": "c1", "target": "dwi", "masked_psnr": 20.0})
    result.errors["dwi"] = [(np.abs(np.random.default_rng(0).normal(size=500)), np.ones(500))]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    paths = write_reports(result, tmp_path / "metrics.json", "t")
    assert set(paths) == {"json", "csv", "md"} and all(p.is_file() for p in paths.values())
    assert "matplotlib is not installed" in capsys.readouterr().err
