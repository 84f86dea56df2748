"""Checkpoint folders: `model.safetensors` + `config.json` (+ `trainer.safetensors` to resume).

A checkpoint is a folder so every command that takes one (export, eval,
resume) reads the same thing: the weights as safetensors (no pickle, ever),
the full `ExperimentConfig` (vocabulary, normalisation, sizes, ablation) and
training metadata. Saving is atomic: written to a temporary sibling folder and
swapped in, so Ctrl-C or SIGTERM mid-save leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from medk2n.config import ExperimentConfig
from medk2n.errors import CheckpointError, ConfigError
from medk2n.fsutil import chmod_plain, make_temp_dir, swap_in_dir

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINER_STATE = "trainer.json"
VOCAB_KEY = "medk2n.modalities"  # safetensors metadata: the vocabulary the weights were trained with


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    cfg: ExperimentConfig,
    meta: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write weights, config and metadata atomically to `directory`.

    `trainer_state` (optimizer/scheduler/RNG, for --resume) is stored as a
    second safetensors file of tensors plus a JSON of scalars.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(directory.parent, directory.name)
    try:
        state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
        # The weights carry their own vocabulary: an edited config.json (a reordered or renamed
        # modality list) would otherwise map every modality id onto another's embedding silently.
        save_file(state, str(tmp / WEIGHTS), metadata={VOCAB_KEY: json.dumps(list(cfg.model.modalities))})
        doc = {"format_version": FORMAT_VERSION, "experiment": cfg.to_dict(), "training": meta or {}}
        (tmp / CONFIG).write_text(json.dumps(doc, indent=2, sort_keys=True))
        if trainer_state is not None:
            tensors, scalars = _split_tensors(trainer_state)
            save_file(tensors, str(tmp / "trainer.safetensors"))
            (tmp / TRAINER_STATE).write_text(json.dumps(scalars, indent=2, sort_keys=True))
        for path in tmp.iterdir():
            chmod_plain(path)  # safetensors writes 0600, json 0644: one mode for every file, as open() gives
        swap_in_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_checkpoint_config(directory: str | Path) -> tuple[ExperimentConfig, dict[str, Any]]:
    directory = Path(directory)
    path = directory / CONFIG
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint folder not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a checkpoint folder holds {WEIGHTS} and {CONFIG}")
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format_version") != FORMAT_VERSION or "experiment" not in doc:
        raise CheckpointError(f"{path}: not a medk2n checkpoint config (format_version {FORMAT_VERSION})")
    try:
        cfg = ExperimentConfig.from_dict(_with_earlier_defaults(doc["experiment"]), source=str(path))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    return cfg, doc.get("training", {})


# Options added after format 1 whose defaults differ from what came before. A
# checkpoint written before one existed was trained the old way, so its config
# reads the old value: `--resume` keeps the objective the run started with.
LATER_OPTIONS = {
    ("loss", "lesion"): 0.0,
    ("loss", "histogram"): 0.0,
    ("train", "lesion_oversample"): 0.0,
    ("model", "encoder_windows"): "sam2",
}


def _with_earlier_defaults(experiment: Any) -> Any:
    if not isinstance(experiment, dict):
        return experiment
    experiment = {k: dict(v) if isinstance(v, dict) else v for k, v in experiment.items()}
    for (section, key), before in LATER_OPTIONS.items():
        if isinstance(experiment.get(section), dict):
            experiment[section].setdefault(key, before)
    return experiment


def load_checkpoint(directory: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, ExperimentConfig, dict]:
    """Rebuild the model from its config and load weights strictly."""
    from medk2n.models import build_model

    directory = Path(directory)
    cfg, meta = read_checkpoint_config(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing weights file")
    try:
        state = load_file(str(weights), device=device)
        with safe_open(str(weights), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get(VOCAB_KEY)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights}: unreadable safetensors: {exc}") from None
    trained = None if recorded is None else json.loads(recorded)
    if trained is not None and trained != list(cfg.model.modalities):
        raise CheckpointError(f"{directory / CONFIG}: modality vocabulary {list(cfg.model.modalities)} differs from "
                              f"the one the weights were trained with {trained}")
    text = state.get("text_embeddings")
    model = build_model(cfg.model, text_embeddings=text, pretrained=False)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{weights}: weights do not match the config's model "
            f"(missing {_preview(result.missing_keys)}, unexpected {_preview(result.unexpected_keys)})"
        )
    return model.to(device), cfg, meta


def load_trainer_state(directory: str | Path) -> dict[str, Any] | None:
    """The optimizer, scheduler and RNG state of `last` for --resume (None when it has none).

    A broken file is a one-line CheckpointError naming it, not a raw JSON/safetensors error."""
    directory = Path(directory)
    if not (directory / TRAINER_STATE).is_file():
        return None
    try:
        scalars = json.loads((directory / TRAINER_STATE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory / TRAINER_STATE}: unreadable trainer state: {exc}") from None
    tensors_path = directory / "trainer.safetensors"
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{tensors_path}: unreadable trainer state: {exc}") from None
    try:
        return _join_tensors(tensors, scalars)
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{directory / TRAINER_STATE}: does not match {tensors_path.name} ({exc!r})") from None


def _preview(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}] ({len(keys)})"


# Optimizer/scheduler state dicts are nested dicts of tensors and scalars.
# Flatten tensors into a safetensors file under path-like keys and keep the
# structure with scalars in JSON, so resume never needs pickle.
_TENSOR_TAG = "__tensor__"


def _split_tensors(obj: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    tensors: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        key = prefix or "root"
        tensors[key] = obj.detach().contiguous().cpu()
        return tensors, {_TENSOR_TAG: key}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            sub_t, sub = _split_tensors(v, f"{prefix}/{k}")
            tensors.update(sub_t)
            out[str(k)] = sub
        return tensors, {"__dict__": out, "__intkeys__": [str(k) for k in obj if isinstance(k, int)]}
    if isinstance(obj, (list, tuple)):
        items = []
        for i, v in enumerate(obj):
            sub_t, sub = _split_tensors(v, f"{prefix}/{i}")
            tensors.update(sub_t)
            items.append(sub)
        return tensors, {"__list__": items}
    return tensors, obj


def _join_tensors(tensors: dict[str, torch.Tensor], obj: Any) -> Any:
    if isinstance(obj, dict) and _TENSOR_TAG in obj:
        return tensors[obj[_TENSOR_TAG]]
    if isinstance(obj, dict) and "__dict__" in obj:
        intkeys = set(obj.get("__intkeys__", []))
        return {
            (int(k) if k in intkeys else k): _join_tensors(tensors, v) for k, v in obj["__dict__"].items()
        }
    if isinstance(obj, dict) and "__list__" in obj:
        return [_join_tensors(tensors, v) for v in obj["__list__"]]
    return obj
