"""A run folder that can move: what Ray pickles about a sweep kept free of the folder's absolute path, and what
Ray restores on a resume pointed back at the folder it is in now.

Ray's OptunaSearch pickles its whole state, the Optuna study's storage (`sqlite:////<old path>/study.db`)
included, and Ray's SearchGenerator saves the experiment whose storage names the old experiment folder. A moved
or copied folder resumed from those would write into the original. Here the searcher's state is saved without
its storage (the study is opened again from the folder's own study.db on restore), an older sweep's state is
read without connecting the storage it holds, and the restored experiment is re-pointed to this run's folder.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

from sweeper.rundir.layout import EXPERIMENT_DIR

log = logging.getLogger(__name__)

STUDY_KEYS = ("_ot_study", "_storage", "_ot_trials")  # OptunaSearch attributes bound to one study.db


def portable_state(searcher) -> dict[str, Any]:
    """An OptunaSearch's state without its study: the trials as study-internal ids, the study by name."""
    state = {k: v for k, v in searcher.__dict__.items() if k not in STUDY_KEYS}
    state["_ot_trial_ids"] = {tid: t._trial_id for tid, t in searcher._ot_trials.items()}
    study = searcher.__dict__.get("_ot_study")
    state["_ot_study_name"] = study.study_name if study is not None else searcher._study_name
    return state


def read_searcher_state(path: str | Path) -> dict[str, Any]:
    """A searcher state file as `portable_state` has it; one written by an older version (with its storage
    pickled) is read without connecting that storage."""
    with open(path, "rb") as f:
        state = _DetachedUnpickler(f).load()
    if "_ot_trial_ids" not in state:
        state["_ot_trial_ids"] = {tid: t._trial_id for tid, t in state.get("_ot_trials", {}).items()}
        state["_ot_study_name"] = state.get("_study_name") or state["_ot_study"].study_name
    return {k: v for k, v in state.items() if k not in STUDY_KEYS}


def write_searcher_state(path: str | Path, state: dict[str, Any]) -> None:
    with open(path, "wb") as f:
        pickle.dump(state, f)


def attach_study(searcher, study_path: Path, previous=None) -> None:
    """Open the searcher's study in `study_path` (the folder's own study.db) and rebind its trials to it; the
    connections of a `previous` storage are closed (the study database is switched back out of WAL at the end)."""
    import optuna

    from sweeper.search.study_db import open_storage  # WAL, and a busy timeout

    if previous is not None and getattr(previous, "engine", None) is not None:
        previous.engine.dispose()
    searcher._storage = open_storage(study_path)
    searcher._ot_study = optuna.load_study(study_name=searcher._ot_study_name, storage=searcher._storage,
                                           sampler=searcher._sampler)
    searcher._ot_trials = {tid: optuna.Trial(searcher._ot_study, i) for tid, i in searcher._ot_trial_ids.items()}


class _DetachedUnpickler(pickle.Unpickler):
    """Unpickles with Optuna's RDBStorage replaced by a plain object: unpickling the real one connects to its
    URL (and creates the database file when it is missing)."""

    def find_class(self, module: str, name: str):
        if module.startswith("optuna.storages") and name == "RDBStorage":
            return _Detached
        return super().find_class(module, name)


class _Detached:
    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def search_generator(searcher, *, max_concurrent: int, run_dir: Path):
    """The searcher as Ray drives it (a SearchGenerator around a ConcurrencyLimiter), bound to `run_dir`.

    On a resume Ray restores both wrappers' saved state, which records what the sweep ran with before: the
    concurrency (kept as `max_concurrent` now: it changes no result) and the experiment, whose storage names
    the folder the sweep ran in (Ray 2.60 would create every new trial's folder there, in the original of a
    moved or copied folder). Both are set back to this run's.
    """
    from ray.tune.search import ConcurrencyLimiter as RayLimiter
    from ray.tune.search import SearchGenerator

    class ConcurrencyLimiter(RayLimiter):  # Ray keys the saved wrapper state by this class name: Ray's own
        def set_state(self, state: dict[str, Any]) -> None:
            super().set_state({**state, "max_concurrent": max_concurrent})

    class FolderSearchGenerator(SearchGenerator):
        def set_state(self, state: dict[str, Any]) -> None:
            super().set_state(state)
            storage = getattr(self._experiment, "storage", None)
            if storage is not None:
                storage.storage_path = storage.storage_fs_path = Path(run_dir).as_posix()
                storage.experiment_dir_name = EXPERIMENT_DIR

    return FolderSearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=max_concurrent))


def restorable(exp_dir: Path) -> bool:
    """Whether Ray saved a sweep's state in `exp_dir` whole: its tuner.pkl exists and its opcodes run to STOP.

    Ray writes tuner.pkl before any trial runs, and not atomically: a disk that filled then leaves it cut short.
    Such a sweep ran nothing, so its resume starts it anew in its study (no second baseline: `make_searcher`).
    The opcodes are only read, never run: unpickling would rebuild the trainable and its object refs.
    """
    import pickletools

    path = Path(exp_dir) / "tuner.pkl"
    if not path.is_file():
        return False
    try:
        for _ in pickletools.genops(path.read_bytes()):
            pass
    except ValueError:  # "pickle exhausted before seeing STOP" (or bytes that are no pickle)
        log.warning("%s is cut short (a full disk while Ray wrote it): the sweep starts anew in its study", path)
        return False
    return True
