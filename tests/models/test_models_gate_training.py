"""After a short training on synthetic two-source slices, the gates tell a noise frame from an informative one.

Data: smooth random blobs. The target (one modality) is the mean of the base
source and the auxiliary source, so the auxiliary frame carries half the
answer. In training half the samples replace the auxiliary frame with uniform
noise, and a quarter mark it absent. The tiny preset's architecture runs at
32x32 here to keep the run to seconds.

What the test asserts is the share of the auxiliary frame that reaches the
synthesis, accept x w_eff: the fusion applies it to the frame's update of the
stride-8 state, and the decoder's fine-scale paths mix the frame's pixels by it
(heads.mix_slots). Which gate carries the decision is learned. Measured at 200
steps (2026-12-03, Q's fit reaching the state with a tenth of its gradient),
share informative vs noise, seeds 0..3: 0.88, 0.80, 0.67, 0.75 vs <= 1e-4
(seed 1 decided by accept as well, 0.991 vs 0.0). With the full gradient: 0.98,
0.67, 0.72, 0.63 vs <= 1e-3; with none (Q's fit detached), dead again in 3 of 4.

The test once passed by luck of the seed: with w_eff clamped to [eps, 1-eps] and
Q regressed in linear space, 2 of 4 seeds (and seed 0 itself after a change of
summation order) ended with both gates dead, w_eff 0.999 and accept 0.5 for
both frames (share 0.4995 each): the clamp passes no gradient above 1-eps and Q
had saturated near 0 (1e-20), so dQ was 0. w_eff is now squashed, not clamped,
and Q fitted in log space (losses.quality). The test prints every gate.
"""

import pytest
import torch

from medk2n.config import LossConfig
from medk2n.losses import total_loss

from model_fixtures import seeded_model, smooth_blobs, tiny_config

SIZE, BATCH, STEPS = 32, 8, 200


def _samples(n: int, generator: torch.Generator, noise: torch.Tensor):
    base, aux = smooth_blobs(n, SIZE, generator), smooth_blobs(n, SIZE, generator)
    shown = torch.where(noise[:, None, None], torch.rand(n, SIZE, SIZE, generator=generator), aux)
    return torch.stack([base, shown], dim=1), (0.5 * base + 0.5 * aux).unsqueeze(1)


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # Without the source check: these samples carry no labels for it (the dataset's 'named_right'), and
    # what is asserted is how the gates weigh a noise frame; the check has its own tests.
    model, g = seeded_model(tiny_config(image_size=SIZE, source_check=False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    src = torch.tensor([[0, 1]]).repeat(BATCH, 1)
    tgt = torch.tensor([[2]]).repeat(BATCH, 1)
    avail = torch.ones(BATCH, 2)
    avail[:2, 1] = 0.0
    for _ in range(STEPS):
        x, y = _samples(BATCH, g, torch.rand(BATCH, generator=g) < 0.5)
        loss, _ = total_loss(model.forward_detailed(x, src, tgt, avail), y, tgt, model, LossConfig())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    return model


def _gates(model, training: bool) -> dict[str, tuple[float, float]]:
    """{gate: (mean with informative aux, mean with noise aux)} on 32 held-out slices."""
    g = torch.Generator().manual_seed(123)
    x, _ = _samples(32, g, torch.zeros(32, dtype=torch.bool))
    noisy = x.clone()
    noisy[:, 1] = torch.rand(32, SIZE, SIZE, generator=g)
    src, tgt = torch.tensor([[0, 1]]).repeat(32, 1), torch.tensor([[2]]).repeat(32, 1)
    model.train(training)
    with torch.no_grad():
        good, bad = model.forward_detailed(x, src, tgt), model.forward_detailed(noisy, src, tgt)
    stats = {name: (good.gates[name].mean().item(), bad.gates[name].mean().item()) for name in good.gates}
    stats["used"] = tuple(  # the share of the auxiliary frame in the fused state and in the decoder's pixel paths
        (o.gates["accept"][..., None, None] * o.gates["w_eff"]).mean().item() for o in (good, bad)
    )
    return stats


def test_noise_frame_gets_lower_weights_than_an_informative_one(trained):
    soft = _gates(trained, training=True)
    hard = _gates(trained, training=False)
    print("\ngates (informative, noise)\n  train-mode (soft):", soft, "\n  eval-mode:", hard)
    assert hard["used"][1] < hard["used"][0] - 0.25
    assert soft["used"][1] < soft["used"][0] - 0.25
