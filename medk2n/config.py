"""Typed configuration, serialised with every checkpoint and bundle.

One `ExperimentConfig` holds everything needed to rebuild a model and its
preprocessing: the modality vocabulary, per-modality normalisation, model
sizes, ablation switches, loss weights and the training schedule. Presets are
plain functions; a YAML/JSON file overrides any subset of fields, and unknown
keys are an error that names them.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medk2n.errors import ConfigError

DEFAULT_MODALITIES = ("t1", "t1c", "t2", "flair", "pd", "dwi", "adc")

# Human-readable descriptions of each contrast; CMIM embeds these texts once
# with a sentence-embedding model and keeps the vectors in the checkpoint.
MODALITY_DESCRIPTIONS = {
    "t1": "T1-weighted MRI: white matter bright, grey matter darker, cerebrospinal fluid dark",
    "t1c": "contrast-enhanced T1-weighted MRI with gadolinium: enhancing lesions and vessels bright",
    "t2": "T2-weighted MRI: cerebrospinal fluid bright, white matter dark, oedema bright",
    "flair": "FLAIR MRI: T2-weighted with fluid suppressed, cerebrospinal fluid dark, lesions bright",
    "pd": "proton density weighted MRI: contrast follows water content, grey matter brighter than white matter",
    "dwi": "diffusion-weighted MRI at b=1000: acute infarcts bright, cerebrospinal fluid dark",
    "adc": "apparent diffusion coefficient map: free water bright, acute infarcts dark",
}


# Landmarks of the output standard scale: the deciles of Nyul & Udupa (1999) between the
# 0.5/99.5 percentiles that per-volume normalisation and the evaluation protocol use.
STANDARD_PERCENTILES = (0.5, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.5)


@dataclass
class NormSpec:
    """How one modality is scaled to [0, 1].

    kind="percentile": per-volume `low`..`high` percentiles inside the volume's
    non-zero voxels map to 0..1 (weighted images have no absolute scale).
    kind="range": the fixed physical interval `low`..`high` maps to 0..1 (ADC
    in 1e-6 mm^2/s, as ISLES ships it), so a synthesised map comes back in
    physical units.
    """

    kind: str = "percentile"
    low: float = 0.5
    high: float = 99.5
    # Output side only: the standard scale (Nyul & Udupa 1999) a synthesised volume of this
    # modality is mapped onto, as positions in [0, 1] of STANDARD_PERCENTILES. Training fits it
    # for the modalities in `train.standardize_outputs`; None leaves outputs as the model made them.
    standard: list[float] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("percentile", "range"):
            raise ConfigError(f"normalisation kind must be 'percentile' or 'range', got {self.kind!r}")
        if not self.high > self.low:
            raise ConfigError(f"normalisation needs high > low, got {self.low}..{self.high}")
        if self.standard is not None:
            self.standard = [float(v) for v in self.standard]
            if self.kind != "percentile":
                raise ConfigError("a standard scale applies to percentile-normalised modalities only")
            steps = [b - a for a, b in zip(self.standard, self.standard[1:])]
            if len(self.standard) != len(STANDARD_PERCENTILES) or min(steps) < 0 or self.standard[0] != 0.0 \
                    or self.standard[-1] != 1.0:
                raise ConfigError(f"standard scale must be {len(STANDARD_PERCENTILES)} non-decreasing values "
                                  f"from 0 to 1 (at percentiles {list(STANDARD_PERCENTILES)}), got {self.standard}")


def default_normalization() -> dict[str, NormSpec]:
    norms = {m: NormSpec() for m in DEFAULT_MODALITIES}
    norms["adc"] = NormSpec(kind="range", low=0.0, high=4000.0)
    return norms


# Paper ablation ladder (Med-K2N, Table of ablations): each step adds one module.
ABLATIONS: dict[str, dict[str, bool]] = {
    "B0": dict(multiscale=False, task_memory=False, preweight=False, threshold=False, effiweight=False, cmim=False),
    "B1": dict(multiscale=True, task_memory=True, preweight=False, threshold=False, effiweight=False, cmim=False),
    "B2": dict(multiscale=True, task_memory=True, preweight=True, threshold=False, effiweight=False, cmim=False),
    "B3": dict(multiscale=True, task_memory=True, preweight=True, threshold=True, effiweight=False, cmim=False),
    "B4": dict(multiscale=True, task_memory=True, preweight=True, threshold=True, effiweight=True, cmim=False),
    "B5": dict(multiscale=True, task_memory=True, preweight=True, threshold=True, effiweight=True, cmim=True),
}

ENCODER_WINDOWS = ("tile", "sam2")


@dataclass
class ModelConfig:
    """Architecture. `modalities` is the id vocabulary: id i <-> modalities[i]."""

    arch: str = "medk2n"  # "medk2n" | "unet" (baseline)
    modalities: list[str] = field(default_factory=lambda: list(DEFAULT_MODALITIES))
    normalization: dict[str, NormSpec] = field(default_factory=default_normalization)
    image_size: int = 256
    # Encoder: "hiera_t" (SAM2.1 Hiera-tiny), "hiera_b+" (base-plus) or
    # "hiera_micro" (a 4-block Hiera for CPU tests and the demo).
    encoder: str = "hiera_t"
    encoder_checkpoint: str | None = None
    # Attention windows of the Hiera trunk: "tile" keeps SAM2's number of windows per side but sizes
    # them to the stage's map at this image_size, so no window attends over padding
    # (models/encoder.py: tile_windows); "sam2" keeps the window sizes SAM2 chose for 1024^2 inputs,
    # which at 256^2 pad the stage-3 and stage-4 maps to 3x their tokens. Checkpoints written before
    # the option existed read "sam2", the windows they were trained with.
    encoder_windows: str = "tile"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    feature_dim: int = 256  # FPN neck width (SAM2 d_model)
    fusion_dim: int = 128  # width of the fusion/gate networks
    memory_slots: int = 16  # S in M_j in R^{D x S}
    num_candidate_heads: int = 3  # K_head in TaskHeadNet
    text_dim: int = 384  # all-MiniLM-L6-v2 sentence embedding width
    ablation: str = "B5"
    eps: float = 1e-3  # EffiWeightNet range [eps, 1 - eps]
    unet_width: int = 32  # baseline U-Net base channels
    # Fuse the sources best-predicted-quality first (models/fusion.py) instead of in the order the
    # request names them: a degraded first source no longer becomes the ungated base frame.
    # Off for checkpoints written before it existed, whose fusion was trained in request order.
    base_by_quality: bool = False
    # SourceCheckNet (models/gates.py): a per-frame probability that a source holds the contrast it is
    # named as, trained on the training 'contrast' artefact, which puts a frame that fails the check
    # last in the fusion and closes its gate. B0 (no fusion) ignores it. Off for checkpoints
    # written before it existed.
    source_check: bool = False

    def __post_init__(self) -> None:
        if self.ablation not in ABLATIONS:
            raise ConfigError(f"ablation must be one of {sorted(ABLATIONS)}, got {self.ablation!r}")
        if self.encoder_windows not in ENCODER_WINDOWS:
            raise ConfigError(f"encoder_windows must be one of {list(ENCODER_WINDOWS)}, got {self.encoder_windows!r}")
        self.modalities = [m.lower() for m in self.modalities]
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"duplicate modality names in vocabulary {self.modalities}")
        self.normalization = {
            k: (v if isinstance(v, NormSpec) else NormSpec(**v)) for k, v in self.normalization.items()
        }
        missing = [m for m in self.modalities if m not in self.normalization]
        if missing:
            raise ConfigError(f"no normalisation declared for modalities {missing}")

    @property
    def switches(self) -> dict[str, bool]:
        return ABLATIONS[self.ablation]

    def modality_id(self, name: str) -> int:
        try:
            return self.modalities.index(name.lower())
        except ValueError:
            raise ConfigError(f"unknown modality {name!r}; vocabulary is {self.modalities}") from None


@dataclass
class LossConfig:
    """Weights of eq. 14: l1*L1 + ssim*(1-SSIM) + cmim*L_con + metric*L_tri + quality*L_q, plus lesion*L1_lesion,
    histogram*W1 and gradient*L1_grad.

    L1_lesion is the L1 inside the dataset's shipped lesion masks (0 where a
    case ships none): an addition to the paper's objective, because a lesion
    is a fraction of a percent of the voxels that L1 averages over.
    W1 is the distance between the sorted intensities of synthesis and truth
    inside the mask (losses.image.histogram_l1): an addition too, because L1
    alone dims uncertain bright tissue and per-volume percentile scaling turns
    that compressed tail into an error over the whole brain.
    L1_grad is the L1 between the row/column differences of synthesis and truth
    (losses.image.gradient_l1), off by default: it asks for sharp edges where L1
    and SSIM settle for a blur.
    """

    l1: float = 1.0
    ssim: float = 0.5
    cmim: float = 0.05
    metric: float = 0.05
    quality: float = 0.2
    lesion: float = 0.2
    histogram: float = 1.0
    gradient: float = 0.0
    # Binary cross-entropy of SourceCheckNet against the sources the dataset replaced by another
    # contrast (models built with model.source_check only).
    source_check: float = 0.1
    temperature: float = 0.07
    margin: float = 0.2


@dataclass
class TrainConfig:
    batch_size: int = 8
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200
    max_steps: int = 20000
    grad_clip: float = 1.0
    grad_accum: int = 1
    amp: str = "bf16"  # "bf16" | "fp16" | "none"; only used on CUDA
    seed: int = 0
    max_sources: int = 2  # K drawn per sample is 1..max_sources
    max_targets: int = 4  # N drawn per sample is 1..max_targets
    # Curriculum 1->1, k->1, 1->n, k->n: fraction of max_steps at which each
    # stage starts (the last stage runs to the end).
    curriculum: list[float] = field(default_factory=lambda: [0.0, 0.15, 0.3, 0.45])
    val_fraction: float = 0.2
    val_every: int = 500
    log_every: int = 20
    num_workers: int = 2
    slices_per_volume: int = 0  # 0 = every slice with brain tissue
    # Fraction of each batch drawn from slices a shipped lesion mask covers
    # (nnU-Net's oversample_foreground_percent); 0 = uniform over slices.
    lesion_oversample: float = 0.33
    augment: bool = True
    # Probability that one auxiliary source of a sample is degraded (noise, motion ghosts, or another
    # contrast under its name; data/artifacts.py) while its targets stay clean: the only way the
    # fusion's gates ever see a source worth turning down. 0 = clean sources only.
    source_artifacts: float = 0.2
    # Which source may be the degraded one: False = an auxiliary slot only (the request's first
    # source is the fusion's ungated base); True = any slot, a lone source included, which a
    # fusion ordered by quality (model.base_by_quality) needs to learn what a bad frame costs.
    degrade_any_source: bool = False
    # Targets whose synthesis is histogram-standardised (data/standardize.py) onto the standard
    # scale of the training subjects' acquisitions, fitted before step 1 and stored in the
    # modality's normalisation. Off by default: it helps contrasts whose histogram has one layout
    # in every subject and can hurt one shaped by pathology (docs/experiments.md: DWI).
    standardize_outputs: list[str] = field(default_factory=list)
    # The roles training draws modalities in: `sources` are the contrasts a site acquires,
    # `targets` the ones it needs (empty = every modality of the vocabulary, the general K->N
    # model). A model trained for fixed roles spends all its steps on that task; the runtime
    # refuses a source or target outside them (the manifest records them).
    sources: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)


@dataclass
class ExperimentConfig:
    name: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for role in ("sources", "targets"):
            names = [str(m).lower() for m in getattr(self.train, role)]
            unknown = [m for m in names if m not in self.model.modalities]
            if unknown:
                raise ConfigError(f"train.{role}: {unknown[0]!r} is not in the vocabulary {self.model.modalities}")
            setattr(self.train, role, names)
        if self.train.sources and self.train.targets and \
                not any(s != t for s in self.train.sources for t in self.train.targets):
            raise ConfigError("train.sources and train.targets leave no source-target pair to train on")
        for name in self.train.standardize_outputs:
            spec = self.model.normalization.get(str(name).lower())
            if spec is None or spec.kind != "percentile":
                raise ConfigError(f"train.standardize_outputs: {name!r} is not a percentile-normalised modality "
                                  f"of the vocabulary; weighted images only (physical maps keep their units)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "ExperimentConfig":
        return _build(cls, data, source)


def _build(kind: type, data: dict[str, Any], where: str):
    """Instantiate a dataclass from a dict, recursing and naming unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; allowed: {sorted(fields)}")
    kwargs = {}
    hints = typing.get_type_hints(kind)
    for name, value in data.items():
        sub = _SUBCONFIGS.get((kind, name))
        if not sub:
            _check_scalar(hints.get(name), value, f"{where}.{name}")
        kwargs[name] = _build(sub, value, f"{where}.{name}") if sub else value
    try:
        return kind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_scalar(hint: Any, value: Any, where: str) -> None:
    """A field typed int, float, bool or str must hold one (YAML reads `2e4` as a string, and a hand-edited
    checkpoint config can hold anything): a one-line error here, not a TypeError deep in export."""
    ok = {
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        bool: lambda v: isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }.get(hint)
    if ok is not None and not ok(value):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")


