"""Held-out validation during training: masked PSNR/SSIM on fixed K->N draws.

The draws are seeded by item index only, so every validation in a run (and in
a resumed run) scores the same slices and tasks and `best` is comparable.
"""

from __future__ import annotations

import numpy as np
import torch

from medk2n.config import ExperimentConfig
from medk2n.data.dataset import SliceDataset
from medk2n.eval.metrics import psnr, ssim

MAX_VAL_SLICES = 64


@torch.no_grad()
def validate(model: torch.nn.Module, val_set: SliceDataset, cfg: ExperimentConfig, device: torch.device,
             batch_size: int = 16) -> dict[str, float]:
    model.eval()
    count = min(len(val_set), MAX_VAL_SLICES)
    picks = np.linspace(0, len(val_set) - 1, count).round().astype(int) if count else []
    items = [val_set.sample(int(i), stage="kton", rng=np.random.default_rng([cfg.train.seed, int(i)])) for i in picks]
    scores = {"masked_psnr": [], "masked_ssim": [], "psnr": []}
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = {k: torch.as_tensor(np.stack([it[k] for it in chunk])).to(device) for k in chunk[0]}
        images, _ = model(batch["x"], batch["src"], batch["tgt"], batch["avail"])
        pred, truth = images.float().cpu().numpy(), batch["target"].cpu().numpy()
        valid, masks = batch["tgt_valid"].cpu().numpy() > 0, batch["mask"].cpu().numpy() > 0
        for b in range(pred.shape[0]):
            if not masks[b].any():
                continue
            for n in np.flatnonzero(valid[b]):
                scores["masked_psnr"].append(min(psnr(pred[b, n], truth[b, n], masks[b]), 100.0))
                scores["masked_ssim"].append(ssim(pred[b, n], truth[b, n], masks[b]))
                scores["psnr"].append(min(psnr(pred[b, n], truth[b, n]), 100.0))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in scores.items()}
