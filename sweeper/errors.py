"""The one exception type the CLI turns into a one-line message and exit code 2, and the mark of an out-of-memory
error line (raised by `sweeper.training.device`, counted by the tables and the progress lines, which load no torch)."""

from __future__ import annotations


class SweeperError(Exception):
    """A problem with the user's input (a file, a folder, a field), not a bug.

    The message is one line and names the file or field and what is wrong;
    the CLI prints it without a traceback and exits with code 2.
    """


OOM_MARK = "GPU out of memory"  # starts every out-of-memory trial error; tables and progress count it apart


def is_out_of_memory(error: str | None) -> bool:
    """Whether a trial's error line is an out-of-memory failure (`sweeper.training.device.oom_message`, maybe
    after its class name)."""
    return bool(error) and (error.startswith(OOM_MARK) or f": {OOM_MARK}" in error)


def one_line(what: str | BaseException, limit: int = 200) -> str:
    """Text or an exception fit to end a SweeperError message: whitespace runs collapsed to one space, cut at
    `limit` characters; an exception as 'TypeName: message' (a library's message may span lines)."""
    text = " ".join(str(what).split())
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    if isinstance(what, BaseException):
        return f"{type(what).__name__}: {text}" if text else type(what).__name__
    return text
