"""The training loop: curriculum batches -> Med-K2N -> eq. 14 loss -> AdamW.

Everything random is a function of (seed, step), so `--resume` replays the
exact batch, stage, learning rate and loss a continuous run would have seen.
Checkpoints (`last` every validation, `best` by held-out masked PSNR) are
written by rank 0 only and atomically.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from medk2n.config import ExperimentConfig
from medk2n.data.cases import case_fingerprint, discover_dataset
from medk2n.data.dataset import SliceDataset, split_cases
from medk2n.errors import ConfigError, DataError
from medk2n.losses import total_loss
from medk2n.models import build_model
from medk2n.train import checkpoint as ckpt
from medk2n.train.distributed import DistContext, all_reduce_mean, any_rank, setup, teardown
from medk2n.train.logger import RunLogger
from medk2n.train.output_scales import fit_output_scales
from medk2n.train.schedule import STAGES, BudgetProgress, curriculum_stage, stage_at, warmup_cosine
from medk2n.train.validate import validate


UNBOUNDED_STEPS = 10**9  # max_steps of a run that the wall-clock budget ends


@dataclass
class TrainResult:
    step: int
    last_loss: float
    best_metric: float
    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: str | None = None  # what ended the run before its schedule did (None: it ran to the end)


class DetailedForward(torch.nn.Module):
    """Routes `forward_detailed` through `__call__` so DDP's gradient hooks see it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, src, tgt, avail):
        return self.model.forward_detailed(x, src, tgt, avail)


class StepBatches(Sampler):
    """Yields, for each step from `start`, this rank's share of the global batch as (index, step, stage).

    A `focus_fraction` of every global batch (rounded) is drawn from `focus`
    (the slices a lesion mask covers), the rest uniformly from all slices.
    The curriculum stage is decided here, in the training process, when the
    step's batch is drawn (`stage_of(step)`), and kept in `stages` for the log.
    """

    def __init__(self, size: int, batch: int, seed: int, start: int, stop: int, ctx: DistContext,
                 focus: np.ndarray | None = None, focus_fraction: float = 0.0, stage_of=None):
        self.size, self.batch, self.seed = size, batch, seed
        self.start, self.stop, self.ctx = start, stop, ctx
        self.focus = np.asarray(focus if focus is not None else [], dtype=np.int64)
        self.focus_fraction = float(focus_fraction)
        self.stage_of = stage_of or (lambda step: STAGES[-1])
        self.stages: dict[int, str] = {}

    def __iter__(self):
        global_batch = self.batch * self.ctx.world_size
        n_focus = int(round(self.focus_fraction * global_batch)) if len(self.focus) else 0
        n_plain = global_batch - n_focus
        for step in range(self.start, self.stop):
            rng = np.random.default_rng([self.seed, step])
            picks = rng.choice(self.size, size=n_plain, replace=n_plain > self.size)
            if n_focus:
                focus = rng.choice(self.focus, size=n_focus, replace=n_focus > len(self.focus))
                # Interleaved, so every rank's share holds its part of the focus draws.
                picks = rng.permutation(np.concatenate([picks, focus]))
            mine = picks[self.ctx.rank :: self.ctx.world_size]
            stage = self.stages[step] = self.stage_of(step)
            yield [(int(i), step, stage) for i in mine]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


class CurriculumItems(Dataset):
    """Draws each item's sources/targets for the stage its step was given, seeded by (seed, step, index)."""

    def __init__(self, slices: SliceDataset, seed: int):
        self.slices, self.seed = slices, seed

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, key: tuple[int, int, str]) -> dict[str, np.ndarray]:
        index, step, stage = key
        rng = np.random.default_rng([self.seed, step, index])
        return self.slices.sample(index, stage=stage, rng=rng)


