"""The one resume decision: whether a sweep's run folder may continue, and with what (`decide`).

A resume is refused, in one line naming the field, the recorded value and the given one, when:
- the folder is not this user's own, or others can write it (a resume unpickles Ray's state there);
- it holds no sweep (no sweep.json) or one too old to say what it was started with;
- its copy of the space was edited, or a --space given differs from it (the first differing key is named);
- an option given on the command line differs from the one the sweep was started with (data, backbone,
  trials, seed, label mode, AMP, cache dtype, ...);
- the data folder's files changed since (their fingerprint).
What only loading reveals (the backbone's weights digest) is checked by `Resume.check_loaded`, on the same
record. `sweeper search --resume` calls `decide` once, before any work.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeper import files
from sweeper.data.dataset import dataset_fingerprint
from sweeper.errors import SweeperError
from sweeper.files import dumps
from sweeper.rundir.layout import EXPERIMENT_DIR, SPACE_COPY, SWEEP_FILE


@dataclass(frozen=True)
class Resume:
    """A sweep folder that may resume: what it was started with, and what its trials ran with."""

    run_dir: Path
    saved: dict[str, Any]  # sweep.json
    recorded: dict[str, Any]  # what the sweep was started with (`started_with`)

    @property
    def space_path(self) -> Path:
        return self.run_dir / SPACE_COPY

    @property
    def trial_overrides(self) -> dict[str, Any]:
        """The trials' command-line settings on top of the space, as the sweep ran them."""
        return dict(self.saved.get("trial_overrides") or {})

    @property
    def weights_path(self) -> Path | None:
        path = (self.saved.get("backbone") or {}).get("weights_path")
        return Path(path) if path else None

    def check_loaded(self, inputs: dict[str, Any]) -> None:
        """The inputs as this resume loaded them (weights digest, label mode, size) against the recorded ones."""
        check_resume(self.run_dir, self.recorded, inputs)


def decide(run_dir: Path, *, given: dict[str, Any], given_space: Path | None) -> Resume:
    """Whether `run_dir` may resume with the options `given` on the command line (only those given; a field the
    sweep did not record, from an older version, is not checked) and the space file `given_space`."""
    run_dir = Path(run_dir)
    if not (run_dir / SWEEP_FILE).is_file():
        raise SweeperError(f"{run_dir}: no sweep to resume here (missing {SWEEP_FILE})")
    check_trusted(run_dir)  # before reading anything of it
    saved = files.read_json(run_dir / SWEEP_FILE)
    recorded = started_with(saved)
    check_resume_space(run_dir, saved, recorded, given_space)
    check_resume(run_dir, recorded, given)
    if "data_fingerprint" in recorded:  # the same folder, but are its files still the same?
        check_resume(run_dir, recorded, {"data_fingerprint": dataset_fingerprint(Path(recorded["data_root"]))})
    return Resume(run_dir=run_dir, saved=saved, recorded=recorded)


def check_trusted(run_dir: Path) -> None:
    """Refuse to resume from a run folder that another user owns or can write: resuming unpickles Ray's state
    there, so it trusts the folder as much as running its code."""
    uid = os.getuid()
    exp_dir = Path(run_dir) / EXPERIMENT_DIR
    # no experiment folder: the sweep stopped before Ray wrote anything (a study database locked at the start)
    for path in (Path(run_dir), *([exp_dir, *sorted(exp_dir.iterdir())] if exp_dir.is_dir() else [])):
        st = path.lstat()
        if st.st_uid != uid:
            raise SweeperError(f"{path}: owned by another user (uid {st.st_uid}); --resume loads Ray's pickled "
                               f"state from here, which runs code: resume only your own run folders")
        if st.st_mode & 0o002:
            raise SweeperError(f"{path}: writable by other users (mode {st.st_mode & 0o777:o}); --resume loads "
                               f"Ray's pickled state from here, which runs code: chmod o-w it first if you trust it")


def started_with(saved: dict[str, Any]) -> dict[str, Any]:
    """What a sweep was started with (sweep.json's `started_with`; older sweeps: what their sweep.json says)."""
    try:
        legacy = {"data_root": saved["data"]["root"], "backbone": saved["backbone"]["name"],
                  "weights_digest": saved["backbone"]["weights_digest"], "trials": saved["options"]["trials"],
                  "seed": saved["options"]["seed"], "max_concurrent": saved["options"]["max_concurrent"],
                  "cache_dtype": saved["cache"]["dtype"]}
    except (KeyError, TypeError) as e:
        raise SweeperError(f"sweep.json: field {e} is missing; this folder cannot be resumed") from None
    return {**legacy, **(saved.get("started_with") or {})}


def check_resume_space(run_dir: Path, saved: dict[str, Any], recorded: dict[str, Any], given: Path | None) -> None:
    """Refuse a resume whose space differs from the sweep's: the run folder's copy edited since, or a --space
    file whose settings differ (named with the first key that differs; comments and layout may differ)."""
    copy = run_dir / SPACE_COPY
    started = (saved.get("space") or {}).get("source", "?")
    refused = f"{run_dir}: cannot resume with space = "
    if "space" in recorded and files.file_sha256(copy) != recorded["space"]:
        raise SweeperError(f"{refused}'{copy}': this copy of the space the sweep started with ({started}) was "
                           f"edited since; restore it, or start a new sweep with another --name")
    if given is None:
        return
    key = first_difference(_read_space(copy), _read_space(given))
    if key is not None:
        where, ran, now = key
        raise SweeperError(f"{refused}'{given}': the sweep was started with {copy} (a copy of {started}), and "
                           f"they differ at {where} ({ran!r} there, {now!r} here); its trials would be mixed with "
                           f"others: start a new sweep with another --name instead")


def _read_space(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SweeperError(f"{path}: cannot read ({getattr(e, 'strerror', None) or str(e).splitlines()[0]})") from None


def first_difference(a: Any, b: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """The first key (dotted path, in `a`'s order, then keys only `b` has) where two parsed YAML documents
    differ, with both values (None where a key is absent); None when they are equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*a, *(k for k in b if k not in a)]:
            found = first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{where}[{i}]")
            if found is not None:
                return found
        return None
    return None if a == b else (where or "(the whole file)", a, b)


def check_resume(run_dir: Path, recorded: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse a resume whose inputs differ from what the sweep was started with, naming the first field.

    `recorded` is sweep.json's `started_with`; a field it lacks (a sweep from an older version) is not checked.
    """
    for field, value in json.loads(dumps(current)).items():  # tuples and paths as JSON has them
        if field in recorded and recorded[field] != value:
            raise SweeperError(f"{run_dir}: cannot resume with {field} = {value!r}: the sweep was started with "
                               f"{recorded[field]!r}, and its trials would be mixed with others (start a new "
                               f"sweep with another --name instead)")
