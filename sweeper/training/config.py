"""Typed, frozen training configuration. Defaults are the phase-1 settings.

One `TrainConfig` drives `sweeper.training.train.train` for the baseline, for every
search trial and for the tests. Building one from a mapping with an unknown
key or an invalid value raises `SweeperError` naming the field.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from dataclasses import dataclass
from typing import Any, Mapping

from sweeper.data.classes import LabelMode
from sweeper.errors import SweeperError


class Optimizer(str, enum.Enum):
    SGD = "sgd"
    ADAM = "adam"
    ADAMW = "adamw"


class Schedule(str, enum.Enum):
    CONSTANT = "constant"  # phase 1: the same lr every step
    COSINE = "cosine"  # per-step cosine decay from lr to lr * min_lr_ratio
    WARMUP = "warmup"  # linear warm-up over warmup_epochs, then cosine decay


class TrainLabels(str, enum.Enum):
    """The labels a run trains on; validation is always scored on `label_mode`'s, so runs stay comparable."""

    SAME = "same"  # the labels of `label_mode` (phase 1: train and val alike)
    PHASE1 = "phase1"
    NEAREST = "nearest"


class ClassWeighting(str, enum.Enum):
    NONE = "none"  # phase 1: unweighted cross-entropy
    INVERSE = "inverse"  # w_c proportional to 1 / f_c
    SQRT_INVERSE = "sqrt_inverse"  # w_c proportional to 1 / sqrt(f_c)
    LOG = "log"  # ENet's 1 / ln(1.02 + f_c)
    POWER = "power"  # w_c proportional to f_c ** -class_weight_power (0 = none, 1 = inverse)
    EXPLICIT = "explicit"  # the per-class values in explicit_class_weights


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how the head is trained; defaults reproduce phase 1."""

    head: str = "convnext_phase1"  # name in sweeper.model.head.HEADS (checked there: this module imports no torch)
    label_mode: LabelMode = LabelMode.PHASE1  # how masks are resized to the training size (val is scored on these)
    train_labels: TrainLabels = TrainLabels.SAME  # the labels training uses: 'same' = label_mode's
    flip_prob: float = 0.0  # chance a training image is drawn mirrored (its cached flipped tokens and labels)
    image_height: int = 266  # px, (540 / 2) // 14 * 14 as in phase 1
    image_width: int = 476  # px, (960 / 2) // 14 * 14 as in phase 1
    optimizer: Optimizer = Optimizer.SGD
    lr: float = 1e-4  # peak learning rate
    momentum: float = 0.9  # SGD momentum (ignored by adam/adamw, which use their default betas)
    weight_decay: float = 0.0  # L2 for sgd/adam, decoupled for adamw
    schedule: Schedule = Schedule.CONSTANT
    warmup_epochs: float = 0.0  # epochs of linear warm-up, schedule 'warmup' only
    min_lr_ratio: float = 0.0  # final lr / peak lr for the cosine schedules
    epochs: int = 10
    # epochs the lr schedule spans; 0 = this run's own `epochs`. A sweep can fix it at asha.max_epochs so
    # that every trial follows the same schedule and `epochs` only truncates it (ASHA then compares trials
    # at the same point of the same schedule). A run longer than its schedule keeps the schedule's last lr
    schedule_epochs: int = 0
    batch_size: int = 2  # training batch
    eval_batch_size: int = 2  # phase-1 metrics are means over batches of this size: keep 2 to compare
    class_weights: ClassWeighting = ClassWeighting.NONE
    class_weight_power: float = 1.0  # exponent for class_weights='power'
    class_weight_max: float = 0.0  # clip weights (after normalising to a mean of 1) at this; 0 = no clip
    explicit_class_weights: tuple[float, ...] = ()  # one per class, class_weights='explicit' only
    train_metrics: bool = True  # phase 1 also scores the whole train set every epoch (search trials skip it)
    seed: int = 0  # head initialisation and shuffling
    device: str = "auto"  # 'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:N'
    amp: bool = False  # bfloat16/float16 autocast for the head; CUDA only, ignored on CPU
    # CPU: flush subnormal floats to zero while training (sweeper.training.denormals); False only to measure the stall
    flush_denormals: bool = True
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    gpu_share: float = 1.0  # part of the GPU's memory this run may use (a trial's --gpus-per-trial), capped on CUDA
    gpu_memory_gib: float = 0.0  # GiB of the card the shares divide (--gpu-memory: a smaller or shared card); 0 = all

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), _field_types()[f.name]))
        checks = [
            (self.lr > 0, "lr", "must be > 0"),
            (0 <= self.flip_prob <= 1, "flip_prob", "must be in [0, 1]"),
            (self.epochs >= 1, "epochs", "must be >= 1"),
            (self.schedule_epochs >= 0, "schedule_epochs", "must be >= 0 (0 = the run's own epochs)"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1"),
            (0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
            (self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0"),
            (0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]"),
            (self.class_weight_power >= 0, "class_weight_power", "must be >= 0"),
            (self.class_weight_max >= 0, "class_weight_max", "must be >= 0 (0 = no clip)"),
            (self.image_height % 14 == 0 and self.image_height > 0, "image_height", "must be a positive multiple of 14"),
            (self.image_width % 14 == 0 and self.image_width > 0, "image_width", "must be a positive multiple of 14"),
            (self.threads >= 0, "threads", "must be >= 0"),
            (0 < self.gpu_share <= 1, "gpu_share", "must be in (0, 1]"),
            (self.gpu_memory_gib >= 0, "gpu_memory_gib", "must be >= 0 (0 = the whole card)"),
            (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), "device",
             "must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
            (all(w >= 0 for w in self.explicit_class_weights), "explicit_class_weights", "must all be >= 0"),
            ((self.class_weights == ClassWeighting.EXPLICIT) == bool(self.explicit_class_weights),
             "explicit_class_weights", "is given exactly when class_weights is 'explicit'"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise SweeperError(f"config field '{name}' {why} (got {getattr(self, name)!r})")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "config") -> "TrainConfig":
        """Build a config from a mapping, failing on unknown keys with the list of known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SweeperError(f"{source}: unknown config key '{unknown[0]}' (known keys: {', '.join(sorted(known))})")
        return cls(**dict(values))

    @property
    def train_label_mode(self) -> LabelMode:
        """The label mode training uses (`train_labels` resolved against `label_mode`)."""
        return self.label_mode if self.train_labels == TrainLabels.SAME else LabelMode(self.train_labels.value)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed, validated like a new config."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (enums as their strings, tuples as lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.value if isinstance(v, enum.Enum) else list(v) if isinstance(v, tuple) else v
        return out


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """Turn JSON/YAML/CLI values into the field's type, or raise a one-line error."""
    try:
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            return kind(value.value if isinstance(value, enum.Enum) else str(value).lower())
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
                return value.lower() in {"true", "1", "yes"}
            raise TypeError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise TypeError
            return value
        if typing.get_origin(kind) is tuple:
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise TypeError
            return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        allowed = f" (one of: {', '.join(m.value for m in kind)})" if isinstance(kind, type) and issubclass(kind, enum.Enum) else ""
        tname = getattr(kind, "__name__", str(kind))
        raise SweeperError(f"config field '{name}' has an invalid value {value!r}: expected {tname}{allowed}") from None
    return value


PHASE1 = TrainConfig()  # the organisers' settings, unchanged
PUBLISHED_BASELINE_IOU = 0.2971  # phase 1's best val IoU on the real data (per-batch metric, epoch 10)
