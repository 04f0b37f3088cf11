"""Subcommands of the ``mimic-ils`` console script.

Each module here defines ``add_parser(subparsers) -> argparse.ArgumentParser`` and sets ``func=`` (a callable taking
the parsed ``argparse.Namespace`` and returning an exit code) through ``parser.set_defaults``. Modules keep their
top-level imports light; heavy imports (torch, datasets) happen inside the command function so that
``mimic-ils --help`` stays fast.
"""