_SUBCONFIGS = {
    (ExperimentConfig, "model"): ModelConfig,
    (ExperimentConfig, "loss"): LossConfig,
    (ExperimentConfig, "train"): TrainConfig,
}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "normalization":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def preset(name: str) -> ExperimentConfig:
    """`tiny` (CPU tests and demo), `default` (Hiera-tiny, 256^2), `large` (Hiera-base-plus).

    Every preset fuses the sources best-predicted-quality first and degrades any source in training
    (`model.base_by_quality`, `train.degrade_any_source`): on the phantom, over two seeds with the same
    step budget, that cost nothing clean on average (-0.46 / +0.51 dB) and cut B5's loss under a
    degraded FLAIR by half or more (docs/experiments.md, 2026-12-02 closing section). Every preset
    also builds the source check (`model.source_check`): clean unchanged (-0.03 / -0.06 dB), B5's
    loss under a wrong contrast given as FLAIR down from 1.99 / 2.35 to 0.90 / 1.45 dB (same
    document, evening section). The dataclass defaults stay off, so a checkpoint saved before an
    option existed still loads as it was trained."""
    return _robust_defaults(_bare_preset(name))


def _robust_defaults(cfg: ExperimentConfig) -> ExperimentConfig:
    return replace(cfg, model=replace(cfg.model, base_by_quality=True, source_check=True),
                   train=replace(cfg.train, degrade_any_source=True))


