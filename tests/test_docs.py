"""The docs and the code stay together: every `sweeper` command line in README.md, docs/*.md and
results/README.md parses with
today's CLI (without running it), and every relative link and every repository path named in backticks exists.

A command is a code line or an inline code span that starts with `sweeper`, `python -m sweeper` or
`.venv/bin/python -m sweeper` (after any `NAME=value` environment settings and `&&`). A concrete command is
parsed by the CLI's own parser (`sweeper.cli.main.build_parser`): the sub-command, every option, its type
and its choices. A synopsis (`[--trials N]`, `best\\|N`) is checked option by option: each option exists,
and each listed choice is one the option accepts.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from sweeper.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
PREFIXES = (("sweeper",), ("python", "-m", "sweeper"), (".venv/bin/python", "-m", "sweeper"))
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*([:/.][A-Za-z0-9_]*)*$|^\.\.\.$|[<>*{}]")  # RUN_DIR, HEAD_IP:6379, ...
ENV_SETTING = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Mention:
    """A command line or a code span, and where the docs hold it."""

    text: str
    file: Path
    line: int

    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}: {self.text!r}"


def doc_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md")), root / "results" / "README.md"]


def code_lines(path: Path) -> list[Mention]:
    """The lines of fenced and indented code blocks."""
    out, fenced = [], False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or (line.startswith("    ") and line.strip() and not line.lstrip().startswith(("-", "|", "*"))):
            out.append(Mention(line.strip(), path, n))
    return out


def code_spans(path: Path) -> list[Mention]:
    """Inline `code` spans outside code blocks; a span may run over a line break, as Markdown allows."""
    out, fenced, paragraph, start = [], False, [], 0
    lines = path.read_text(encoding="utf-8").splitlines() + [""]
    for n, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        if line.strip():
            start = start or n
            paragraph.append(line.strip())
            continue
        text = "\n".join(paragraph)
        out += [Mention(m.group(1).replace("\n", " "), path, start + text.count("\n", 0, m.start()))
                for m in re.finditer(r"`([^`]+)`", text)]
        paragraph, start = [], 0
    return out


def commands(mentions: list[Mention]) -> list[Mention]:
    """The sweeper commands in these lines and spans, each as its words after the prefix (sub-command first)."""
    found = []
    for m in mentions:
        for part in re.split(r"&&|;|\|\|", m.text.replace("\\|", "\x00")):
            part = part.replace("\x00", "\\|")
            try:
                words = shlex.split(part.replace("\\|", "\x00"))  # quoted settings: A="$(cat f)"
                words = [w.replace("\x00", "\\|") for w in words]
            except ValueError:
                words = part.split()
            while words and ENV_SETTING.match(words[0]):
                words = words[1:]
            for prefix in PREFIXES:
                if tuple(words[:len(prefix)]) == prefix and len(words) > len(prefix):
                    found.append(Mention(" ".join(words[len(prefix):]), m.file, m.line))
    return found


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def command_problems(words_text: str) -> list[str]:
    """What is wrong with one documented command (its words after `sweeper`), by today's parser; [] if nothing."""
    parser = build_parser()
    subs = _subparsers(parser)
    synopsis = "[" in words_text or "\\|" in words_text
    text = words_text.replace("\\|", "|")  # a `|` escaped inside a Markdown table
    words = text.split() if synopsis else shlex.split(text, posix=True)
    if not words or PLACEHOLDER.search(words[0]) or words[0] in ("-h", "--help", "--version"):
        return []  # `sweeper COMMAND -h`: no sub-command named
    if words[0] not in subs:
        return [f"no sub-command {words[0]!r} (today: {', '.join(subs)})"]
    sub = subs[words[0]]
    if len(words) == 1:
        return []  # the command named in a sentence ("after `sweeper confirm`"), not a command line
    if synopsis:
        return _synopsis_problems(sub, words[0], words[1:])
    args = [w for w in words[1:] if w != "..."]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args([words[0], *args])
        except SystemExit as e:
            if e.code:
                return [err.getvalue().strip() or f"exit {e.code}"]
    return []


def _synopsis_problems(sub: argparse.ArgumentParser, name: str, words: list[str]) -> list[str]:
    options, problems = _options(sub), []
    tokens = [t for w in words for t in re.split(r"[\[\]]", w) if t]
    for i, tok in enumerate(tokens):
        if not tok.startswith("-"):
            continue
        if tok not in options:
            problems.append(f"sweeper {name}: no option {tok}")
            continue
        action = options[tok]
        if action.choices is None or i + 1 >= len(tokens) or tokens[i + 1].startswith("-"):
            continue
        for value in tokens[i + 1].split("|"):
            if value and not PLACEHOLDER.search(value) and value not in action.choices:
                problems.append(f"sweeper {name} {tok}: {value!r} is not a choice ({', '.join(action.choices)})")
    return problems


def _tracked_top_level(root: Path = ROOT) -> set[str]:
    return {p.name for p in root.iterdir() if p.name not in (".git",)}


def _ignored(path: str) -> bool:
    """A path git ignores is an output a command writes (results/NAME/...), not a file of the repository."""
    return subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT).returncode == 0


