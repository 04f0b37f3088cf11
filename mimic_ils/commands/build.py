"""``mimic-ils build``: MIMIC-CXR root → MIMIC-ILS dataset folder (resumable, sharded, deterministic)."""

from __future__ import annotations

import argparse
import os


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "build", help="build MIMIC-ILS from a local MIMIC-CXR copy into a datasets folder",
        description="Run ingest → report → vision → grounding → pairs → dataset. Rerun the same command to resume "
        "after an interruption. Split the work with --shard i/N (or torchrun / accelerate launch: RANK, "
        "WORLD_SIZE: the ranks meet at a barrier and rank 0 merges), or run the whole cohort on a Ray cluster "
        "with --engine ray. Every way gives the same bytes.",
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
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: this process (or one shard per rank under torchrun); ray: one streaming Ray "
                        "Data pipeline over the cluster (needs the [ray] extra)")
    parser.add_argument("--ray-address", help="with --engine ray: a running cluster (host:port of `ray start "
                        "--head`, auto, ray://host:port); default: a Ray instance on this machine")
    parser.add_argument("--ray-num-cpus", type=int, help="with --engine ray and no --ray-address: CPUs of the "
                        "Ray instance on this machine (default: all)")
    parser.add_argument("--ray-gpus", action="append", default=[], metavar="STAGE=N",
                        help="GPUs per actor of a model stage (lungs_heart, pseudo_normal, anatomy, lesion_boxes); "
                        "repeatable; default with real backends: pseudo_normal=1 anatomy=0.5 lungs_heart=0.25 "
                        "lesion_boxes=0.25")
    parser.add_argument("--ray-cpus", action="append", default=[], metavar="STAGE=N",
                        help="CPUs per actor of a stage (prepare, a model stage, finish); repeatable")
    parser.add_argument("--ray-max-actors", type=int, help="the largest actor pool of any stage (default: as "
                        "many as the cluster's resources allow)")
    parser.add_argument("--barrier-timeout", type=float, default=None, metavar="SECONDS",
                        help="under torchrun / accelerate launch, how long the ranks wait for each other before "
                        "rank 0 merges (default: 3 days)")
    parser.add_argument("--wait", type=float, default=0.0,
                        help="rank 0 of a launch without a process group: seconds to wait for the other shards")
    parser.add_argument("--force-stage", action="append", default=[], choices=("report", "vision", "grounding"),
                        help="recompute this stage (and what follows it) for every study, ignoring its cache; "
                        "repeatable")
    parser.add_argument("--full-check", action="store_true", help="the merge hashes every image and mask PNG of "
                        "the work folder against its recorded sha256 (default: sizes, and the hash of any file "
                        "changed after its study was recorded); a mismatch is recomputed")
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
    engine = _engine_options(args)
    merge_only = args.merge and not args.shard
    result = build(
        args.mimic_root, args.out, config=config, work=args.work, shard=args.shard, limit=args.limit,
        merge_step=True if args.merge else None, process=not merge_only, progress=not args.no_progress,
        shard_wait_s=args.wait, force_stages=tuple(getattr(args, "force_stage", None) or ()), **engine,
        full_check=args.full_check,
    )
    processed = result["processed"]
    if processed:
        print(f"studies: {processed['computed']} computed, {processed['cached']} from the cache")
        if processed.get("retry"):
            print(f"studies not done: {processed['retry']} hit a transient failure (a service down); they are "
                  "excluded from this output and retried next run: rerun the same command")
    if result["info"] is None and os.environ.get("WORLD_SIZE") and not args.shard:
        print("shard done; rank 0 merges")
        return 0
    if result["info"] is None:
        print("shard done; assemble the output with `mimic-ils build ... --merge` once every shard has run")
        return 0
    for split, counts in result["info"]["counts"].items():
        print(f"{split}: {counts['pairs']} pairs, {counts['images']} images, {counts['masks']} unique masks")
    fates = result["info"]["ledger"]["fates"]
    used, excluded = fates.get("study:used", 0), fates.get("study:excluded", 0)
    print(f"studies used {used}, excluded {excluded} (see ledger.parquet); dataset written to {args.out}")
    return 0


def _engine_options(args: argparse.Namespace) -> dict:
    """``engine``, ``ray_plan`` and ``barrier_timeout_s`` of :func:`mimic_ils.orchestration.build` from the flags;
    a Ray flag without ``--engine ray`` is refused rather than ignored."""
    from mimic_ils.schema import MimicIlsError

    options: dict = {"engine": args.engine}
    ray_flags = [flag for flag, value in (("--ray-address", args.ray_address), ("--ray-num-cpus", args.ray_num_cpus),
                                          ("--ray-gpus", args.ray_gpus), ("--ray-cpus", args.ray_cpus),
                                          ("--ray-max-actors", args.ray_max_actors)) if value]
    if args.engine != "ray" and ray_flags:
        raise MimicIlsError(f"{', '.join(ray_flags)} only apply with --engine ray")
    if args.engine == "ray":
        from mimic_ils.orchestration.ray_engine import RayPlan, parse_stage_numbers

        options["ray_plan"] = RayPlan(
            address=args.ray_address, num_cpus=args.ray_num_cpus,
            gpus=parse_stage_numbers(args.ray_gpus, "--ray-gpus") or None,
            cpus=parse_stage_numbers(args.ray_cpus, "--ray-cpus"), max_actors=args.ray_max_actors,
        )
    if args.barrier_timeout is not None:
        options["barrier_timeout_s"] = args.barrier_timeout
    return options
