"""Option errors as argparse meets them (a number out of range, an unknown choice, a missing argument): one line
naming the option, what it allows and where to read more, exit code 2, no usage block."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

from sweeper.cli.main import main


def option_error(capsys, *argv: str) -> str:
    """The stderr of a command line argparse refuses; it must exit 2 and print nothing else."""
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    out = capsys.readouterr()
    assert e.value.code == 2 and out.out == ""
    return out.err


@pytest.mark.parametrize("argv, expected", [
    (["search", "--trials", "0"], "error: --trials: expected a whole number >= 1, got 0; see sweeper search -h"),
    (["search", "--max-concurrent", "0"],
     "error: --max-concurrent: expected a whole number >= 1, got 0; see sweeper search -h"),
    (["search", "--trials", "two"], "error: --trials: expected a whole number >= 1, got 'two'; see sweeper search -h"),
    (["search", "--cpus-per-trial", "0"], "error: --cpus-per-trial: expected a number > 0, got 0; "
                                          "see sweeper search -h"),
    (["confirm", "run", "--seeds", "-1"], "error: --seeds: expected a whole number >= 1, got -1; "
                                          "see sweeper confirm -h"),
    (["baseline", "--label-mode", "exact"], "error: --label-mode: expected one of phase1, nearest, got 'exact'; "
                                            "see sweeper baseline -h"),
    (["export", "run"], "error: --out: required; see sweeper export -h"),
    (["synth", "out", "--size", "10"], "error: --size: expected WIDTHxHEIGHT like 960x540, got '10'; "
                                       "see sweeper synth -h"),
])
def test_an_option_out_of_range_is_one_line_naming_it_and_its_range(capsys, argv, expected):
    assert option_error(capsys, *argv) == expected + "\n"


def test_an_unknown_command_or_option_is_one_line(capsys):
    assert option_error(capsys, "serach") == ("error: COMMAND: expected one of synth, baseline, search, confirm, plan, "
                                              "report, evaluate, export, cache, got 'serach'; see sweeper -h\n")
    assert option_error(capsys, "search", "--trails", "3") == ("error: unrecognized arguments: --trails 3; "
                                                               "see sweeper search -h\n")


def test_help_still_prints_the_full_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", "-h"])
    assert e.value.code == 0 and "--max-concurrent" in capsys.readouterr().out


def test_the_installed_entry_point_prints_one_line_too():
    got = subprocess.run([sys.executable, "-m", "sweeper", "search", "--trials", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert got.returncode == 2 and got.stdout == ""
    assert got.stderr.splitlines() == ["error: --trials: expected a whole number >= 1, got 0; see sweeper search -h"]


def test_help_lists_every_command_and_every_shipped_space(capsys):
    """Derived from what exists, so a new command or space file cannot be left out."""
    import argparse

    from sweeper.cli.main import build_parser
    from sweeper.search.space import SPACES_DIR

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert "plan" in commands
    assert f"{{{','.join(commands)}}}" in parser.format_help()
    spaces = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
    assert "phase3" in spaces
    for command in ("search", "plan"):
        text = " ".join(commands[command].format_help().split())
        assert all(name in text for name in spaces), (command, text)
