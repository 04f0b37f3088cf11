"""The ``mimic-ils`` console script: one subcommand per module of :mod:`mimic_ils.commands`.

Every command runs offline: the hub libraries and ultralytics get their offline settings before a command imports
them (:func:`rosalia_hf.offline.go_offline`), unless ``--allow-downloads`` (before or after the command name) or
``MIMIC_ILS_ALLOW_DOWNLOADS=1`` is given.

Messages go to stderr through ``logging`` (:mod:`rosalia_hf.console`, shared with the ``rosalia`` command): INFO
(progress lines, :mod:`mimic_ils.progress`) and up by default, DEBUG with ``-v``/``--verbose``, warnings and errors
only with ``-q``/``--quiet`` (no progress); both before or after the command name. Off a terminal the hub
libraries' own progress bars are off too (they would write cursor escapes into a log).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from mimic_ils import __version__, commands
from mimic_ils.schema import MimicIlsError
from rosalia_hf.console import add_verbosity_flags, output_settings
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    go_offline(args.allow_downloads)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with output_settings(args.verbosity):  # mimic_ils and rosalia_hf (evaluate) loggers
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
