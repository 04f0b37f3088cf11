"""The ``mimic-ils`` console script: one subcommand per module of :mod:`mimic_ils.commands`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from mimic_ils import __version__, commands
from mimic_ils.schema import MimicIlsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mimic-ils", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mimic-ils {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda info: info.name):
        module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MimicIlsError as error:
        print(f"mimic-ils {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mimic-ils {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