def train(
    cfg: ExperimentConfig,
    data_dir: str | Path,
    run_dir: str | Path,
    max_steps: int | None = None,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
    budget_minutes: float | None = None,
    stop_at_step: int | None = None,
    fit_to_budget: bool = False,
) -> TrainResult:
    """Train to `max_steps` (or the config's).

    `budget_minutes` and `stop_at_step` end the run early, validated and saved,
    exactly as SIGTERM does, without changing the schedule: a later `--resume`
    then continues the same cosine curve and curriculum.

    `fit_to_budget` instead spreads the curriculum and the cosine decay over
    the budget (schedule.BudgetProgress): the run ends with the last stage
    trained and the rate decayed, however many steps that turns out to be.
    Equal-budget comparisons need this; a step-count schedule fitted from a
    few early steps ends at a different point of its curve for each method,
    since the curriculum's later stages cost more per step than its first.
    """
    if fit_to_budget and not budget_minutes:
        raise ConfigError("fitting the schedule to a budget needs a budget (--budget-minutes)")
    if fit_to_budget and resume:
        raise ConfigError("a schedule fitted to a wall-clock budget cannot be resumed; start a new run")
    ctx = setup(device)
    deadline = time.monotonic() + 60.0 * budget_minutes if budget_minutes else math.inf
    try:
        return _train(cfg, Path(data_dir), Path(run_dir), max_steps, resume, ctx, progress, deadline,
                      stop_at_step, fit_to_budget)
    finally:
        teardown(ctx)


def _train(cfg, data_dir, run_dir, max_steps, resume, ctx: DistContext, progress, deadline,
           stop_at_step, fit_to_budget=False) -> TrainResult:
    tc = cfg.train
    if fit_to_budget:
        max_steps = UNBOUNDED_STEPS  # the deadline ends the run
    if max_steps is not None:
        tc.max_steps = int(max_steps)
    state = ckpt.load_trainer_state(run_dir / "checkpoints" / "last") if resume else None
    if resume and state is None:
        raise DataError(f"{run_dir}: --resume given but no checkpoints/last with trainer state")
    if resume:
        cfg, _ = ckpt.read_checkpoint_config(run_dir / "checkpoints" / "last")
        if max_steps is not None:
            cfg.train.max_steps = int(max_steps)
        tc = cfg.train
    torch.manual_seed(tc.seed + ctx.rank)

    train_set, val_set, train_cases = _datasets(cfg, data_dir)
    split = split_record(train_cases, val_set.case_names)
    if state is None and tc.standardize_outputs:
        fit_output_scales(cfg, train_cases)
    model = _model(cfg, ctx, run_dir if resume else None)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=tc.lr, weight_decay=tc.weight_decay
    )
    budget = None  # a step schedule; else progress is the spent share of the wall-clock budget
    if fit_to_budget:
        now = time.monotonic()
        budget = BudgetProgress(started=now, seconds=max(1e-3, deadline - now))
    scheduler = warmup_cosine(optimizer, tc.warmup_steps, tc.max_steps, budget)
    start, best = 0, -math.inf
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, best = int(state["step"]), float(state["best"])

    forward = DetailedForward(model)
    if ctx.enabled:
        # Early curriculum stages (one source) leave the fusion nets unused.
        forward = torch.nn.parallel.DistributedDataParallel(
            forward, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    batch_sampler = StepBatches(len(train_set), tc.batch_size, tc.seed, start, tc.max_steps, ctx,
                                focus=train_set.lesion_indices, focus_fraction=tc.lesion_oversample,
                                stage_of=lambda step: curriculum_stage(step, tc.max_steps, tc.curriculum)
                                if budget is None else stage_at(budget(step), tc.curriculum))
    loader = DataLoader(
        CurriculumItems(train_set, tc.seed),
        batch_sampler=batch_sampler,
        num_workers=tc.num_workers,
        pin_memory=ctx.device.type == "cuda",
    )
    logger = RunLogger(run_dir, enabled=ctx.is_main, total=None if fit_to_budget else tc.max_steps, start=start,
                       progress=progress)
    amp = _autocast(tc.amp, ctx.device)
    scaler = torch.amp.GradScaler("cuda", enabled=ctx.device.type == "cuda" and tc.amp == "fp16")
    stop = {"flag": False, "reason": None}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True, reason="SIGTERM"))

    step, loss_value, history = start, float("nan"), []
    try:
        model.train()
        # Starting the loader draws its base seed from torch's global generator; the run being
        # resumed drew it at its own start. Restore the saved state only after that draw, so
        # every later draw (the U-Net's modality dropout) replays the uninterrupted run.
        batches = iter(loader)
        if state is not None:
            torch.set_rng_state(state["torch_rng"])
        for batch in batches:
            t0 = time.perf_counter()
            batch = trim_padding({k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()})
            loss_value, parts = _step(forward, model, batch, cfg, optimizer, scaler, amp)
            scheduler.step()
            step += 1
            row = {"step": step, "loss": loss_value, **parts, "lr": scheduler.get_last_lr()[0],
                   "stage": batch_sampler.stages.pop(step - 1),
                   "slices_per_s": batch["x"].shape[0] * ctx.world_size / (time.perf_counter() - t0)}
            history.append(row)
            logger.log_train(row, every=tc.log_every)
            if time.monotonic() > deadline:
                stop.update(flag=True, reason=stop["reason"] or "the wall-clock budget")
            if stop_at_step is not None and step >= stop_at_step:
                stop.update(flag=True, reason=stop["reason"] or f"stop_at_step={stop_at_step}")
            stop["flag"] = any_rank(stop["flag"], ctx)
            if step % tc.val_every == 0 or step == tc.max_steps or stop["flag"]:
                metrics = validate(model, val_set, cfg, ctx.device)
                score = all_reduce_mean(metrics["masked_psnr"], ctx)
                logger.log_val(step, metrics)
                status = _schedule_status(step, tc.max_steps, stop, fit_to_budget)
                if ctx.is_main:
                    best = _save(run_dir, model, cfg, optimizer, scheduler, step, best, score, metrics,
                                 subjects=split, status=status)
                model.train()
            if stop["flag"]:
                break
    finally:
        signal.signal(signal.SIGTERM, previous)
        logger.close()
    status = _schedule_status(step, tc.max_steps, stop, fit_to_budget)
    return TrainResult(step=step, last_loss=loss_value, best_metric=best, run_dir=run_dir, history=history,
                       stopped_early=None if status["schedule_complete"] else status.get("stopped_by", "interrupted"))


