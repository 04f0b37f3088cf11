"""``mimic-ils evaluate``: gIoU / cIoU / N-Acc / text accuracy of a ROSALIA checkpoint on a built folder."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("evaluate", help="evaluate a ROSALIA checkpoint on a built MIMIC-ILS split")
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `mimic-ils evaluate` and `examples/evaluate_rosalia.py` (kept here: no heavy imports)."""
    parser.add_argument("--model", required=True, help="folder of RosaliaForSegmentation.save_pretrained")
    parser.add_argument("--processor", help="folder of RosaliaProcessor.save_pretrained (default: --model)")
    parser.add_argument("--dataset", required=True, help="a built MIMIC-ILS folder (load_dataset(folder, 'pairs'))")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--out", required=True, help="folder for report.md, cases.png and metrics.json")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--segment-only", action="store_true", help="teacher-force [SEG]; no text accuracy")
    parser.add_argument("--max-new-tokens", type=int, default=512,
                        help="greedy answer length limit (512, as LISA's chat; a trained model stops at </s>)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N pairs")
    parser.add_argument("--num-cases", type=int, default=1, help="best and worst cases per lesion in the grid")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--metric-path", help="folder of the ILS metric module (default: the repository's)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def run(args: argparse.Namespace) -> int:
    from rosalia_hf.evaluation_cli import run as run_evaluation

    report = run_evaluation(args)
    print(report.read_text(encoding="utf-8"), end="")
    print(f"\nwritten: {report}")
    return 0
