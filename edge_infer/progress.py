"""A progress bar with images/s on stderr, for long runs of edge-infer: only when stderr is a terminal
(never in pipes, JSON consumers or CI logs), and only for runs long enough to need one."""

from __future__ import annotations

import sys
import time
from typing import TextIO

MIN_IMAGES = 100  # fewer images finish before a bar would be read
REFRESH_S = 0.1
WIDTH = 30


class ProgressBar:
    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total = total
        self.enabled = enabled and total >= MIN_IMAGES and _is_terminal(self.stream)
        self.start = self._last = time.perf_counter()
        self._shown = False  # the bar is on the terminal's current line
        self._drawn = False  # it has been drawn at least once

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last < REFRESH_S and done < self.total:
            return
        self._last = now
        rate = done / max(now - self.start, 1e-9)
        filled = int(WIDTH * done / self.total)
        self.stream.write(f"\r[{'#' * filled}{'.' * (WIDTH - filled)}] {done:,}/{self.total:,}  {rate:,.0f} images/s")
        self.stream.flush()
        self._shown = self._drawn = True

    def finish(self) -> None:
        """Leave the final count and rate on the terminal."""
        if self._drawn:
            self._last = 0.0
            self.update(self.total)
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False

    def clear(self) -> None:
        """Erase the bar (before another message goes to stderr, and at the end)."""
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False