def _schedule_status(step: int, max_steps: int, stop: dict, fit_to_budget: bool) -> dict:
    """Whether the checkpoint at `step` ends its schedule, and what stopped the run if something cut it short
    (`stopped_by`): recorded with the checkpoint, so every report made from it can say so. A snapshot
    taken on the way (`best`) is incomplete but was not cut short."""
    if fit_to_budget:
        done = stop["flag"] and stop["reason"] == "the wall-clock budget"
        status = {"schedule": "fitted to the wall-clock budget", "max_steps": None, "schedule_complete": done}
    else:
        status = {"schedule": "steps", "max_steps": max_steps, "schedule_complete": step >= max_steps}
    if not status["schedule_complete"] and stop["flag"]:
        status["stopped_by"] = stop["reason"] or "a stop request"
    return status


def _datasets(cfg: ExperimentConfig, data_dir: Path) -> tuple[SliceDataset, SliceDataset, list]:
    """Training and validation slices, and the training cases (split once, by subject)."""
    cases = discover_dataset(data_dir)
    if len(cases) < 2:
        raise DataError(f"{data_dir}: need at least 2 usable cases (one for validation), found {len(cases)}")
    train_cases, val_cases = split_cases(cases, cfg.train.val_fraction, cfg.train.seed)
    common = dict(
        modalities=cfg.model.modalities,
        norms=cfg.model.normalization,
        size=cfg.model.image_size,
        max_sources=cfg.train.max_sources,
        max_targets=cfg.train.max_targets,
        sources=cfg.train.sources,
        targets=cfg.train.targets,
    )
    train_set = SliceDataset(train_cases, augment=cfg.train.augment, seed=cfg.train.seed,
                             source_artifacts=cfg.train.source_artifacts,
                             degrade_any_source=cfg.train.degrade_any_source, **common)
    val_set = SliceDataset(val_cases, augment=False, seed=cfg.train.seed + 1, **common)
    if len(train_set) == 0:
        raise DataError(f"{data_dir}: no training slices with brain tissue found")
    return train_set, val_set, train_cases


