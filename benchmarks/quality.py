"""`medk2n-bench quality`: Med-K2N, its ablation ladder and the U-Net baseline, trained alike, scored alike.

Every method trains on the same subject split, with the same seed (same
batches) and the same wall-clock budget, then is scored on the held-out
subjects by the `medk2n-eval` protocol for each K->N task. The full model
(B5) is exported with K=2, N=4 and each precision's ONNX model is scored the
same way, so the FP16/INT8 drop is measured on whole held-out volumes.

Equal budget, fitted schedule: every method trains with its curriculum and
its cosine decay spread over the wall-clock budget (`train(fit_to_budget=True)`),
so each ends in the last curriculum stage with its rate decayed, however
fast its steps are. (Before 2026-12-02, evening, a 5-step probe of the cheap first stage
set max_steps; the runs then stopped about half-way along their schedules.)
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from medk2n.benchmarks.latency_report import result_stem
from medk2n.benchmarks.quality_report import assemble, jsonable, write_outputs
from medk2n.config import ABLATIONS, ExperimentConfig
from medk2n.config import load_config
from medk2n.data.cases import Case, discover_dataset
from medk2n.errors import ConfigError, DataError, MedK2NError

REFERENCE = "B5"
METHODS = (*ABLATIONS, "unet")  # B0..B5, then the baseline
PRECISIONS = ("fp32", "fp16", "int8")
EXPORT_K, EXPORT_N = 2, 4


@dataclass(frozen=True)
class Task:
    sources: tuple[str, ...]
    targets: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{','.join(self.sources)}->{','.join(self.targets)}"


DEFAULT_TASKS = (
    Task(("flair",), ("adc", "dwi")),  # 1 -> 2
    Task(("adc", "flair"), ("dwi",)),  # 2 -> 1
    Task(("flair", "adc"), ("dwi", "t2", "t1", "pd")),  # 2 -> 4
)


def parse_task(text: str) -> Task:
    """`flair,adc->dwi,t2` -> Task(("flair","adc"), ("dwi","t2"))."""
    left, arrow, right = text.partition("->")
    sources = tuple(m.strip().lower() for m in left.split(",") if m.strip())
    targets = tuple(m.strip().lower() for m in right.split(",") if m.strip())
    if not arrow or not sources or not targets:
        raise ConfigError(f"task {text!r}: write it as SOURCES->TARGETS, e.g. flair,adc->dwi,t2")
    return Task(sources, targets)


@dataclass(frozen=True)
class Plan:
    """What one benchmark run compares; recorded in quality.json as its settings."""

    preset: str
    seed: int
    budget_minutes: float
    methods: tuple[str, ...]
    tasks: tuple[Task, ...]
    test_fraction: float
    precisions: tuple[str, ...]
    overrides: dict
    device: str
    steps: dict | None = None  # {method: steps}: a fixed step budget instead of budget_minutes
    trained: str | None = None  # the kept run whose checkpoints are scored instead of training

    def settings(self) -> dict:
        return {"preset": self.preset, "seed": self.seed, "steps": self.steps, "trained": self.trained,
                "budget_minutes": None if self.steps else self.budget_minutes,
                "methods": list(self.methods), "test_fraction": self.test_fraction,
                "export_precisions": list(self.precisions), "overrides": self.overrides, "device": self.device}


def run_quality(
    data: Path,
    budget_minutes: float,
    out: Path,
    preset: str = "tiny",
    seed: int = 0,
    progress: Callable[[str], None] = print,
    *,
    methods: Sequence[str] = METHODS,
    tasks: Sequence[Task | str] = DEFAULT_TASKS,
    test_fraction: float = 0.3,
    export_precisions: Sequence[str] = PRECISIONS,
    overrides: dict | None = None,
    device: str = "cpu",
    work: Path | None = None,
    tag: str | None = None,
    steps: str | None = None,
    trained: Path | None = None,
) -> dict:
    """Train, evaluate and export as the module docstring says; write quality.{json,md,png} to `out`.

    budget_minutes is the training wall-clock budget of *each* method.
    overrides: {"model"|"train"|"loss": {field: value}} applied on top of the
    preset for every method (e.g. a smaller image size for tests).
    work: keep checkpoints, bundles and split folders there, to re-score or
    inspect them later; a new or empty folder (default: a temporary folder,
    removed at the end).
    tag: write quality-<tag>.* instead (e.g. a GPU run beside the CPU one).
    steps: "N" or "METHOD=N,...": train fixed step counts instead of budget_minutes of wall clock.
    trained: the `work` folder of an earlier run; its checkpoints of `methods` are scored (and B5 exported)
    on its own split instead of training (a new metric, or methods of two runs made with the same split,
    seed and steps, gathered in one folder); its seed and steps replace `seed` and `steps`, and `data`,
    `preset` and `overrides` are not used.
    Returns the results dict that quality.json holds.
    """
    stem = result_stem(tag, "quality")  # a bad tag fails before minutes of training
    if trained is not None:
        return _rescore(Path(trained), Path(out), stem, methods, tasks, export_precisions,
                        device, progress, steps, overrides, work)
    plan = Plan(preset, seed, budget_minutes, tuple(_check_methods(methods)),
                tuple(parse_task(t) if isinstance(t, str) else t for t in tasks), test_fraction,
                tuple(export_precisions), dict(overrides or {}), device, parse_step_budget(steps, methods))
    bad = [p for p in plan.precisions if p not in PRECISIONS]
    if bad:
        raise ConfigError(f"export precision {bad[0]!r}: choose from {', '.join(PRECISIONS)}")
    if budget_minutes <= 0:
        raise ConfigError(f"budget must be positive, got {budget_minutes} minutes")
    if work is not None:
        work = Path(work)
        if work.is_file() or (work.is_dir() and any(work.iterdir())):
            raise ConfigError(f"{work}: the work folder must be new or empty (a kept run is never overwritten)")
        return _run(plan, Path(data), Path(out), work, progress, stem)
    with tempfile.TemporaryDirectory(prefix="medk2n-quality-") as tmp:
        return _run(plan, Path(data), Path(out), Path(tmp), progress, stem)


def _rescore(trained: Path, out: Path, stem: str, methods: Sequence[str], tasks, precisions, device: str,
             progress: Callable[[str], None], steps: str | None, overrides: dict | None, work: Path | None) -> dict:
    """run_quality(trained=...): the kept checkpoints scored as a new run would score them."""
    if steps or overrides or work is not None:
        raise ConfigError("--trained scores a kept run's checkpoints: --steps, --work and overrides do not apply")
    split, kept, seed = kept_runs(trained, methods)
    plan = Plan(f"kept run {trained.name}", seed, 0.0, tuple(kept),
                tuple(parse_task(t) if isinstance(t, str) else t for t in tasks), 0.0, tuple(precisions), {}, device,
                {m: run["steps"] for m, run in kept.items()}, str(trained))
    bad = [p for p in plan.precisions if p not in PRECISIONS]
    if bad:
        raise ConfigError(f"export precision {bad[0]!r}: choose from {', '.join(PRECISIONS)}")
    with tempfile.TemporaryDirectory(prefix="medk2n-quality-") as tmp:  # bundles; the kept run is only read
        return _run(plan, trained, out, Path(tmp), progress, stem, split=split, kept=kept)


def _run(plan: Plan, data: Path, out: Path, work: Path, progress: Callable[[str], None], stem: str,
         split: dict | None = None, kept: dict | None = None) -> dict:
    if split is None:
        split = split_dataset(data, work / "split", plan.tasks, plan.test_fraction, plan.seed)
    progress(f"split: {len(split['train'])} training subjects, {len(split['test'])} test subjects")
    if kept is None:
        _warm_text_embeddings(method_config(plan.preset, plan.methods[0], plan.seed, plan.overrides), plan.methods)
    rows, runs, examples = [], {}, {}
    for method in plan.methods:
        if kept is not None:
            runs[method] = dict(kept[method])
        else:
            cfg = method_config(plan.preset, method, plan.seed, plan.overrides)
            runs[method] = train_within_budget(cfg, split["train_dir"], work / "runs" / method,
                                               60.0 * plan.budget_minutes, plan.device,
                                               steps=(plan.steps or {}).get(method),
                                               progress=lambda text: progress(f"{method}: {text}"))
        progress(f"{method}: {runs[method]['steps']} steps; evaluating")
        start = time.perf_counter()
        method_rows, examples[method] = evaluate_checkpoint(
            runs[method]["checkpoint"], plan.tasks, split, plan.device, references=not rows)
        rows += [{**r, "method": method} if r["method"] == "model" else r for r in method_rows]
        runs[method]["eval_seconds"] = round(time.perf_counter() - start, 2)
    export = {}
    if plan.precisions and REFERENCE in runs:
        progress(f"{REFERENCE}: exporting K={EXPORT_K}, N={EXPORT_N} bundles ({', '.join(plan.precisions)})")
        precision_rows, export = export_and_evaluate(runs[REFERENCE]["checkpoint"], plan.precisions, plan.tasks,
                                                     split, work / "bundles")
        rows += precision_rows
    results = jsonable(assemble(rows, runs, plan.tasks, split, export, REFERENCE, plan.settings()))
    paths = write_outputs(results, examples, out, stem)
    progress("wrote " + ", ".join(str(p) for p in paths))
    return results


def _check_methods(methods: Sequence[str]) -> list[str]:
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"unknown method {unknown[0] if unknown else '(none)'}; choose from {', '.join(METHODS)}")
    return methods


def method_config(preset_name: str, method: str, seed: int, overrides: dict | None = None) -> ExperimentConfig:
    """The preset (or YAML recipe over one, e.g. configs/demo.yaml) with the method's switches: an
    ablation step of Med-K2N, or the U-Net baseline."""
    cfg = load_config(preset_name)
    for section, values in (overrides or {}).items():
        part = getattr(cfg, section, None)
        if part is None or section == "name":
            raise ConfigError(f"override section {section!r}: choose model, train or loss")
        for key, value in values.items():
            if not hasattr(part, key):
                raise ConfigError(f"override {section}.{key}: no such field")
            setattr(part, key, value)
    if method == "unet":
        cfg.model.arch = "unet"
    else:
        cfg.model.arch, cfg.model.ablation = "medk2n", method
    cfg.train.seed = seed
    cfg.name = f"quality-{method}"
    return cfg


def parse_step_budget(text: str | None, methods: Sequence[str]) -> dict[str, int] | None:
    """`--steps`: "N" for every method or "METHOD=N,..." naming each one -> {method: steps} (None: wall clock)."""
    if not text:
        return None
    try:
        if "=" not in text:
            steps = {method: int(text) for method in methods}
        else:
            pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
            steps = {name.strip(): int(value) for name, value in pairs}
    except ValueError:
        raise ConfigError(f"--steps {text!r}: give N or METHOD=N,... with whole numbers") from None
    missing = [m for m in methods if m not in steps]
    if missing or any(v < 1 for v in steps.values()):
        raise ConfigError(f"--steps {text!r}: every method needs a positive step count (missing: {', '.join(missing) or 'none'})")
    return steps


def _warm_text_embeddings(cfg: ExperimentConfig, methods: Sequence[str]) -> None:
    """Compute the CMIM text embeddings once, before any clock starts (they are cached per process)."""
    if any(m != "unet" for m in methods):
        from medk2n.models.text import modality_text_embeddings

        modality_text_embeddings(cfg.model.modalities)


# --- split ---------------------------------------------------------------------------------------------------


def split_dataset(data: Path, root: Path, tasks: Sequence[Task], test_fraction: float, seed: int) -> dict:
    """Seeded split by subject into root/train and root/test, as generic case folders of symlinks.

    Only subjects with every modality the tasks use take part, so each method
    and task sees the same subjects.
    """
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test fraction must be between 0 and 1, got {test_fraction}")
    needed = sorted({m for t in tasks for m in (*t.sources, *t.targets)})
    cases = discover_dataset(Path(data))
    usable = [c for c in cases if all(m in c.files for m in needed)]
    if len(usable) < 3:
        raise DataError(f"{data}: need at least 3 subjects with all of {', '.join(needed)} "
                        f"(2 to train and validate, 1 to test), found {len(usable)}")
    n_test = min(len(usable) - 2, max(1, round(test_fraction * len(usable))))
    order = np.random.default_rng(seed).permutation(len(usable))
    test = sorted(usable[i].name for i in order[:n_test])
    parts = {"test": [c for c in usable if c.name in test], "train": [c for c in usable if c.name not in test]}
    for part, members in parts.items():
        for case in members:
            _link_case(case, root / part)
    return {"train": [c.name for c in parts["train"]], "test": test,
            "excluded": sorted(c.name for c in cases if c not in usable),
            "train_dir": root / "train", "test_dir": root / "test"}


def _link_case(case: Case, part_dir: Path) -> None:
    """`<part>/<case>/<modality>.nii[.gz]` and `<role>_mask.nii[.gz]` symlinks: any layout becomes generic."""
    folder = part_dir / re.sub(r"[^A-Za-z0-9._-]", "_", case.name)
    folder.mkdir(parents=True, exist_ok=True)
    named = [(m, p) for m, p in case.files.items()] + [(f"{r}_mask", p) for r, p in case.masks.items()]
    for stem, path in named:
        suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
        os.symlink(Path(path).resolve(), folder / f"{stem}{suffix}")


def kept_split(work: Path) -> dict:
    """The split a `medk2n-bench quality --work WORK` run kept (WORK/split/{train,test}), as split_dataset
    returns it: a later benchmark scores the run's checkpoints on exactly the subjects it held out."""
    work = Path(work)
    parts = {part: work / "split" / part for part in ("train", "test")}
    for folder in parts.values():
        if not folder.is_dir() or not any(folder.iterdir()):
            raise ConfigError(f"{work}: not a kept quality run (no subjects in {folder}); "
                              "give the --work folder of `medk2n-bench quality`")
    names = {part: sorted(p.name for p in folder.iterdir() if p.is_dir()) for part, folder in parts.items()}
    return {**names, "excluded": [], "train_dir": parts["train"], "test_dir": parts["test"]}


