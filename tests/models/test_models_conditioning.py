"""Target conditioning: a 1->N request must synthesise each target's contrast, not echo the source's.

Trained briefly on phantom slices (FLAIR -> ADC, DWI, T2, T1, PD; the tiny
preset at 32x32 to keep the run short), the synthesis asked for ADC from FLAIR
must correlate inside the brain better with the true ADC than with the FLAIR it
was given. ADC is the hard case: its contrast is roughly FLAIR's inverse (free
water bright, tissue dark), and B5 and B0 of 2026-11-27 gave "ADC" with FLAIR
contrast on the quality benchmark.

Measured 2026-12-02 at 300 steps (corr with ADC / with FLAIR; the true ADC
itself correlates 0.33 with FLAIR at this size), torch seeds 0 / 1 / 2:
- the 2026-12-01 model: 0.61 / 0.70, 0.53 / 0.74, 0.65 / 0.60 (fails seeds 0 and 1);
- this model: 0.60 / 0.56, 0.73 / 0.57, 0.67 / 0.43.
Both learn the inversion; this one sooner. At 400 steps both pass (seed 0:
0.63 / 0.51 before, 0.72 / 0.49 now), so the failure was slow learning of the
target, not a path that ignores it (docs/experiments.md, 2026-12-02). The
test keeps seed 0 at 300 steps, where the margin is smallest (0.03).
"""

import numpy as np
import pytest
import torch

from medk2n.config import LossConfig, default_normalization
from medk2n.data.dataset import SliceDataset
from medk2n.data.phantom import generate_dataset
from medk2n.losses import total_loss

from model_fixtures import seeded_model, tiny_config

SIZE, BATCH, STEPS = 32, 8, 300
TARGETS = ("adc", "dwi", "t2", "t1", "pd")


def _slices(root, subjects: int, seed: int):
    cases = generate_dataset(root, subjects=subjects, seed=seed, spacing=4.0)
    cfg = tiny_config(image_size=SIZE)
    data = SliceDataset(cases, cfg.modalities, default_normalization(), SIZE, augment=False)
    stack = []
    for case in data._cases:
        pos = {cfg.modalities[i]: j for j, i in enumerate(case.ids)}
        images = case.images.astype(np.float32) / 65535.0
        keep = case.brain.mean(axis=(1, 2)) > 0.1
        stack.append((images[[pos["flair"], *[pos[t] for t in TARGETS]]][:, keep], case.brain[keep]))
    images = np.concatenate([s[0] for s in stack], axis=1)
    brain = np.concatenate([s[1] for s in stack], axis=0)
    return torch.tensor(images).transpose(0, 1), torch.tensor(brain > 0), cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    train, _, cfg = _slices(root / "train", 3, seed=11)
    test, brain, _ = _slices(root / "test", 1, seed=12)
    ids = {m: cfg.modalities.index(m) for m in ("flair", *TARGETS)}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    model, g = seeded_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    src = torch.tensor([[ids["flair"]]]).repeat(BATCH, 1)
    for _ in range(STEPS):
        pick = torch.randint(0, len(train), (BATCH,), generator=g)
        which = torch.randint(1, 1 + len(TARGETS), (BATCH,), generator=g)
        x = train[pick, :1]
        y = train[pick, which].unsqueeze(1)
        tgt = torch.tensor([ids[TARGETS[i - 1]] for i in which.tolist()]).unsqueeze(1)
        loss, _ = total_loss(model.forward_detailed(x, src, tgt), y, tgt, model, LossConfig())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    model.eval()
    return model, test, brain, ids


def test_flair_to_adc_has_adc_contrast(trained):
    model, test, brain, ids = trained
    n = len(test)
    with torch.no_grad():
        images, _ = model(test[:, :1], torch.full((n, 1), ids["flair"]), torch.full((n, 1), ids["adc"]))
    inside = brain
    pred = images[:, 0][inside].numpy()
    with_adc = np.corrcoef(pred, test[:, 1][inside].numpy())[0, 1]
    with_flair = np.corrcoef(pred, test[:, 0][inside].numpy())[0, 1]
    truth = np.corrcoef(test[:, 1][inside].numpy(), test[:, 0][inside].numpy())[0, 1]
    print(f"\nflair->adc synthesis: corr with true ADC {with_adc:.3f}, with the FLAIR source {with_flair:.3f} "
          f"(true ADC with FLAIR: {truth:.3f})")
    assert with_adc > with_flair
    assert with_adc > 0.3
