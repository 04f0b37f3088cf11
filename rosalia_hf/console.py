"""What the console scripts (``rosalia``, ``mimic-ils``) print to stderr, and how much: one setup for both.

Messages go through ``logging``: INFO (progress lines, :mod:`rosalia_hf.progress`) and up by default, DEBUG with
``-v``/``--verbose``, warnings and errors only with ``-q``/``--quiet`` (no progress); the flags work before or after
the command name. Off a terminal the hub libraries' own progress bars are off too (they would write carriage
returns and cursor escapes into a log).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterable, Iterator

LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}
# the hub libraries' progress bars, off when stderr is not a terminal or with -q
QUIET_BARS = {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
PACKAGES = ("mimic_ils", "rosalia_hf")


def add_verbosity_flags(parser: argparse.ArgumentParser, *, suppress_default: bool = False) -> None:
    """``-v``/``--verbose`` and ``-q``/``--quiet`` into ``verbosity`` (1, -1; default 0). ``suppress_default``: for
    a subcommand beside the top-level flags, so that a flag given before the command name is kept."""
    extra = {"default": argparse.SUPPRESS} if suppress_default else {"default": 0}
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1,
                       help="debug messages too", **extra)
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1,
                       help="warnings and errors only: no progress", **extra)


class _StderrHandler(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is when a record is emitted (a test's capture, a redirected stream)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno == logging.INFO else f"{record.levelname.lower()}: {message}"


def stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def output_settings(verbosity: int, packages: Iterable[str] = PACKAGES) -> Iterator[None]:
    """Logging of ``packages`` to stderr at the level of ``verbosity`` (and the hub libraries' progress bars off
    when quiet or not on a terminal) for one command; everything is restored afterwards."""
    handler = _StderrHandler()
    handler.setFormatter(_Formatter("%(message)s"))
    loggers = [logging.getLogger(name) for name in packages]
    previous = [(logger, logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(LEVELS[max(-1, min(1, verbosity))])
        logger.propagate = False  # one line per message, whatever the root logger has
    saved = {name: os.environ.get(name) for name in QUIET_BARS}
    if verbosity < 0 or not stderr_is_tty():
        os.environ.update(QUIET_BARS)
    try:
        yield
    finally:
        for logger, level, propagate in previous:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


__all__ = ["add_verbosity_flags", "output_settings", "stderr_is_tty", "LEVELS", "QUIET_BARS"]
