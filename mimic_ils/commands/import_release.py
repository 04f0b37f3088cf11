"""``mimic-ils import-release``: the authors' PhysioNet release (mimic-cxr-ext-ils 1.0.0) → a dataset folder."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "import-release", help="import the published mimic-cxr-ext-ils release into the built-folder format",
        description="Reads mimic_ils_instruction_answer.json and lesion_mask/ from --release and the MIMIC-CXR-JPG "
        "images from --images; writes the same configs and features as `mimic-ils build`.",
    )
    parser.add_argument("--release", required=True, help="folder with mimic_ils_instruction_answer.json")
    parser.add_argument("--images", required=True, help="MIMIC-CXR-JPG files/ folder (or its 2.1.0 root)")
    parser.add_argument("--out", required=True, help="output dataset folder")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from mimic_ils.commands import require_path
    from mimic_ils.release import import_release

    require_path(args.release, "--release")
    require_path(args.images, "--images")

    info = import_release(args.release, args.images, args.out, show_progress=True)
    for split, counts in info["counts"].items():
        print(f"{split}: {counts['pairs']} pairs, {counts['images']} images, {counts['masks']} unique masks")
    for reason, count in info["ledger"]["reasons"].items():
        print(f"skipped {count}: {reason}")
    print(f"dataset written to {args.out}")
    return 0
