import torch

from medk2n.models.gates import EffiWeightNet, PreWeightNet, ThresholdNet, conflict_statistics
from medk2n.models.prototypes import TaskPrototypes

D, M = 16, 6


def _maps(scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    return scale * torch.randn(M, D, 4, 4, generator=torch.Generator().manual_seed(seed))


def test_preweight_is_a_probability_per_pair():
    torch.manual_seed(0)
    net = PreWeightNet(D)
    for scale in (0.01, 1.0, 1e3):
        w = net(_maps(scale, 1), _maps(scale, 2))
        assert w.shape == (M, 1) and bool(((w >= 0) & (w <= 1)).all())


def test_threshold_stays_in_its_band_even_for_extreme_inputs():
    torch.manual_seed(0)
    net = ThresholdNet(D, num_modalities=7)
    src = torch.arange(M) % 7
    tgt = (src + 1) % 7
    for scale in (0.0, 1.0, 1e4, -1e4):
        w = torch.full((M, 1), 0.5)
        conflict = torch.full((M, 2), scale)
        tau = net(w, _maps(abs(scale) + 1e-3), conflict, src, tgt)
        assert tau.shape == (M, 1)
        assert bool(((tau >= 0.05 - 1e-6) & (tau <= 0.9 + 1e-6)).all()), tau  # float32 rounding of 0.05 + 0.85


def test_threshold_prior_depends_on_the_modality_pair():
    torch.manual_seed(0)
    net = ThresholdNet(D, num_modalities=7)
    args = (torch.full((1, 1), 0.5), _maps()[:1], torch.zeros(1, 2))
    assert not torch.equal(net(*args, torch.tensor([0]), torch.tensor([2])), net(*args, torch.tensor([1]), torch.tensor([2])))


def test_effiweight_is_spatial_and_clamped():
    torch.manual_seed(0)
    eps = 1e-3
    net = EffiWeightNet(D, eps=eps)
    for scale in (1.0, 1e4, -1e4):
        w_eff = net(torch.rand(M, 1), torch.rand(M, 1), _maps(), _maps(scale), torch.randn(M, D), torch.randn(M, D))
        assert w_eff.shape == (M, 1, 4, 4)
        assert bool(((w_eff >= eps) & (w_eff <= 1 - eps)).all())
    varied = net(torch.rand(M, 1), torch.rand(M, 1), _maps(), _maps(), torch.randn(M, D), torch.randn(M, D))
    assert varied.std() > 0


def test_conflict_statistics_separate_agreeing_from_conflicting_frames():
    base = _maps()
    same = conflict_statistics(base, 2 * base)
    opposite = conflict_statistics(base, -base)
    torch.testing.assert_close(same[:, 0], torch.ones(M), atol=1e-4, rtol=0)
    torch.testing.assert_close(opposite[:, 0], -torch.ones(M), atol=1e-4, rtol=0)
    assert conflict_statistics(base, _maps(seed=5))[:, 1].min() > 0.1


def test_task_memory_readout_depends_on_the_task():
    torch.manual_seed(0)
    memory = TaskPrototypes(num_tasks=7, dim=D, slots=8)
    x = _maps()[:2]
    a = memory.read(x, torch.tensor([0, 0]))
    b = memory.read(x, torch.tensor([3, 3]))
    assert a.shape == x.shape and not torch.allclose(a, b)
    torch.testing.assert_close(memory(x, torch.tensor([0, 0])), x + a)
