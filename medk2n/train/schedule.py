"""Learning-rate schedule and curriculum, both pure functions of the step.

Being functions of the global step (not of iterator state) is what makes
`--resume` continue exactly: the same step gets the same rate and stage.
"""

from __future__ import annotations

import math

import torch

from medk2n.data.dataset import STAGES as _STAGE_KINDS

# Med-K2N curriculum: 1->1, then k->1, 1->n, k->n (one source and one target
# first, so the encoder and heads learn before the fusion has anything to fuse).
STAGES = tuple(_STAGE_KINDS)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base rate, then cosine decay to 5% of it."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def curriculum_stage(step: int, total_steps: int, starts: list[float]) -> str:
    """Stage active at `step`; `starts[i]` is the fraction of training where STAGES[i] begins."""
    if len(starts) != len(STAGES) or list(starts) != sorted(starts):
        raise ValueError(f"curriculum needs {len(STAGES)} increasing start fractions, got {starts}")
    fraction = step / max(1, total_steps)
    stage = STAGES[0]
    for name, start in zip(STAGES, starts):
        if fraction >= start:
            stage = name
    return stage