def path_problems(mention: Mention, top: set[str]) -> list[str]:
    """Repository paths among a span's words (first part a top-level entry of the checkout) that do not exist."""
    problems = []
    for word in mention.text.split():
        word = word.strip("'\"(),:;")
        if word.startswith("../"):
            problems.append(f"{word}: outside the repository (a fresh clone does not have it)")
            continue
        if "/" not in word and not re.search(r"\.(py|md|sh|yaml|toml|json|csv|txt|png)$", word):
            continue
        first = word.split("/")[0]
        if first not in top or PLACEHOLDER.search(word) or re.search(r"[<>*{}$]", word):
            continue
        if not (ROOT / word).exists() and not _ignored(word):
            problems.append(f"{word}: no such file or folder in the repository")
    return problems


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: lower case, punctuation dropped, spaces as '-'."""
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)  # not code comments
    heads = re.findall(r"^#+\s+(.*)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def link_problems(path: Path) -> list[str]:
    """Relative Markdown links (and images) whose target, or the heading a `#anchor` names, does not exist."""
    problems = []
    text = path.read_text(encoding="utf-8")
    for n, line in enumerate(text.splitlines(), 1):
        for m in re.finditer(r"\]\(([^)\s]+)\)", line):
            target = m.group(1)
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            file_path = path.parent / file if file else path
            if not file_path.exists():
                problems.append(f"{path.name}:{n}: link to {target}: no such file")
            elif anchor and file_path.suffix == ".md" and anchor not in anchors(file_path):
                problems.append(f"{path.name}:{n}: link to {target}: no such heading in {file_path.name}")
    return problems


def all_problems(root: Path = ROOT) -> list[str]:
    top = _tracked_top_level(root)
    problems = []
    for f in doc_files(root):
        mentions = code_lines(f) + code_spans(f)
        for c in commands(mentions):
            problems += [f"{c.where()}: {p}" for p in command_problems(c.text)]
        for m in code_spans(f) + [m for m in code_lines(f) if commands([m]) or re.match(r"^(\S+=\S+ )*(python|bash) ", m.text)]:
            problems += [f"{m.where()}: {p}" for p in path_problems(m, top)]
        problems += link_problems(f)
    return problems


# --------------------------------------------------------------------------- the checker itself, on tiny input


@pytest.mark.parametrize("text", [
    "search --resume --name phase2 --out results",
    "evaluate results/phase2 --data /path/to/test --trial best --epoch last",
    "search [--space FILE] [--trials N] [--gpus-per-trial F]",
    "evaluate RUN_DIR --data TEST_DIR [--trial best\\|N] [--epoch best\\|last] [--out DIR]",
    "COMMAND -h",
])
def test_a_valid_command_passes(text):
    assert command_problems(text) == []


@pytest.mark.parametrize("text, problem", [
    ("serch --name x", "no sub-command 'serch'"),
    ("search --trails 3", "--trails"),
    ("search --trials zero", "--trials: expected a whole number"),
    ("evaluate RUN --epoch first", "--epoch: expected one of best, last, got 'first'"),
    ("evaluate RUN_DIR [--epoch best\\|first]", "'first' is not a choice"),
    ("search [--checkpoint-every N]", "no option --checkpoint-every"),
])
def test_a_stale_command_is_named(text, problem):
    (found,) = command_problems(text)
    assert problem in found


def test_commands_are_found_after_env_settings_and_chains(tmp_path):
    doc = tmp_path / "a.md"
    doc.write_text("Run `sweeper plan --space smoke`.\n\n```bash\nscripts/setup.sh && .venv/bin/python -m sweeper "
                   "search\nSWEEPER_CACHE=/tmp/c python -m sweeper baseline --out /tmp/r\n```\n"
                   "The `sweeper.search.tables` module is not a command.\n")
    found = [c.text for c in commands(code_lines(doc) + code_spans(doc))]
    assert found == ["search", "baseline --out /tmp/r", "plan --space smoke"]


def test_missing_paths_and_links_are_named(tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text("# A `--seed` heading\n\nSee [x](no/such.md), [y](#a---seed-heading), [z](https://example.org) "
                   "and [w](#no-such-heading).\n")
    problems = link_problems(doc)
    assert len(problems) == 2 and "no/such.md" in problems[0] and "no such heading" in problems[1]
    top = _tracked_top_level()
    assert path_problems(Mention("python scripts/bench/no_such_bench.py", doc, 1), top) != []
    assert path_problems(Mention("scripts/bench/bench.py", doc, 1), top) == []
    assert path_problems(Mention("results/<name>/study.db", doc, 1), top) == []  # a placeholder
    assert path_problems(Mention("results/sweep-1/trials.csv", doc, 1), top) == []  # an output (git ignores it)
    assert path_problems(Mention("../shared/reference/x.md", doc, 1), top) != []


# --------------------------------------------------------------------------- the docs


def test_docs_name_only_commands_options_paths_and_links_that_exist():
    problems = all_problems()
    assert not problems, "\n".join(problems)
