"""The ``mimic-ils`` console script: one subcommand per module of :mod:`mimic_ils.commands`.

Every command runs offline: the hub libraries and ultralytics get their offline settings before a command imports
them (:func:`rosalia_hf.offline.go_offline`), unless ``--allow-downloads`` (before or after the command name) or
``MIMIC_ILS_ALLOW_DOWNLOADS=1`` is given.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

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
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda info: info.name):
        module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
        add_download_flag(module.add_parser(subparsers), suppress_default=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    go_offline(args.allow_downloads)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
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
