"""Tests for sweeper.search.space: loading, validation messages, sampling, the baseline point, to_config."""

from __future__ import annotations

import math
import pickle
import textwrap
from pathlib import Path

import optuna
import pytest
from conftest import ROOT

from sweeper.errors import SweeperError
from sweeper.search.space import AshaSettings, ParamType, SearchSpace, load_space
from sweeper.training.config import ClassWeighting, Optimizer, Schedule, TrainConfig

PHASE2 = ROOT / "search_spaces" / "phase2.yaml"
SMOKE = ROOT / "search_spaces" / "smoke.yaml"

# A valid space every bad case below is one edit away from.
GOOD = """\
metric: val_iou
mode: max
trials: 4
max_concurrent: 2
asha: {max_epochs: 10, grace_period: 2, reduction_factor: 3}
fixed: {train_metrics: false}
params:
  lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}
  epochs: {type: int, low: 4, high: 10}
  optimizer: {type: categorical, choices: [sgd, adam]}
  momentum: {type: uniform, low: 0.8, high: 0.99, when: {optimizer: [sgd]}}
"""


@pytest.fixture(autouse=True)
def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_for(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(SweeperError) as info:
        load_space(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


# --- the shipped files -------------------------------------------------------------------------

def test_phase2_loads_with_the_documented_settings() -> None:
    space = load_space(PHASE2)
    assert (space.name, space.metric, space.mode, space.trials, space.max_concurrent) == ("phase2", "val_iou", "max", 12, 2)
    assert space.asha == AshaSettings(max_epochs=10, grace_period=1, reduction_factor=3)
    assert space.fixed == {"train_metrics": False}
    assert space.param_names == ("lr", "epochs", "optimizer", "momentum", "weight_decay", "schedule",
                                 "warmup_epochs", "class_weights", "class_weight_power", "class_weight_max",
                                 "batch_size")
    by_name = {p.name: p for p in space.params}
    assert (by_name["lr"].type, by_name["lr"].low, by_name["lr"].high) == (ParamType.LOGUNIFORM, 1e-5, 1e-2)
    assert by_name["optimizer"].choices == ("sgd", "adam", "adamw")
    assert by_name["class_weights"].choices == tuple(w.value for w in ClassWeighting if w is not ClassWeighting.EXPLICIT)
    assert by_name["class_weight_max"].choices == (0.0, 5.0, 20.0)
    assert by_name["batch_size"].choices == (2, 4, 8)
    assert by_name["momentum"].when == (("optimizer", ("sgd",)),)
    assert by_name["weight_decay"].when == (("optimizer", ("adam", "adamw")),)


def test_phase2_baseline_is_phase1() -> None:
    space = load_space(PHASE2)
    assert space.baseline_point() == {"lr": 1e-4, "epochs": 10, "optimizer": "sgd", "momentum": 0.9,
                                      "schedule": "constant", "class_weights": "none", "batch_size": 2}
    # trial 0 trains exactly like phase 1; only the extra train-set scoring is off
    assert space.to_config(space.baseline_point()) == TrainConfig(train_metrics=False)


def test_smoke_is_tiny() -> None:
    space = load_space(SMOKE)
    assert (space.trials, space.asha.max_epochs, space.asha.grace_period) == (3, 2, 1)
    assert space.fixed == {"epochs": 2, "train_metrics": False}
    assert space.param_names == ("lr", "optimizer", "momentum")
    assert space.baseline_point() == {"lr": 1e-4, "optimizer": "sgd", "momentum": 0.9}
    assert space.to_config(space.baseline_point()).epochs == 2


# --- validation: one line naming the file and the key ------------------------------------------

BAD_CASES = {
    "unknown top-level key": (GOOD.replace("trials: 4", "trails: 4"),
                              "trails: unknown key", "did you mean 'trials'"),
    "missing top-level key": (GOOD.replace("metric: val_iou\n", ""), "metric: missing required key"),
    "unknown asha key": (GOOD.replace("grace_period", "grace"), "asha.grace: unknown key"),
    "unknown param key": (GOOD.replace("high: 1.0e-2}", "high: 1.0e-2, step: 2}"), "params.lr.step: unknown key"),
    "choices on a numeric type": (GOOD.replace("high: 1.0e-2}", "high: 1.0e-2, choices: [1]}"),
                                  "params.lr.choices: unknown key"),
    "param not a TrainConfig field": (GOOD.replace("  lr:", "  learning_rate:"),
                                      "params.learning_rate: 'learning_rate' is not a TrainConfig field"),
    "unknown type": (GOOD.replace("type: loguniform", "type: normal"), "params.lr.type: unknown type 'normal'"),
    "low above high": (GOOD.replace("low: 1.0e-5, high: 1.0e-2", "low: 0.1, high: 0.01"),
                       "params.lr: low 0.1 is above high 0.01"),
    "low equals high": (GOOD.replace("low: 4, high: 10", "low: 10, high: 10"), "params.epochs: low 10 equals high 10"),
    "non-positive log low": (GOOD.replace("low: 1.0e-5", "low: 0.0"), "params.lr.low: must be > 0 for a log scale"),
    "string bound": (GOOD.replace("low: 1.0e-5", "low: 1e-5"), "params.lr.low: expected a number, got the string '1e-5'"),
    "bool bound": (GOOD.replace("low: 0.8", "low: true"), "params.momentum.low: expected a number"),
    "int param with float bounds": (GOOD.replace("low: 4, high: 10", "low: 4.0, high: 10"),
                                    "params.epochs.low: expected an integer, got 4.0"),
    "float type on an int field": (GOOD.replace("epochs: {type: int", "epochs: {type: uniform"),
                                   "params.epochs.type: uniform needs a float field"),
    "bound TrainConfig rejects": (GOOD.replace("high: 0.99", "high: 1.5"), "params.momentum.high: config field 'momentum'"),
    "unknown optimiser choice": (GOOD.replace("[sgd, adam]", "[sgd, rmsprop]"),
                                 "params.optimizer.choices[1]: config field 'optimizer' has an invalid value 'rmsprop'"),
    "unknown class-weight choice": (GOOD + "  class_weights: {type: categorical, choices: [none, focal]}\n",
                                    "params.class_weights.choices[1]: config field 'class_weights'"),
    "choice that needs another field": (GOOD + "  class_weights: {type: categorical, choices: [none, explicit]}\n",
                                        "params.class_weights.choices[1]: config field 'explicit_class_weights'"),
    "duplicate choice": (GOOD.replace("[sgd, adam]", "[sgd, SGD]"), "params.optimizer.choices[1]: 'sgd' is listed twice"),
    "empty choices": (GOOD.replace("[sgd, adam]", "[]"), "params.optimizer.choices: expected a non-empty list"),
    "when names an unknown param": (GOOD.replace("when: {optimizer:", "when: {solver:"),
                                    "params.momentum.when.solver: 'solver' is not a param declared earlier"),
    "when names a later param": (GOOD + "  weight_decay: {type: uniform, low: 0.0, high: 0.1, when: {schedule: [cosine]}}\n"
                                        "  schedule: {type: categorical, choices: [constant, cosine]}\n",
                                 "params.weight_decay.when.schedule: 'schedule' is declared below it; move it above"),
    "when names a numeric param": (GOOD.replace("when: {optimizer: [sgd]}", "when: {lr: [0.001]}"),
                                   "params.momentum.when.lr: 'lr' is not categorical"),
    "when value not among choices": (GOOD.replace("when: {optimizer: [sgd]}", "when: {optimizer: [adamw]}"),
                                     "params.momentum.when.optimizer: 'adamw' is not among its choices"),
    "fixed value TrainConfig rejects": (GOOD.replace("train_metrics: false", "optimizer: lbfgs"),
                                        "fixed.optimizer: config field 'optimizer' has an invalid value 'lbfgs'"),
    "fixed key not a field": (GOOD.replace("train_metrics: false", "warmup: 2"), "fixed.warmup: 'warmup' is not a TrainConfig field",
                               "did you mean 'warmup_epochs'"),
    "fixed and searched": (GOOD.replace("train_metrics: false", "lr: 0.001"), "params.lr: is also set in fixed"),
    "bad mode": (GOOD.replace("mode: max", "mode: maximise"), "mode: must be 'min' or 'max'"),
    "grace above max_epochs": (GOOD.replace("grace_period: 2", "grace_period: 12"),
                               "asha.grace_period: 12 is above asha.max_epochs 10"),
    "reduction factor below 2": (GOOD.replace("reduction_factor: 3", "reduction_factor: 1"),
                                 "asha.reduction_factor: must be >= 2"),
    "epochs param above max_epochs": (GOOD.replace("low: 4, high: 10", "low: 4, high: 12"),
                                      "params.epochs.high: 12 is above asha.max_epochs 10"),
    "default epochs above max_epochs": (GOOD.replace("  epochs: {type: int, low: 4, high: 10}\n", "")
                                        .replace("max_epochs: 10", "max_epochs: 5"),
                                        "asha.max_epochs: trials run 10 epochs (the default)"),
    "fixed epochs above max_epochs": (GOOD.replace("  epochs: {type: int, low: 4, high: 10}\n", "")
                                      .replace("train_metrics: false", "epochs: 12"), "fixed.epochs: trials run 12 epochs"),
    "schedule shorter than the longest trial": (GOOD.replace("train_metrics: false", "schedule_epochs: 8"),
                                                "fixed.schedule_epochs: 8 is below the most epochs a trial may run (10)"),
    "baseline outside a range": (GOOD.replace("low: 1.0e-5, high: 1.0e-2", "low: 1.0e-3, high: 1.0e-2"),
                                 "params.lr: excludes the phase-1 baseline value 0.0001",
                                 "or set lr under fixed:"),
    "baseline outside choices": (GOOD.replace("[sgd, adam]", "[adam, adamw]").replace("when: {optimizer: [sgd]}",
                                                                                     "when: {optimizer: [adam]}"),
                                 "params.optimizer: excludes the phase-1 baseline value 'sgd'"),
    "baseline outside a conditional range": (GOOD.replace("low: 0.8, high: 0.99", "low: 0.95, high: 0.99"),
                                             "params.momentum: excludes the phase-1 baseline value 0.9"),
    "trials not an integer": (GOOD.replace("trials: 4", "trials: many"), "trials: expected a number, got the string 'many'"),
    "zero trials": (GOOD.replace("trials: 4", "trials: 0"), "trials: must be >= 1"),
    "duplicate key": (GOOD + "  lr: {type: uniform, low: 0.001, high: 0.01}\n",
                      "YAML error at line 12, column 3", "duplicate key 'lr'"),
    "YAML syntax error": (GOOD.replace("mode: max", "mode: [max"), "YAML error at line"),
    "top level is a list": ("- metric\n- mode\n", "the top level must be a mapping", "got a list"),
    "empty file": ("", "the top level must be a mapping", "got an empty file"),
    "param spec not a mapping": (GOOD.replace("{type: int, low: 4, high: 10}", "10"), "params.epochs: expected a mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_invalid_space_names_file_and_key(tmp_path: Path, case: str) -> None:
    text, *expected = BAD_CASES[case]
    message = error_for(tmp_path, text)
    for part in expected:
        assert part in message


def test_good_space_loads(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, GOOD, "good.yaml"))
    assert space.name == "good"
    assert space.param_names == ("lr", "epochs", "optimizer", "momentum")


def test_yaml_error_gives_line(tmp_path: Path) -> None:
    message = error_for(tmp_path, GOOD.replace("mode: max", "mode: max: min"))
    assert message.endswith("YAML error at line 2, column 10: mapping values are not allowed here")


def test_a_binary_file_is_not_a_yaml_text_file(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xb0\xff")
    with pytest.raises(SweeperError) as e:
        load_space(path)
    assert str(e.value) == f"{path}: not a YAML text file (binary content at byte 0)"  # not a codec's words


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SweeperError, match=r"nope\.yaml: no such search-space file$"):
        load_space(path)


def test_choices_are_canonicalised(tmp_path: Path) -> None:
    text = GOOD.replace("[sgd, adam]", "[SGD, Adam]") + "  class_weight_max: {type: categorical, choices: [0, 5]}\n"
    space = load_space(write(tmp_path, text, "ok.yaml"))
    by_name = {p.name: p for p in space.params}
    assert by_name["optimizer"].choices == ("sgd", "adam")
    assert by_name["momentum"].when == (("optimizer", ("sgd",)),)
    assert by_name["class_weight_max"].choices == (0.0, 5.0)  # a float field keeps float choices


# --- sampling --------------------------------------------------------------------------------

def test_suggest_respects_bounds_and_conditions() -> None:
    space = load_space(PHASE2)
    by_name = {p.name: p for p in space.params}
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        config = space.suggest(trial)
        assert config["train_metrics"] is False
        assert set(trial.params) == set(config) - set(space.fixed)
        space.to_config(config)  # every sample is a valid TrainConfig
        return -abs(math.log10(config["lr"]) + 3)  # dummy objective: prefer lr near 1e-3

    study.optimize(objective, n_trials=30)
    seen: dict[str, set[object]] = {"optimizer": set(), "schedule": set(), "class_weights": set()}
    for t in study.trials:
        params = t.params
        for name, value in params.items():
            assert by_name[name].contains(value), (name, value)
        for name in seen:
            seen[name].add(params[name])
        assert ("momentum" in params) == (params["optimizer"] == "sgd")
        assert ("weight_decay" in params) == (params["optimizer"] in ("adam", "adamw"))
        assert ("warmup_epochs" in params) == (params["schedule"] == "warmup")
        assert ("class_weight_power" in params) == (params["class_weights"] == "power")
        assert ("class_weight_max" in params) == (params["class_weights"] != "none")
        assert 4 <= params["epochs"] <= 10 and isinstance(params["epochs"], int)
        assert 1e-5 <= params["lr"] <= 1e-2
        assert params["batch_size"] in (2, 4, 8)
    # 30 trials reach both sides of every condition, so the asserts above tested something
    assert seen["optimizer"] == {"sgd", "adam", "adamw"}
    assert {"constant", "warmup"} <= seen["schedule"]
    assert {"none", "power"} <= seen["class_weights"]


def test_baseline_enqueued_comes_back_as_trial_0() -> None:
    space = load_space(PHASE2)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial(space.baseline_point())
    configs: list[dict[str, object]] = []
    study.optimize(lambda trial: configs.append(space.suggest(trial)) or 0.0, n_trials=2)
    assert study.trials[0].params == space.baseline_point()
    assert configs[0] == {**space.baseline_point(), "train_metrics": False}
    assert space.to_config(configs[0]) == TrainConfig(train_metrics=False)


def test_to_config_merges_defaults_fixed_and_params() -> None:
    space = load_space(SMOKE)
    config = space.to_config({"lr": 3e-3, "optimizer": "adam"})
    assert config == TrainConfig(lr=3e-3, optimizer=Optimizer.ADAM, epochs=2, train_metrics=False)
    assert config.schedule is Schedule.CONSTANT and config.momentum == 0.9  # untouched defaults
    with pytest.raises(SweeperError, match="smoke.yaml: unknown config key 'learning_rate'"):
        space.to_config({"learning_rate": 1e-3})


def test_space_is_picklable_for_ray() -> None:
    space = load_space(PHASE2)
    copy = pickle.loads(pickle.dumps(space.suggest))  # Ray pickles the searcher, bound method included
    assert copy.__self__ == space


def test_ray_optuna_search_define_by_run() -> None:
    """Ray's OptunaSearch records our suggest_* calls, merges our returned dict and runs trial 0 first."""
    search_mod = pytest.importorskip("ray.tune.search.optuna")
    space = load_space(PHASE2)
    searcher = search_mod.OptunaSearch(space=space.suggest, metric=space.metric, mode=space.mode,
                                       points_to_evaluate=[space.baseline_point()],
                                       sampler=optuna.samplers.TPESampler(seed=0))
    first = searcher.suggest("trial_0")
    assert first == {**space.baseline_point(), "train_metrics": False}
    searcher.on_trial_complete("trial_0", {space.metric: 0.5, "training_iteration": 10})
    second = searcher.suggest("trial_1")
    assert second["train_metrics"] is False
    assert set(second) - {"train_metrics"} <= set(space.param_names)
    assert isinstance(space.to_config(second), TrainConfig)


def test_suggest_returns_fixed_and_sampled_only(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, GOOD, "good.yaml"))
    trial = optuna.trial.FixedTrial({"lr": 1e-3, "epochs": 5, "optimizer": "adam"})
    assert space.suggest(trial) == {"lr": 1e-3, "epochs": 5, "optimizer": "adam", "train_metrics": False}
    assert isinstance(space, SearchSpace)


def test_find_space_takes_an_existing_path_else_a_shipped_name(tmp_path, monkeypatch):
    from sweeper.search.space import SPACES_DIR, find_space

    monkeypatch.chdir(tmp_path)
    assert find_space("smoke") == SPACES_DIR / "smoke.yaml" and find_space("phase2.yaml") == SPACES_DIR / "phase2.yaml"
    (tmp_path / "smoke.yaml").write_text("metric: val_iou\n")  # a file of the user's own wins over the shipped one
    assert find_space("smoke.yaml") == Path("smoke.yaml")
    assert find_space("elsewhere/smoke.yaml") == Path("elsewhere/smoke.yaml")  # a missing path stays missing
    assert find_space("nosuch") == Path("nosuch")


def test_a_schedule_shared_by_all_trials_reaches_every_trial_config(tmp_path: Path) -> None:
    text = GOOD.replace("train_metrics: false", "schedule_epochs: 10")
    path = tmp_path / "shared.yaml"
    path.write_text(text)
    space = load_space(path)
    assert space.to_config({"epochs": 4}).schedule_epochs == 10  # a 4-epoch trial runs the first 4 of 10
    assert space.to_config(space.baseline_point()).schedule_epochs == 10
