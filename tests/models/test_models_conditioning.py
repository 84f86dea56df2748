"""Target conditioning: a 1->N request must synthesise each target's contrast, not echo the source's.

Trained briefly on phantom slices (FLAIR -> ADC, DWI, T2, T1, PD; the tiny
preset at 32x32 to keep the run short), the synthesis asked for ADC from FLAIR
must correlate inside the brain better with the true ADC than with the FLAIR it
was given. ADC is the hard case: its contrast is roughly FLAIR's inverse (free
water bright, tissue dark), and B5 and B0 of 2026-11-27 gave "ADC" with FLAIR
contrast on the quality benchmark.

Measured 2026-12-02 at 300 steps (corr with ADC / with FLAIR; the true ADC
itself correlates 0.33 with FLAIR at this size), torch seeds 0 / 1 / 2:
- the 2026-12-01 model: 0.61 / 0.70, 0.54 / 0.75, 0.65 / 0.61 (fails seeds 0 and 1);
- this model: 0.60 / 0.58, 0.73 / 0.59, 0.66 / 0.44.
Both learn the inversion; this one sooner. At 400 steps both pass (seed 0:
0.64 / 0.52 before, 0.70 / 0.45 now), so the failure was slow learning of the
target, not a path that ignores it (docs/experiments.md, 2026-12-02). The
test keeps seed 0 at 300 steps, where the margin is smallest (0.02).
"""

import numpy as np
import pytest
import torch

from medk2n.config import LossConfig, default_normalization
from medk2n.data.cases import discover_dataset, load_case
from medk2n.data.phantom import generate_dataset
from medk2n.data.preprocess import prepare_case
from medk2n.losses import total_loss

from model_fixtures import seeded_model, tiny_config

SIZE, BATCH, STEPS = 32, 8, 300
TARGETS = ("adc", "dwi", "t2", "t1", "pd")


def _slices(root, subjects: int, seed: int):
    """[S, 1+len(TARGETS), H, W] model-space slices (FLAIR first) with >10 % brain, their brain masks, the config."""
    generate_dataset(root, subjects=subjects, seed=seed, spacing=4.0)
    cfg = tiny_config(image_size=SIZE)
    names = ["flair", *TARGETS]
    images, brain = [], []
    for case in discover_dataset(root):
        prepared = prepare_case(load_case(case, names), default_normalization(), SIZE)
        keep = prepared.brain.mean(axis=(1, 2)) > 0.1
        images.append(np.stack([prepared.slices[m][keep] for m in names], axis=1))
        brain.append(prepared.brain[keep])
    return torch.tensor(np.concatenate(images)), torch.tensor(np.concatenate(brain)), cfg


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
