"""`medk2n-bench demo-model`: ship the model `make demo-train` trained as the project's demo model.

`make demo` used to train its model first: 12 minutes on 2 cores, under a
wall-clock cap that on a loaded machine cut training short (step 152 of 2200)
and silently gave another table than the README's. The demo now exports,
runs and scores a model that ships with the project (a few MB of
safetensors), so its table is the README's on any machine. This module makes
that shipped folder from a finished training run:

    model.safetensors, config.json   the checkpoint `last` (the end of the schedule)
    train.csv, val.csv               its training logs
    provenance.json                  recipe, steps, commit, versions, the weights' sha256

A run stopped before the end of its schedule is refused: the shipped model
is the recipe's model or nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path

from medk2n.errors import MedK2NError
from medk2n.fsutil import make_temp_dir, swap_in_dir, write_atomic
from medk2n.manifest import sha256_file

CHECKPOINT_FILES = ("model.safetensors", "config.json")
LOG_FILES = ("train.csv", "val.csv")
PROVENANCE = "provenance.json"


def git_commit(where: Path) -> str:
    """The commit the code was at (with '+dirty' for uncommitted changes), or 'unknown' outside a git clone."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def ship_demo_model(run_dir: Path, out: Path, recipe: str, replace: bool = False) -> Path:
    """Copy run_dir's final checkpoint and logs to `out` with a provenance record; returns `out`."""
    from medk2n.train.checkpoint import load_checkpoint
    import torch

    run_dir, out = Path(run_dir), Path(out)
    checkpoint = run_dir / "checkpoints" / "last"
    missing = [p for p in [checkpoint / f for f in CHECKPOINT_FILES] + [run_dir / "logs" / f for f in LOG_FILES]
               if not p.is_file()]
    if missing:
        raise MedK2NError(f"{missing[0]}: not found; is {run_dir} a finished medk2n-train run?")
    _, cfg, meta = load_checkpoint(checkpoint)  # refuses weights that do not match their config
    if not meta.get("schedule_complete"):
        raise MedK2NError(f"{checkpoint}: its training ended at step {meta.get('step')} of "
                          f"{meta.get('max_steps', 'an unknown number')} ({meta.get('stopped_by', 'no record of the end')});"
                          " only a run that finished its schedule can be shipped as the demo model")
    if out.exists() and not replace:
        raise MedK2NError(f"{out}: exists; pass --replace to ship a new demo model over it")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = make_temp_dir(out.parent, out.name)
    try:
        for name in CHECKPOINT_FILES:
            shutil.copyfile(checkpoint / name, stage / name)
        for name in LOG_FILES:
            shutil.copyfile(run_dir / "logs" / name, stage / name)
        record = {
            "recipe": recipe,
            "steps": meta["step"],
            "schedule": meta.get("schedule"),
            "preset_config": cfg.name,
            "weights_sha256": sha256_file(stage / "model.safetensors"),
            "commit": git_commit(Path(__file__).resolve().parent),
            "torch": torch.__version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_atomic(stage / PROVENANCE, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        swap_in_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out
