"""``mimic-ils stats OUT``: Tables 9-11, counts, exclusion reasons and a Fig. 4-like chart of a built folder."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("stats", help="statistics of a built MIMIC-ILS folder (tables, chart)")
    parser.add_argument("out", help="a folder made by `mimic-ils build` or `mimic-ils import-release`")
    parser.add_argument("--dest", help="where to write stats.md, stats.json and the chart (default OUT/stats)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from mimic_ils.commands import require_path
    from mimic_ils.stats import write_stats

    require_path(args.out, "OUT")

    paths = write_stats(args.out, args.dest)
    print(paths["markdown"].read_text(), end="")
    print(f"\nwritten: {paths['json']}, {paths['markdown']}, {paths['figure']}")
    return 0
