"""The one progress bar on stderr (tqdm), for every long loop: the cache build, synth, evaluate.

On a terminal it redraws in place; in a log (not a TTY) it prints a line per tenth of the work, never a
carriage-return-joined line per item. A sweep's live lines are `sweeper.search.progress`.
"""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from typing import Iterator, TextIO

from tqdm import tqdm

LOG_LINES = 10  # lines a bar prints into a log over its whole run (one per tenth)


class _LogLines:
    """A stream for tqdm in a log: each redraw as its own line (tqdm redraws with a carriage return), and the
    closing redraw only when it says something new."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.last = stream, ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line and line != self.last:
            self.last = line
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


@contextmanager
def progress_bar(*, total: int, desc: str, enabled: bool = True, stream: TextIO | None = None) -> Iterator[tqdm]:
    """A bar for `total` units of work, closed on exit: `bar.update(n)` records n more, `bar.n` is the count."""
    stream = stream or sys.stderr
    tty = bool(getattr(stream, "isatty", lambda: False)())
    if tty or not enabled:
        bar = tqdm(total=total, desc=desc, file=stream, disable=not enabled, dynamic_ncols=True)
    else:  # a line per tenth: miniters fixed, and no time-based redraws (maxinterval would lower miniters to 1)
        bar = tqdm(total=total, desc=desc, file=_LogLines(stream), miniters=max(1, math.ceil(total / LOG_LINES)),
                   mininterval=0, maxinterval=math.inf, ncols=100, ascii=True)
    try:
        yield bar
    finally:
        bar.close()
