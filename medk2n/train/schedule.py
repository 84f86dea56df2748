"""Learning-rate schedule and curriculum, both functions of training progress.

Progress is normally the step over max_steps: a pure function of the global
step (not of iterator state), which is what makes `--resume` continue exactly:
the same step gets the same rate and stage. A run fitted to a wall-clock
budget (`BudgetProgress`) measures progress as the spent share of the budget
instead, so its curriculum and its cosine decay finish when the budget does,
whatever each stage's steps cost.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from medk2n.data.dataset import STAGES as _STAGE_KINDS

# Med-K2N curriculum: 1->1, then k->1, 1->n, k->n (one source and one target
# first, so the encoder and heads learn before the fusion has anything to fuse).
STAGES = tuple(_STAGE_KINDS)


@dataclass(frozen=True)
class BudgetProgress:
    """Progress = the share of a wall-clock budget spent since `started` (a time.monotonic() reading).

    The monotonic clock is system-wide, so data-loader worker processes read the
    same progress as the training process. Not resumable: a resumed run would
    start a new budget.
    """

    started: float
    seconds: float

    def __call__(self, step: int) -> float:
        return min(1.0, max(0.0, (time.monotonic() - self.started) / max(1e-9, self.seconds)))


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  progress: Callable[[int], float] | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base rate, then cosine decay to 5% of it at the end of training.

    Without `progress` the decay runs from step `warmup_steps` to `total_steps`;
    with it, the decay follows progress(step) in [0, 1] (after the warm-up steps).
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        if progress is None:
            done = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        else:
            done = progress(step)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * done))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def curriculum_stage(step: int, total_steps: int, starts: list[float]) -> str:
    """Stage active at `step`; `starts[i]` is the fraction of training where STAGES[i] begins."""
    return stage_at(step / max(1, total_steps), starts)


def stage_at(fraction: float, starts: list[float]) -> str:
    """Stage active at a progress `fraction` of training."""
    if len(starts) != len(STAGES) or list(starts) != sorted(starts):
        raise ValueError(f"curriculum needs {len(STAGES)} increasing start fractions, got {starts}")
    stage = STAGES[0]
    for name, start in zip(STAGES, starts):
        if fraction >= start:
            stage = name
    return stage
