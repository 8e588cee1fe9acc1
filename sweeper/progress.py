"""A minimal progress bar on stderr: redraws in place on a terminal, prints a few lines in a log."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator, TextIO


class ProgressBar:
    """Counts work done against a total and shows rate and time left."""

    def __init__(self, total: int, desc: str, stream: TextIO, enabled: bool) -> None:
        self.total, self.desc, self.stream, self.enabled = max(total, 1), desc, stream, enabled
        self.done = 0
        self.started = time.perf_counter()
        self._tty = enabled and getattr(stream, "isatty", lambda: False)()
        self._last_draw = 0.0
        self._last_logged_tenth = -1

    def update(self, n: int = 1) -> None:
        """Record n more units of work."""
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._tty and (now - self._last_draw > 0.1 or self.done >= self.total):
            self._last_draw = now
            self.stream.write("\r" + self._line(now))
            self.stream.flush()
        elif not self._tty:
            tenth = 10 * self.done // self.total  # a log gets a line per 10%, not a line per item
            if tenth > self._last_logged_tenth:
                self._last_logged_tenth = tenth
                self.stream.write(self._line(now) + "\n")
                self.stream.flush()

    def _line(self, now: float) -> str:
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        filled = int(24 * self.done / self.total)
        return (f"{self.desc} [{'#' * filled}{'.' * (24 - filled)}] {self.done}/{self.total} "
                f"{rate:.1f}/s {elapsed:.0f}s elapsed, ~{left:.0f}s left")

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


@contextmanager
def progress_bar(*, total: int, desc: str, enabled: bool = True, stream: TextIO | None = None) -> Iterator[ProgressBar]:
    """A progress bar for `total` units of work, closed on exit."""
    bar = ProgressBar(total, desc, stream or sys.stderr, enabled)
    try:
        yield bar
    finally:
        bar.close()
