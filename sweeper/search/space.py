"""Search spaces: YAML files shipped in `sweeper/search_spaces/` (linked as `search_spaces/` at the top of
a checkout), or any file of your own, validated on load into a frozen `SearchSpace`.

File format (every key is checked; an unknown one is an error):

    metric: val_iou            # what ranks trials: val_iou, val_miou, val_dice or val_acc (sweeper.training.objective)
    mode: max                  # 'max' or 'min'
    trials: 12                 # total trials, trial 0 (the phase-1 baseline) included
    max_concurrent: 2          # trials at once (optional, default 1)
    asha: {max_epochs: 10, grace_period: 2, reduction_factor: 3}
    fixed: {train_metrics: false}          # TrainConfig fields, the same in every trial (optional)
    params:                                # TrainConfig fields to search, sampled in this order
      lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}
      epochs: {type: int, low: 4, high: 10}
      optimizer: {type: categorical, choices: [sgd, adam, adamw]}
      momentum: {type: uniform, low: 0.8, high: 0.99, when: {optimizer: [sgd]}}

`type` is uniform, loguniform (floats), int (inclusive bounds) or categorical. `when` maps an
earlier categorical param to the values that switch this param on; all entries must hold.

`SearchSpace.suggest` is an Optuna define-by-run function that also fits Ray Tune's
`OptunaSearch(space=...)`: Ray wraps the trial to record every `suggest_*` value and merges
the dict we return over them, so returning sampled + fixed values is what both expect.

Why one module over 400 lines: it is one idea, the space file's schema, and each rule sits beside the
type it checks with its own one-line message (file and key named). Pydantic (installed with Ray) was
considered for the schema: its models would replace the dataclasses and the type checks, but not the
cross-field rules (`when` naming an earlier categorical, phase 1 inside every range, epochs against ASHA's
max, a shared schedule covering the longest run), and its errors are multi-line and name model fields,
not the file; rewriting them into our lines would take as much code as the checks it replaces.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from sweeper.errors import SweeperError, one_line
from sweeper.training.config import PHASE1, TrainConfig
from sweeper.training.objective import Objective, check_metric

TOP_KEYS = ("metric", "mode", "trials", "max_concurrent", "asha", "fixed", "params")
REQUIRED_TOP_KEYS = ("metric", "mode", "trials", "asha", "params")
ASHA_KEYS = ("max_epochs", "grace_period", "reduction_factor")
_MISSING = object()  # sentinel for "no matching choice"; never mutated


class ParamType(str, enum.Enum):
    """How a param is sampled."""

    UNIFORM = "uniform"  # float, uniform on [low, high]
    LOGUNIFORM = "loguniform"  # float, uniform in log space on [low, high]; low > 0
    INT = "int"  # integer on [low, high], both inclusive
    CATEGORICAL = "categorical"  # one of `choices`


_PARAM_KEYS: dict[ParamType, tuple[str, ...]] = {
    ParamType.UNIFORM: ("type", "low", "high", "when"),
    ParamType.LOGUNIFORM: ("type", "low", "high", "when"),
    ParamType.INT: ("type", "low", "high", "when"),
    ParamType.CATEGORICAL: ("type", "choices", "when"),
}


@dataclass(frozen=True)
class AshaSettings:
    """ASHA early stopping, in epochs (one Tune training iteration = one epoch)."""

    max_epochs: int  # ASHA max_t: no trial trains longer than this
    grace_period: int  # epochs every trial gets before it can be stopped
    reduction_factor: int  # keep the top 1/reduction_factor at each rung


@dataclass(frozen=True)
class ParamSpec:
    """One searched TrainConfig field: its distribution and when it is active."""

    name: str  # TrainConfig field
    type: ParamType
    low: float | int | None = None  # numeric types only, inclusive
    high: float | int | None = None  # numeric types only, inclusive
    choices: tuple[Any, ...] = ()  # categorical only, as TrainConfig.to_dict writes them ('sgd', 4, 0.5)
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (earlier categorical, values that enable this)

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether every `when` condition holds for the values sampled so far."""
        return all(name in values and values[name] in allowed for name, allowed in self.when)

    def contains(self, value: Any) -> bool:
        """Whether a value lies inside this param's range or choices."""
        if self.type is ParamType.CATEGORICAL:
            return any(_same(value, c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type is ParamType.INT and not float(value).is_integer():
            return False
        assert self.low is not None and self.high is not None
        return self.low <= value <= self.high

    def suggest(self, trial: Any) -> Any:
        """Ask the trial for this param's value (only `trial.suggest_*` calls, so Ray can record them)."""
        if self.type is ParamType.CATEGORICAL:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type is ParamType.INT:
            return trial.suggest_int(self.name, int(self.low), int(self.high))
        return trial.suggest_float(self.name, float(self.low), float(self.high),
                                   log=self.type is ParamType.LOGUNIFORM)

    def describe(self) -> str:
        """The range or choices as text, for error messages."""
        if self.type is ParamType.CATEGORICAL:
            return f"choices {list(self.choices)}"
        return f"{self.type.value} [{self.low}, {self.high}]"


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: what to optimise, how long, and the distributions."""

    name: str  # file stem, e.g. 'phase2'
    metric: str  # key the trainer reports every epoch that ranks trials, e.g. 'val_iou' (sweeper.training.objective)
    mode: Literal["min", "max"]
    trials: int  # total trials, trial 0 (the phase-1 baseline) included
    max_concurrent: int  # trials at once
    asha: AshaSettings
    fixed: dict[str, Any]  # TrainConfig fields set the same in every trial, JSON-ready values
    params: tuple[ParamSpec, ...]  # searched fields, in sampling order
    source: str  # the file it came from, for messages

    @property
    def objective(self) -> Objective:
        """What ranks this space's trials: its metric and mode."""
        return Objective(self.metric, self.mode)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Define-by-run: sample every active param and return them with the fixed values."""
        sampled: dict[str, Any] = {}
        for p in self.params:
            if p.active(sampled):
                sampled[p.name] = p.suggest(trial)
        return {**self.fixed, **sampled}

    def baseline_point(self) -> dict[str, Any]:
        """Phase-1 values of every param active at phase 1: trial 0 for `points_to_evaluate`."""
        phase1 = PHASE1.to_dict()
        point: dict[str, Any] = {}
        for p in self.params:
            if p.active(point):
                point[p.name] = phase1[p.name]
        return point

    def to_config(self, params: Mapping[str, Any]) -> TrainConfig:
        """TrainConfig defaults, overridden by `fixed`, overridden by the given params."""
        return TrainConfig.from_dict({**self.fixed, **params}, source=self.source)

    def train_variants(self, label_mode: str) -> list[tuple[str, bool]]:
        """The train splits (label mode, mirrored) this space's trials can ask for besides `label_mode`'s plain
        one: each `train_labels` value it fixes or searches, and mirrored ones when `flip_prob` can exceed 0.
        The sweep caches them before trials start (phase 3's dimensions train on the same cache)."""
        def values(name: str) -> list[Any]:
            spec = next((p for p in self.params if p.name == name), None)
            if spec is None:
                return [self.fixed[name]] if name in self.fixed else []
            return list(spec.choices) if spec.type == ParamType.CATEGORICAL else [spec.low, spec.high]

        modes = {label_mode, *(label_mode if v == "same" else str(v) for v in values("train_labels"))}
        flips = (False, True) if any(float(v) > 0 for v in values("flip_prob")) else (False,)
        return [(m, f) for m in sorted(modes) for f in flips if (m, f) != (label_mode, False)]

    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of the searched fields, in sampling order."""
        return tuple(p.name for p in self.params)


SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"  # the spaces shipped with the package


def shipped_spaces() -> list[str]:
    """The names of the spaces shipped with the package ('phase2', 'phase3', 'smoke'), for `--space`'s help."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def default_space_path() -> Path:
    """The phase-2 space shipped inside the package (found from any folder, installed or not)."""
    return SPACES_DIR / "phase2.yaml"


def find_space(name_or_path: str | Path) -> Path:
    """A space file: the path as given when it exists, else a shipped space by name ('smoke', 'phase2.yaml')."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = SPACES_DIR / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    # a bare name only: 'some/dir/smoke.yaml' that does not exist stays a missing file, not a shipped one
    return shipped if len(path.parts) == 1 and shipped.is_file() else path


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file; any problem is a one-line SweeperError."""
    src = str(path)
    raw = _read_yaml(Path(path), src)
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else f"a {type(raw).__name__}"
        raise SweeperError(f"{src}: the top level must be a mapping of {', '.join(TOP_KEYS)} (got {got})")
    _check_keys(raw, TOP_KEYS, src, "", required=REQUIRED_TOP_KEYS)

    metric = check_metric(raw["metric"], src)  # only a metric that means the same in every trial ranks them
    mode = raw["mode"]
    if mode not in ("min", "max"):
        raise SweeperError(f"{src}: mode: must be 'min' or 'max', got {mode!r}")
    trials = _integer(raw["trials"], src, "trials", minimum=1)
    max_concurrent = _integer(raw.get("max_concurrent", 1), src, "max_concurrent", minimum=1)
    asha = _asha(raw["asha"], src)

    fixed_raw = raw.get("fixed")
    if fixed_raw is None:  # absent, or `fixed:` with nothing under it
        fixed_raw = {}
    if not isinstance(fixed_raw, dict):
        raise SweeperError(f"{src}: fixed: expected a mapping of TrainConfig fields, got {fixed_raw!r}")
    for key in fixed_raw:
        _check_field(key, src, f"fixed.{key}")
    base = _build(fixed_raw, src, "fixed")
    canonical = base.to_dict()  # enums as strings, 'yes' as True: the values a trial's config will hold
    fixed = {key: canonical[key] for key in fixed_raw}

    params_raw = raw["params"]
    if not isinstance(params_raw, dict) or not params_raw:
        raise SweeperError(f"{src}: params: expected a non-empty mapping of TrainConfig fields to distributions")
    params: list[ParamSpec] = []
    names = list(params_raw)
    for i, (name, spec) in enumerate(params_raw.items()):
        path_ = f"params.{name}"
        _check_field(name, src, path_)
        if name in fixed:
            raise SweeperError(f"{src}: {path_}: is also set in fixed; keep it in one place")
        params.append(_param(str(name), spec, base, params, names[i + 1:], src))

    space = SearchSpace(name=Path(path).stem, metric=metric, mode=mode, trials=trials,
                        max_concurrent=max_concurrent, asha=asha, fixed=fixed,
                        params=tuple(params), source=src)
    _check_epochs(space, base)
    _check_baseline(space)
    return space


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which plain YAML silently resolves to the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path, src: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SweeperError(f"{src}: no such search-space file") from None
    except IsADirectoryError:
        raise SweeperError(f"{src}: is a directory, not a search-space file") from None
    except UnicodeDecodeError as e:
        raise SweeperError(f"{src}: not a YAML text file (binary content at byte {e.start})") from None
    except OSError as e:
        raise SweeperError(f"{src}: cannot read: {one_line(str(e))}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"
        problem = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context", None)
        detail = f"{context}: {problem}" if context else problem
        raise SweeperError(f"{src}: YAML error at {where}: {one_line(detail)}") from None


def _check_keys(mapping: Mapping[Any, Any], known: tuple[str, ...], src: str, prefix: str,
                required: tuple[str, ...] = ()) -> None:
    """Fail on the first unknown key (with a did-you-mean) or missing required key."""
    for key in mapping:
        if key not in known:
            raise SweeperError(f"{src}: {prefix}{key}: unknown key (known: {', '.join(known)}){_did_you_mean(key, known)}")
    for key in required:
        if key not in mapping:
            raise SweeperError(f"{src}: {prefix}{key}: missing required key")


def _check_field(name: Any, src: str, path: str) -> None:
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    if name not in known:
        raise SweeperError(f"{src}: {path}: '{name}' is not a TrainConfig field{_did_you_mean(name, known)}")


def _did_you_mean(name: Any, known: typing.Sequence[str]) -> str:
    """A hint naming the likeliest intended key: one containing the typo ('warmup'), else the closest spelling."""
    word = str(name).lower()
    containing = sorted((k for k in known if word and word in k), key=len)
    close = containing or difflib.get_close_matches(word, known, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _build(values: Mapping[str, Any], src: str, path: str, *, base: TrainConfig | None = None) -> TrainConfig:
    """A TrainConfig with these values, its error reworded to name the file and key path."""
    try:
        if base is None:
            return TrainConfig.from_dict(values, source=src)
        return base.replace(**values)
    except SweeperError as e:
        message = str(e)
        # TrainConfig names the bad field as "config field 'x'"; point at it when it is ours
        field = re.search(r"config field '(\w+)'", message)
        if path == "fixed" and field and field.group(1) in values:
            path = f"fixed.{field.group(1)}"
        raise SweeperError(f"{src}: {path}: {message}") from None


def _number(value: Any, src: str, path: str, *, integer: bool) -> float | int:
    """A YAML number; strings, bools and (for integers) fractional floats are errors."""
    if isinstance(value, str):
        hint = ""
        try:
            float(value)
            # PyYAML follows YAML 1.1, where 1e-5 (no dot) is a string, not a float
            hint = " (YAML reads exponents without a dot as text: write e.g. 1.0e-5)"
        except ValueError:
            pass
        raise SweeperError(f"{src}: {path}: expected a number, got the string {value!r}{hint}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SweeperError(f"{src}: {path}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise SweeperError(f"{src}: {path}: expected a finite number, got {value!r}")
    if integer and not isinstance(value, int):
        raise SweeperError(f"{src}: {path}: expected an integer, got {value!r}")
    return value


def _integer(value: Any, src: str, path: str, *, minimum: int) -> int:
    number = int(_number(value, src, path, integer=True))
    if number < minimum:
        raise SweeperError(f"{src}: {path}: must be >= {minimum}, got {number}")
    return number


def _asha(raw: Any, src: str) -> AshaSettings:
    if not isinstance(raw, dict):
        raise SweeperError(f"{src}: asha: expected a mapping with {', '.join(ASHA_KEYS)}, got {raw!r}")
    _check_keys(raw, ASHA_KEYS, src, "asha.", required=ASHA_KEYS)
    max_epochs = _integer(raw["max_epochs"], src, "asha.max_epochs", minimum=1)
    grace = _integer(raw["grace_period"], src, "asha.grace_period", minimum=1)
    reduction = _integer(raw["reduction_factor"], src, "asha.reduction_factor", minimum=2)
    if grace > max_epochs:
        raise SweeperError(f"{src}: asha.grace_period: {grace} is above asha.max_epochs {max_epochs}")
    return AshaSettings(max_epochs=max_epochs, grace_period=grace, reduction_factor=reduction)


def _param(name: str, spec: Any, base: TrainConfig, earlier: list[ParamSpec], later: typing.Collection[Any],
           src: str) -> ParamSpec:
    """Validate one `params` entry against TrainConfig and the params declared before it."""
    path = f"params.{name}"
    if not isinstance(spec, dict):
        raise SweeperError(f"{src}: {path}: expected a mapping with a 'type', got {spec!r}")
    if "type" not in spec:
        raise SweeperError(f"{src}: {path}.type: missing required key")
    try:
        kind = ParamType(spec["type"])
    except ValueError:
        raise SweeperError(f"{src}: {path}.type: unknown type {spec['type']!r} "
                           f"(one of: {', '.join(t.value for t in ParamType)})") from None
    _check_keys(spec, _PARAM_KEYS[kind], src, f"{path}.",
                required=tuple(k for k in _PARAM_KEYS[kind] if k not in ("type", "when")))
    field_type = typing.get_type_hints(TrainConfig)[name]
    when = _when(spec.get("when"), earlier, later, src, f"{path}.when")

    if kind is ParamType.CATEGORICAL:
        if typing.get_origin(field_type) is tuple:
            raise SweeperError(f"{src}: {path}: a tuple field cannot be searched; set it in fixed")
        raw_choices = spec["choices"]
        if not isinstance(raw_choices, list) or not raw_choices:
            raise SweeperError(f"{src}: {path}.choices: expected a non-empty list, got {raw_choices!r}")
        choices: list[Any] = []
        for i, choice in enumerate(raw_choices):
            # TrainConfig is the authority on valid values; keep its canonical form ('SGD' -> 'sgd')
            value = _build({name: choice}, src, f"{path}.choices[{i}]", base=base).to_dict()[name]
            if any(_same(value, c) for c in choices):
                raise SweeperError(f"{src}: {path}.choices[{i}]: {value!r} is listed twice")
            choices.append(value)
        return ParamSpec(name=name, type=kind, choices=tuple(choices), when=when)

    if kind is ParamType.INT:
        if field_type not in (int, float):
            raise SweeperError(f"{src}: {path}.type: int does not fit a {field_type.__name__} field")
    elif field_type is not float:
        raise SweeperError(f"{src}: {path}.type: {kind.value} needs a float field, "
                           f"'{name}' is {getattr(field_type, '__name__', field_type)} (use int or categorical)")
    integer = kind is ParamType.INT
    low = _number(spec["low"], src, f"{path}.low", integer=integer)
    high = _number(spec["high"], src, f"{path}.high", integer=integer)
    if low >= high:
        relation = "equals" if low == high else "is above"
        raise SweeperError(f"{src}: {path}: low {low} {relation} high {high}")
    if kind is ParamType.LOGUNIFORM and low <= 0:
        raise SweeperError(f"{src}: {path}.low: must be > 0 for a log scale, got {low}")
    for bound, value in (("low", low), ("high", high)):
        _build({name: value}, src, f"{path}.{bound}", base=base)  # e.g. momentum high 1.0 is rejected
    return ParamSpec(name=name, type=kind, low=low if integer else float(low),
                     high=high if integer else float(high), when=when)


def _when(raw: Any, earlier: list[ParamSpec], later: typing.Collection[Any], src: str,
          path: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """Conditions on earlier categorical params, with values in their canonical form."""
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise SweeperError(f"{src}: {path}: expected a mapping of an earlier categorical param to a list of its choices")
    by_name = {p.name: p for p in earlier}
    conditions: list[tuple[str, tuple[Any, ...]]] = []
    for parent_name, values in raw.items():
        parent = by_name.get(parent_name)
        if parent is None or parent.type is not ParamType.CATEGORICAL:
            what = ("is declared below it; move it above" if parent_name in later else
                    "is not a param declared earlier" if parent is None else "is not categorical")
            raise SweeperError(f"{src}: {path}.{parent_name}: '{parent_name}' {what}; "
                               f"'when' may only name a categorical param declared above")
        listed = values if isinstance(values, list) else [values]
        allowed: list[Any] = []
        for value in listed:
            match = next((c for c in parent.choices if _same(_canonical(parent_name, value), c)), _MISSING)
            if match is _MISSING:
                raise SweeperError(f"{src}: {path}.{parent_name}: {value!r} is not among its choices {list(parent.choices)}")
            allowed.append(match)
        conditions.append((str(parent_name), tuple(allowed)))
    return tuple(conditions)


def _canonical(name: str, value: Any) -> Any:
    """The value as TrainConfig would store and write it, or the value unchanged if it rejects it."""
    try:
        return TrainConfig().replace(**{name: value}).to_dict()[name]
    except SweeperError:
        return value


def _same(a: Any, b: Any) -> bool:
    """Equality that also compares types, so True is not 1 and 2 is not 2.0 (choices carry the field's type)."""
    return type(a) is type(b) and a == b


def _check_epochs(space: SearchSpace, base: TrainConfig) -> None:
    """No trial may run more epochs than ASHA's max_t, or ASHA would cut it short."""
    src, max_t = space.source, space.asha.max_epochs
    for p in space.params:
        if p.name == "epochs":
            most = max(p.choices) if p.type is ParamType.CATEGORICAL else p.high
            key = "choices" if p.type is ParamType.CATEGORICAL else "high"
            if most > max_t:
                raise SweeperError(f"{src}: params.epochs.{key}: {most} is above asha.max_epochs {max_t}")
            _check_schedule_span(space, base, most)
            return
    _check_schedule_span(space, base, base.epochs)
    if base.epochs > max_t:
        where = "fixed.epochs" if "epochs" in space.fixed else "asha.max_epochs"
        raise SweeperError(f"{src}: {where}: trials run {base.epochs} epochs "
                           f"({'fixed' if 'epochs' in space.fixed else 'the default'}) but asha.max_epochs is {max_t}; "
                           f"set fixed.epochs or params.epochs within it")


def _check_schedule_span(space: SearchSpace, base: TrainConfig, most: int) -> None:
    """A schedule shared by all trials (fixed.schedule_epochs) must cover the longest of them."""
    if 0 < base.schedule_epochs < most:
        raise SweeperError(f"{space.source}: fixed.schedule_epochs: {base.schedule_epochs} is below the most epochs "
                           f"a trial may run ({most}); set it to asha.max_epochs ({space.asha.max_epochs})")


def _check_baseline(space: SearchSpace) -> None:
    """Trial 0 re-runs phase 1, so every phase-1 value the space samples must lie inside it."""
    point = space.baseline_point()
    for p in space.params:
        if p.name in point and not p.contains(point[p.name]):
            raise SweeperError(f"{space.source}: params.{p.name}: excludes the phase-1 baseline value "
                               f"{point[p.name]!r} ({p.describe()}); widen it so trial 0 can re-run phase 1, "
                               f"or set {p.name} under fixed: (every trial, trial 0 too, then uses that value)")
    _build(point, space.source, "baseline point", base=space.to_config({}))
