"""Run logging on rank 0: progress bar, CSV, TensorBoard (when installed)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from tqdm import tqdm


class RunLogger:
    def __init__(self, run_dir: Path, enabled: bool, total: int | None, start: int, progress: bool = True):
        self.enabled = enabled
        self._bar = None
        self._tb = None
        self._files: dict[str, Any] = {}
        if not enabled:
            return
        self.dir = Path(run_dir) / "logs"
        self.dir.mkdir(parents=True, exist_ok=True)
        if progress:
            self._bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"))
        except ImportError:  # tensorboard is in [train]; keep training without it
            self._tb = None

    def log_train(self, row: dict[str, Any], every: int) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{row['loss']:.4f}", stage=row["stage"], sps=f"{row['slices_per_s']:.1f}")
        if row["step"] % every == 0:
            self._append("train.csv", row)
            if self._tb is not None:
                for key, value in row.items():
                    if isinstance(value, (int, float)) and key != "step":
                        self._tb.add_scalar(f"train/{key}", value, row["step"])

    def log_val(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._append("val.csv", {"step": step, **metrics})
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(f"val/{key}", value, step)
        message = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        (self._bar.write if self._bar is not None else print)(f"step {step}: val {message}")

    def _append(self, name: str, row: dict[str, Any]) -> None:
        path = self.dir / name
        new = not path.exists()
        if name not in self._files:
            self._files[name] = open(path, "a", newline="")
        fh = self._files[name]
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
        fh.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        for fh in self._files.values():
            fh.close()
