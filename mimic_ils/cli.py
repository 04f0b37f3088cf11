"""The ``mimic-ils`` console script: one subcommand per module of :mod:`mimic_ils.commands`.

Every command runs offline: the hub libraries and ultralytics get their offline settings before a command imports
them (:func:`rosalia_hf.offline.go_offline`), unless ``--allow-downloads`` (before or after the command name) or
``MIMIC_ILS_ALLOW_DOWNLOADS=1`` is given.

Messages go to stderr through ``logging``: INFO (progress lines, :mod:`mimic_ils.progress`) and up by default,
DEBUG with ``-v``/``--verbose``, warnings and errors only with ``-q``/``--quiet`` (no progress); both before or after
the command name. Off a terminal the hub libraries' own progress bars are off too (they would write cursor escapes
into a log).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Iterator

from mimic_ils import __version__, commands
from mimic_ils.schema import MimicIlsError
from rosalia_hf.errors import RosaliaError
from rosalia_hf.offline import add_download_flag, go_offline


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimic-ils", description="MIMIC-ILS commands. They run offline (no hub or ultralytics download) unless "
        "--allow-downloads or MIMIC_ILS_ALLOW_DOWNLOADS=1 is given.")
    parser.add_argument("--version", action="version", version=f"mimic-ils {__version__}")
    add_download_flag(parser)
    add_verbosity_flags(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda info: info.name):
        module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
        subparser = module.add_parser(subparsers)
        add_download_flag(subparser, suppress_default=True)
        add_verbosity_flags(subparser, suppress_default=True)
    return parser


LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}
# the hub libraries' progress bars, off when stderr is not a terminal or with -q
QUIET_BARS = {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def add_verbosity_flags(parser: argparse.ArgumentParser, *, suppress_default: bool = False) -> None:
    """``-v``/``--verbose`` and ``-q``/``--quiet`` (``suppress_default``: for a subcommand beside the top-level
    flags, so that a flag given before the command name is kept)."""
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


@contextlib.contextmanager
def output_settings(verbosity: int) -> Iterator[None]:
    """Logging of ``mimic_ils`` to stderr at the level of ``verbosity`` (and the hub libraries' progress bars off
    when quiet or not on a terminal) for the command; everything is restored afterwards."""
    package = logging.getLogger("mimic_ils")
    handler = _StderrHandler()
    handler.setFormatter(_Formatter("%(message)s"))
    previous_level = package.level
    package.addHandler(handler)
    package.setLevel(LEVELS[max(-1, min(1, verbosity))])
    quiet_bars = verbosity < 0 or not _stderr_is_tty()
    saved = {name: os.environ.get(name) for name in QUIET_BARS}
    if quiet_bars:
        os.environ.update(QUIET_BARS)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(previous_level)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    go_offline(args.allow_downloads)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with output_settings(args.verbosity):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except (MimicIlsError, RosaliaError) as error:
        print(f"mimic-ils {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mimic-ils {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