def _bare_preset(name: str) -> ExperimentConfig:
    if name == "default":
        return ExperimentConfig(name="default")
    if name == "large":
        return ExperimentConfig(name="large", model=ModelConfig(encoder="hiera_b+", feature_dim=256))
    if name == "tiny":
        return ExperimentConfig(
            name="tiny",
            model=ModelConfig(
                encoder="hiera_micro",
                image_size=64,
                # No SAM2 weights exist for hiera_micro, so its trunk trains in full and adapters
                # would only add compute (LoRA adapts pretrained weights; ~15 % of a step here).
                lora_rank=0,
                lora_alpha=8.0,
                feature_dim=32,
                fusion_dim=32,
                memory_slots=8,
                num_candidate_heads=2,
                unet_width=16,
            ),
            train=TrainConfig(
                batch_size=8,
                lr=1e-3,
                warmup_steps=20,
                max_steps=400,
                val_every=100,
                log_every=10,
                num_workers=0,
            ),
        )
    raise ConfigError(f"unknown preset {name!r}; choose tiny, default or large, or give a YAML/JSON path")


PRESETS = ("tiny", "default", "large")


def load_config(spec: str | Path) -> ExperimentConfig:
    """A preset name, or a YAML/JSON file whose `base:` (default `default`) names the preset it overrides."""
    if str(spec) in PRESETS:
        return preset(str(spec))
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file (presets are {', '.join(PRESETS)})")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - parser errors vary by library
        raise ConfigError(f"{path}: cannot parse: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = data.pop("base", "default")
    merged = _merge(preset(base).to_dict(), data)
    return ExperimentConfig.from_dict(merged, source=str(path))