def _model(cfg: ExperimentConfig, ctx: DistContext, resume_dir: Path | None):
    if resume_dir is not None:
        model, _, _ = ckpt.load_checkpoint(resume_dir / "checkpoints" / "last", device="cpu")
    else:
        model = build_model(cfg.model)
    model = model.to(ctx.device)
    if ctx.device.type == "cpu":
        # oneDNN convolves NHWC natively; with NCHW weights every convolution reorders them, forward
        # and backward. The tiny preset's CPU step ran 15 % faster this way (same values, other summation order).
        model = model.to(memory_format=torch.channels_last)
    return model


def _autocast(amp: str, device: torch.device):
    if device.type != "cuda" or amp == "none":
        return None
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _step(forward, model, batch, cfg, optimizer, scaler, amp_dtype) -> tuple[float, dict[str, float]]:
    """One optimizer step, accumulating `grad_accum` micro-batches of the loaded batch."""
    tc = cfg.train
    optimizer.zero_grad(set_to_none=True)
    chunks = max(1, min(tc.grad_accum, batch["x"].shape[0]))
    total, parts_sum = 0.0, {}
    for part in _split(batch, chunks):
        with torch.autocast(batch["x"].device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = forward(part["x"], part["src"], part["tgt"], part["avail"])
            mask = part["mask"].unsqueeze(1).expand_as(part["target"])
            loss, parts = total_loss(out, part["target"], part["tgt"], model, cfg.loss, mask=mask,
                                     tgt_valid=part["tgt_valid"], lesion=part["lesion"], named_right=part.get("named_right"))
        scaler.scale(loss / chunks).backward()
        total += float(loss.detach()) / chunks
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + float(v) / chunks
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return total, parts_sum


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the source and target columns that are padding in every sample of the batch.

    Samples are padded to max_sources / max_targets with their real entries first
    (data.dataset._pad), and early in the curriculum every sample has one source and one
    target: decoding three padded targets per sample was three quarters of those steps'
    work, for any architecture. Padding is ignored exactly (avail, tgt_valid), so the
    loss is unchanged.
    """
    k = max(1, int(batch["avail"].sum(dim=1).max()))
    n = max(1, int(batch["tgt_valid"].sum(dim=1).max()))
    out = dict(batch)
    for name in ("x", "src", "avail", "named_right"):
        if name in batch:
            out[name] = batch[name][:, :k]
    for name in ("target", "tgt", "tgt_valid"):
        out[name] = batch[name][:, :n]
    return out


def _split(batch: dict[str, torch.Tensor], chunks: int):
    size = batch["x"].shape[0]
    bounds = np.linspace(0, size, chunks + 1).astype(int)
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b > a:
            yield {k: v[a:b] for k, v in batch.items()}


def split_record(train_cases: list, validation: list[str]) -> dict[str, list[str]]:
    """Names of both sides of the split, and content fingerprints of the training side (names repeat)."""
    return {"train": sorted(c.name for c in train_cases), "validation": sorted(validation),
            "train_fingerprints": sorted(case_fingerprint(c) for c in train_cases)}


def _save(run_dir, model, cfg, optimizer, scheduler, step, best, score, metrics, subjects, status) -> float:
    # The subjects of each side of the split: export calibrates the uncertainty on subjects the
    # weights never saw, and must be able to tell which those are.
    meta = {"step": step, "val": metrics, "subjects": subjects, **status}
    is_best = score > best
    best = max(best, score)
    trainer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
               "step": step, "best": best, "torch_rng": torch.get_rng_state()}
    ckpt.save_checkpoint(run_dir / "checkpoints" / "last", model, cfg, meta, trainer_state=trainer)
    if is_best:
        ckpt.save_checkpoint(run_dir / "checkpoints" / "best", model, cfg, meta)
    return best
