"""``mimic-ils build``: MIMIC-CXR root → MIMIC-ILS dataset folder (resumable, sharded, deterministic)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "build", help="build MIMIC-ILS from a local MIMIC-CXR copy into a datasets folder",
        description="Run ingest → report → vision → grounding → pairs → dataset. Rerun the same command to resume "
        "after an interruption. Split the work with --shard i/N (or torchrun / accelerate launch: RANK, "
        "WORLD_SIZE), then assemble with --merge.",
    )
    parser.add_argument("--mimic-root", required=True, help="MIMIC-CXR root (files/, metadata and split CSVs)")
    parser.add_argument("--out", required=True, help="output dataset folder")
    parser.add_argument("--config", help="build config YAML (report backend, vision, grounding, seed)")
    parser.add_argument("--backends", help="vision backends: 'phantom', 'real' or a vision config YAML file")
    parser.add_argument("--limit", type=int, help="only the first N studies (by study id) of the cohort")
    parser.add_argument("--shard", help="process shard i of N only (e.g. 0/4); no merge unless --merge is given")
    parser.add_argument("--merge", action="store_true", help="assemble the output from the work folder "
                        "(alone: merge only; with --shard: process the shard, then merge)")
    parser.add_argument("--work", help="work folder for cached stage outputs (default: <out>.work)")
    parser.add_argument("--wait", type=float, default=0.0,
                        help="under a launcher, seconds rank 0 waits for the other shards before merging")
    parser.add_argument("--force-stage", action="append", default=[], choices=("report", "vision", "grounding"),
                        help="recompute this stage (and what follows it) for every study, ignoring its cache; "
                        "repeatable")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from mimic_ils.commands import require_path
    from mimic_ils.schema import MimicIlsError

    require_path(args.mimic_root, "--mimic-root")
    require_path(args.config, "--config", "file")
    if args.backends not in (None, "phantom", "real"):
        require_path(args.backends, "--backends", "file")
    if args.limit is not None and args.limit < 1:
        raise MimicIlsError("--limit must be at least 1")
    from mimic_ils.orchestration import BuildConfig, build

    config = BuildConfig.from_yaml(args.config) if args.config else BuildConfig()
    config = config.with_backends(args.backends)
    merge_only = args.merge and not args.shard
    result = build(
        args.mimic_root, args.out, config=config, work=args.work, shard=args.shard, limit=args.limit,
        merge_step=True if args.merge else None, process=not merge_only, progress=not args.no_progress,
        shard_wait_s=args.wait, force_stages=tuple(getattr(args, "force_stage", None) or ()),
    )
    processed = result["processed"]
    if processed:
        print(f"studies: {processed['computed']} computed, {processed['cached']} from the cache")
        if processed.get("retry"):
            print(f"studies not done: {processed['retry']} hit a transient failure (a service down); they are "
                  "excluded from this output and retried next run: rerun the same command")
    if result["info"] is None:
        print("shard done; assemble the output with `mimic-ils build ... --merge` once every shard has run")
        return 0
    for split, counts in result["info"]["counts"].items():
        print(f"{split}: {counts['pairs']} pairs, {counts['images']} images, {counts['masks']} unique masks")
    fates = result["info"]["ledger"]["fates"]
    used, excluded = fates.get("study:used", 0), fates.get("study:excluded", 0)
    print(f"studies used {used}, excluded {excluded} (see ledger.parquet); dataset written to {args.out}")
    return 0
