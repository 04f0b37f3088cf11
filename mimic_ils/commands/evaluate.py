"""``mimic-ils evaluate``: gIoU / cIoU / N-Acc / text accuracy of a ROSALIA checkpoint on a built folder."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    from rosalia_hf.evaluation_cli import add_arguments  # the options live with the evaluation, in the model half

    parser = subparsers.add_parser("evaluate", help="evaluate a ROSALIA checkpoint on a built MIMIC-ILS split")
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from rosalia_hf.evaluation_cli import run as run_evaluation

    report = run_evaluation(args)
    print(report.read_text(encoding="utf-8"), end="")
    print(f"\nwritten: {report}")
    return 0
