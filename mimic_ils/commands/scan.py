"""``mimic-ils scan ROOT [--json]``: counts and problems of a MIMIC-CXR root."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "scan", help="count studies/images/splits of a MIMIC-CXR root and list every problem",
        description="Scan a local MIMIC-CXR 2.x copy (or a synthetic cohort): studies, images, frontal images, "
                    "studies per split, and every problem (path and reason). Exit code 1 if ROOT is not MIMIC-CXR.",
    )
    parser.add_argument("root", metavar="ROOT", help="MIMIC-CXR root (holds files/ and the metadata/split CSVs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from mimic_ils.commands import require_path
    from mimic_ils.scan import scan_cohort

    require_path(args.root, "ROOT")

    summary = scan_cohort(args.root, show_progress=True)
    print(json.dumps(summary.to_json()) if args.json else summary.format())
    return 0
