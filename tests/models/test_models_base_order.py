"""The fusion's base frame chosen by predicted quality (model.base_by_quality).

The sequential fusion gates every frame but the first. Taken in request order,
a degraded first source is the ungated base and goes straight through
(docs/experiments.md: ghosting on FLAIR cost B5 1.21 dB as the first source,
0.30 dB as the second). Ordered by quality, the fusion must (1) not depend on
the order the sources are named in, and (2) after a short training in which any
source may be noise, put the informative frame first and turn the noise down
wherever the request names it.
"""

import pytest
import torch

from medk2n.config import LossConfig
from medk2n.losses import total_loss

from model_fixtures import seeded_model, smooth_blobs, tiny_config

SIZE, BATCH, STEPS = 32, 8, 400


@pytest.mark.parametrize("ordered", [True, False])
def test_quality_order_makes_the_synthesis_independent_of_the_source_order(make_model, make_inputs, ordered):
    model = make_model(ablation="B5", base_by_quality=ordered).eval()
    x, src, tgt = make_inputs(b=2, k=2, n=3)
    avail = torch.ones(2, 2)
    with torch.no_grad():
        first = model.forward_detailed(x, src, tgt, avail)
        second = model.forward_detailed(x.flip(1), src.flip(1), tgt, avail)
    same = torch.allclose(first.images, second.images, atol=1e-5) and torch.allclose(first.scale, second.scale, atol=1e-5)
    # Request order (the default) is order-dependent, which is what makes this test able to fail.
    assert same == ordered


def test_quality_order_is_a_permutation_that_puts_absent_frames_last(make_model):
    model = make_model(ablation="B5", base_by_quality=True).eval()
    fusion = model.fusion
    m, k, d = 4, 3, model.task_embed.embedding_dim
    feats = torch.randn(m, k, d, 4, 4, generator=torch.Generator().manual_seed(0))
    avail = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    c_task = torch.randn(m, d, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        order = fusion.quality_order(feats, avail, c_task)
        score = torch.stack([fusion._score(feats[:, j], c_task) for j in range(k)], dim=1)
    assert torch.equal(order.sum(dim=1), torch.ones(m, k)) and torch.equal(order.sum(dim=2), torch.ones(m, k))
    for row in range(m):
        slots = order[row].argmax(dim=1).tolist()  # slot fused at position 0, 1, 2
        present = [j for j in slots if avail[row, j] > 0]
        assert slots[: len(present)] == present  # every present frame before every absent one
        assert score[row, present].tolist() == sorted(score[row, present].tolist())  # best predicted first


def _samples(n: int, generator: torch.Generator):
    """Two sources, each blob images; the target is their mean. In about half the samples one source, either slot,
    is uniform noise; in a quarter of all samples the second slot is absent (so slot 0 alone, noise or not)."""
    a, b = smooth_blobs(n, SIZE, generator), smooth_blobs(n, SIZE, generator)
    x = torch.stack([a, b], dim=1)
    noisy = torch.rand(n, generator=generator) < 0.5
    slot = torch.randint(0, 2, (n,), generator=generator)
    for i in torch.nonzero(noisy).flatten().tolist():
        x[i, slot[i]] = torch.rand(SIZE, SIZE, generator=generator)
    avail = torch.ones(n, 2)
    avail[torch.rand(n, generator=generator) < 0.25, 1] = 0.0
    return x, (0.5 * a + 0.5 * b).unsqueeze(1), avail


@pytest.fixture(scope="module")
def trained():
    return train_ordered_model(STEPS)


def train_ordered_model(steps: int) -> torch.nn.Module:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # Without the source check: no labels for it here, and the order under test is the one Q gives.
    model, g = seeded_model(tiny_config(image_size=SIZE, base_by_quality=True, source_check=False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    src, tgt = torch.tensor([[0, 1]]).repeat(BATCH, 1), torch.tensor([[2]]).repeat(BATCH, 1)
    for _ in range(steps):
        x, y, avail = _samples(BATCH, g)
        loss, _ = total_loss(model.forward_detailed(x, src, tgt, avail), y, tgt, model, LossConfig())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    return model.eval()


def test_a_noise_frame_named_first_is_not_the_base(trained):
    """Measured 2026-12-02, seed 0: the clean frame is the base in 0.78 of the samples after 200 steps, 1.00
    after 400. The later (noise) frame's share stays high here (0.98): on this toy, a lone clean frame gives a
    larger error (0.097) than the pair (0.089), so nothing teaches the gates to refuse it; the gates' own job is
    tested in test_models_gate_training.py."""
    g = torch.Generator().manual_seed(123)
    clean, noise = smooth_blobs(32, SIZE, g), torch.rand(32, SIZE, SIZE, generator=g)
    x = torch.stack([noise, clean], dim=1)  # the request names the noise first
    src, tgt = torch.tensor([[0, 1]]).repeat(32, 1), torch.tensor([[2]]).repeat(32, 1)
    orders = []  # the fusion's own order, as the forward pass used it
    hook = trained.fusion.register_forward_hook(lambda module, inputs, result: orders.append(result.order))
    with torch.no_grad():
        out = trained.forward_detailed(x, src, tgt, torch.ones(32, 2))
    hook.remove()
    order = orders[0]
    clean_first = order[:, 0, 1].mean().item()
    noise_share = (out.gates["accept"][..., None, None] * out.gates["w_eff"]).mean().item()
    print(f"\nclean frame taken as base in {clean_first:.2f} of samples; share of the later (noise) frame {noise_share:.3f}")
    assert clean_first >= 0.9
