"""Progress of a long loop, the one helper of both console scripts (``rosalia predict``, ``mimic-ils build``, merge,
synth, scan, cues, ...; ``mimic_ils.progress`` binds it to the ``mimic_ils.progress`` logger).

On a terminal (stderr a TTY) it is a tqdm bar. Anywhere else (a log file, a pipe, a batch job) tqdm's carriage
returns and cursor escapes would garble the log, so it is plain lines through a logger (``rosalia_hf.progress``
unless one is given)::

    build report: 40/120 studies (33%), 12.3 s

one when another tenth of the total is done but at most one per ``MIN_INTERVAL_S`` seconds, one at least every
``MAX_INTERVAL_S`` seconds while the loop advances, and always the last one. Both show only when logging at INFO is on
for the logger: the console scripts turn it on (:func:`rosalia_hf.console.output_settings`; ``-q`` turns it off); a
library caller configures ``logging``.

    with progress("synth", total=len(plans), unit="studies") as bar:
        for plan in plans:
            ...
            bar.update()
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import IO, Any

LOGGER = logging.getLogger(__name__)

MIN_INTERVAL_S = 5.0
MAX_INTERVAL_S = 60.0
STEPS = 10  # a line per tenth of the total


class Progress:
    """Progress of ``total`` items of ``unit`` under ``name``; ``update(count)`` as they finish, ``close()`` at the
    end (or use it as a context manager). ``enabled=False``: nothing at all."""

    def __init__(self, name: str, total: int, unit: str, *, enabled: bool = True, position: int = 0,
                 stream: IO[str] | None = None, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger | None = None) -> None:
        self.name, self.total, self.unit = name, max(0, int(total)), unit
        self.logger = logger or LOGGER
        self.done = 0
        self.clock = clock
        self.started = clock()
        self._last_done, self._last_time = 0, self.started
        self._bar: Any = None
        self._lines = enabled and self.logger.isEnabledFor(logging.INFO)
        stream = sys.stderr if stream is None else stream
        if self._lines and _is_tty(stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=name, unit=unit, position=position, leave=True,
                             dynamic_ncols=True, file=stream)
            self._lines = False
        self._closed = False

    def update(self, count: int = 1) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif self._lines and self._due(self.clock()):
            self._emit()

    def close(self) -> None:
        """The last line (or the bar's end); once."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._lines and self.done != self._last_done:
            self._emit()

    def line(self) -> str:
        """The plain progress line of now: ``name: done/total unit (pct%), seconds s``."""
        elapsed = self.clock() - self.started
        percent = f" ({100 * self.done // self.total}%)" if self.total else ""
        return f"{self.name}: {self.done}/{self.total} {self.unit}{percent}, {elapsed:.1f} s"

    def _due(self, now: float) -> bool:
        if self.done <= self._last_done:
            return False
        since = now - self._last_time
        step = max(1, -(-self.total // STEPS))
        return (self.done >= self._last_done + step and since >= MIN_INTERVAL_S) or since >= MAX_INTERVAL_S

    def _emit(self) -> None:
        self.logger.info(self.line())
        self._last_done, self._last_time = self.done, self.clock()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def progress(name: str, total: int, unit: str, *, enabled: bool = True, position: int = 0,
             logger: logging.Logger | None = None) -> Progress:
    """A :class:`Progress` on stderr: a tqdm bar on a terminal, plain lines elsewhere, nothing when disabled."""
    return Progress(name, total, unit, enabled=enabled, position=position, logger=logger)


def _is_tty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


__all__ = ["Progress", "progress", "MIN_INTERVAL_S", "MAX_INTERVAL_S", "STEPS"]