def kept_runs(work: Path, methods: Sequence[str]) -> tuple[dict, dict[str, dict], int]:
    """The split, the run records of `methods` and their common seed, from a kept run (kept_split, kept_run)."""
    split = kept_split(work)
    kept = {method: kept_run(work, method, split) for method in _check_methods(methods)}
    seeds = {run["seed"] for run in kept.values()}
    if len(seeds) != 1:
        raise ConfigError(f"{work}: its methods trained with different seeds ({sorted(seeds)})")
    return split, kept, seeds.pop()


def kept_run(work: Path, method: str, split: dict) -> dict:
    """The run record (as train_within_budget returns it) of the checkpoint a kept quality run trained for
    `method`; refuses a checkpoint whose training or validation subjects include a test subject (a leak)."""
    from medk2n.train.checkpoint import read_checkpoint_config

    checkpoint = Path(work) / "runs" / method / "checkpoints" / "best"
    if not (checkpoint / "model.safetensors").is_file():
        raise ConfigError(f"{checkpoint}: no {method} checkpoint in the kept run; train it with "
                          f"`medk2n-bench quality --methods {method} --work ...`")
    cfg, training = read_checkpoint_config(checkpoint)
    expected = "unet" if method == "unet" else "medk2n"
    if cfg.model.arch != expected or (expected == "medk2n" and cfg.model.ablation != method):
        raise ConfigError(f"{checkpoint}: holds {cfg.model.arch} {cfg.model.ablation}, not {method}")
    seen = training.get("subjects", {})
    leaked = sorted(set(split["test"]) & set(seen.get("train", []) + seen.get("validation", [])))
    if leaked:
        raise DataError(f"{checkpoint}: trained on test subject(s) {', '.join(leaked)} of {split['test_dir']}")
    last = _last_logged_row(checkpoint)
    steps = training.get("max_steps") if training.get("schedule") == "steps" else last.get("step")
    return {"steps": None if steps is None else int(steps), "seed": cfg.train.seed, "checkpoint": checkpoint,
            "kept": True, "best_val_masked_psnr": training.get("val", {}).get("masked_psnr"),
            "last_lr": float(last["lr"]) if "lr" in last else None}


