"""Progress that reads well in a terminal and in a log file.

On a terminal (the stream is a TTY) a tqdm bar; elsewhere (a batch job's log, a pipe, CI) plain lines without
carriage returns or cursor escapes: one when another tenth is done (at most one a second), one when ``every``
seconds passed without a line, and one at the end::

    predict: 40/120 pairs (33%), 12.3 s, 3.3 pairs/s

``enabled=False`` (``-q``) prints nothing.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``update(n)`` as tqdm's; a context manager that prints the last line (or closes the bar) on exit."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", *, enabled: bool = True,
                 stream: TextIO | None = None, every: float = 5.0) -> None:
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.done = 0
        self.started = time.perf_counter()
        self._last_line = self.started
        self._last_tenth = 0
        self._closed = False
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar = None
        if enabled and tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if not self.enabled:
            return
        now = time.perf_counter()
        tenth = int(10 * self.done / self.total) if self.total else 0
        since = now - self._last_line
        if (tenth > self._last_tenth and since >= 1.0) or since >= self.every:
            self._last_tenth = tenth
            self._print(now)

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.perf_counter()) - self.started
        of = f"/{self.total}" if self.total is not None else ""
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        rate = f", {self.done / elapsed:.1f} {self.unit}/s" if elapsed > 0 and self.done else ""
        return f"{self.desc}: {self.done}{of} {self.unit}{share}, {elapsed:.1f} s{rate}"

    def _print(self, now: float) -> None:
        self._last_line = now
        print(self.line(now), file=self.stream, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            self._print(time.perf_counter())


__all__ = ["Progress"]
