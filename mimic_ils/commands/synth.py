"""``mimic-ils synth --out DIR --studies N --seed S``: write a synthetic MIMIC-CXR-shaped cohort."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "synth", help="write a synthetic MIMIC-CXR-shaped cohort with phantom ground truth",
        description="Write a small cohort in the PhysioNet MIMIC-CXR layout (DICOMs, reports, gzipped CSVs) with "
                    "phantom radiographs and their ground truth in <out>/phantom_truth/. Same seed, same bytes.",
    )
    parser.add_argument("--out", required=True, help="output folder (must be missing or empty)")
    parser.add_argument("--studies", type=int, default=50, help="number of studies (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: up to 2 CPUs)")
    parser.add_argument("--ms-cxr", action="store_true",
                        help="also write <out>/ms_cxr_local_alignment_synthetic.csv: MS-CXR-format boxes of the "
                             "phantom lesions, for `mimic-ils validate`")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from mimic_ils.synth import generate_cohort

    if args.studies < 1:
        raise SystemExit("mimic-ils synth: --studies must be at least 1")
    root = generate_cohort(args.out, args.studies, args.seed, workers=args.workers, show_progress=True)
    print(f"wrote {args.studies} synthetic studies (seed {args.seed}) to {root}")
    if args.ms_cxr:
        from mimic_ils.ms_cxr import write_synthetic_ms_cxr

        print(f"wrote MS-CXR-format boxes of the phantom lesions to {write_synthetic_ms_cxr(root)}")
    return 0