def _last_logged_row(checkpoint: Path) -> dict[str, str]:
    """The last row of the run's training log: the steps a wall-clock run reached (its best checkpoint records
    only the step it was saved at) and its last learning rate."""
    log = checkpoint.parent.parent / "logs" / "train.csv"
    rows = log.read_text().split() if log.is_file() else []
    return dict(zip(rows[0].split(","), rows[-1].split(","))) if len(rows) > 1 else {}


def kept_methods(work: Path) -> list[str]:
    """The methods whose checkpoints a kept run holds, in table order."""
    return [m for m in METHODS if (Path(work) / "runs" / m / "checkpoints" / "best").is_dir()]


# --- training ------------------------------------------------------------------------------------------------


def train_within_budget(cfg: ExperimentConfig, train_dir: Path, run_dir: Path, budget_s: float,
                        device: str = "cpu", steps: int | None = None,
                        progress: Callable[[str], None] = lambda _: None) -> dict:
    """Train with the curriculum and the cosine decay spread over the budget (see the module docstring).

    With `steps`, train exactly that many steps on the step schedule instead: a result that does not
    depend on the machine's load (other jobs on a shared machine cut a wall-clock run short)."""
    from medk2n.train.loop import train

    progress("training for " + (f"{steps} steps" if steps is not None else f"{budget_s / 60.0:g} min"))
    start = time.perf_counter()
    if steps is not None:
        result = train(cfg, train_dir, run_dir, max_steps=steps, device=device, progress=False)
    else:
        result = train(cfg, train_dir, run_dir, device=device, progress=False, budget_minutes=budget_s / 60.0,
                       fit_to_budget=True)
    seconds = time.perf_counter() - start
    stages = [row["stage"] for row in result.history]
    return {
        "steps": result.step,
        "step_seconds": round(seconds / max(1, result.step), 4),
        "train_seconds": round(seconds, 2),
        # Steps each curriculum stage got: the last (k->n) must have been reached for a fair comparison.
        "stage_steps": {stage: stages.count(stage) for stage in dict.fromkeys(stages)},
        "last_lr": result.history[-1]["lr"] if result.history else None,
        "last_loss": result.last_loss,
        "best_val_masked_psnr": result.best_metric,
        "checkpoint": run_dir / "checkpoints" / "best",
    }


