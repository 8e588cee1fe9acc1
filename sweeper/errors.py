"""The one exception type the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations


class SweeperError(Exception):
    """A problem with the user's input (a file, a folder, a field), not a bug.

    The message is one line and names the file or field and what is wrong;
    the CLI prints it without a traceback and exits with code 2.
    """