# --- evaluation ----------------------------------------------------------------------------------------------


def evaluate_checkpoint(checkpoint: Path, tasks: Sequence[Task], split: dict, device: str,
                        references: bool, exclude_mislabelled: bool = False,
                        check_thresholds: dict[str, float] | None = None) -> tuple[list[dict], dict]:
    """Rows (method "model", plus copy/mean-train references when asked) and middle-slice examples per task;
    `exclude_mislabelled` as `medk2n-run --exclude-mislabelled` (eval.evaluate) with the source check's
    per-contrast `check_thresholds` (default: the network's p = 0.5)."""
    from medk2n.eval.evaluate import evaluate
    from medk2n.eval.predictor import checkpoint_synthesizer

    rows, examples = [], {}
    for task in tasks:
        with checkpoint_synthesizer(checkpoint, len(task.sources), len(task.targets), device=device,
                                    check_thresholds=check_thresholds) as predictor:
            result = evaluate(predictor, split["test_dir"], task.sources, task.targets,
                              train_dir=split["train_dir"] if references else None, examples=1,
                              exclude_mislabelled=exclude_mislabelled)
        rows += [{**r, "task": task.key} for r in result.rows if references or r["method"] == "model"]
        examples[task.key] = result.examples
    return rows, examples


def export_and_evaluate(checkpoint: Path, precisions: Sequence[str], tasks: Sequence[Task], split: dict,
                        root: Path) -> tuple[list[dict], dict]:
    """One K=2/N=4 bundle per non-FP32 precision (each also holds FP32); every ONNX model scored on ORT CPU."""
    from medk2n.eval.evaluate import evaluate
    from medk2n.export.exporter import ExportOptions, export_bundle
    from medk2n.runtime.synthesizer import Synthesizer

    info: dict = {"k": EXPORT_K, "n": EXPORT_N, "backend": "cpu", "bundles": {}, "errors": {}}
    bundles: dict[str, Path] = {}
    for precision in [p for p in precisions if p != "fp32"] or ["fp32"]:
        start = time.perf_counter()
        options = ExportOptions(checkpoint=checkpoint, out=root / precision, k=EXPORT_K, n=EXPORT_N,
                                precision=precision, calib=split["train_dir"], force=True)
        try:
            manifest = export_bundle(options).manifest
        except MedK2NError as exc:
            info["errors"][precision] = str(exc)
            continue
        bundles.setdefault("fp32", options.out)
        bundles[precision] = options.out
        info["bundles"][precision] = {"export_seconds": round(time.perf_counter() - start, 2),
                                      "parity": manifest.parity, "accuracy": manifest.accuracy}
    rows = []
    for precision in [p for p in PRECISIONS if p in bundles]:  # FP32 always: the drops are measured against it
        start = time.perf_counter()
        for task in tasks:
            with Synthesizer(bundles[precision], backend="cpu", precision=precision) as predictor:
                result = evaluate(predictor, split["test_dir"], task.sources, task.targets, examples=0)
            rows += [{**r, "task": task.key, "method": f"{REFERENCE}:onnx-{precision}", "precision": precision}
                     for r in result.rows if r["method"] == "model"]
        info.setdefault("eval_seconds", {})[precision] = round(time.perf_counter() - start, 2)
    return rows, info
