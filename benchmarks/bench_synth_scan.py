"""Time ``mimic-ils synth --studies N`` and ``mimic-ils scan`` on the generated cohort.

Usage: ``python benchmarks/bench_synth_scan.py [--studies 200] [--repeats 3] [--workers 2]``. Prints the median wall
time of each step over the repeats, images per second, and the combined figure (target: well under a minute for
200 studies on two cores).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from mimic_ils.scan import scan_cohort
from mimic_ils.synth import generate_cohort


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the synth workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_once(studies: int, seed: int, workers: int | None) -> tuple[float, float, float, int, int]:
    """(synth wall s, synth CPU s, scan wall s, images, problems) of one fresh cohort."""
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as folder:
        root = Path(folder) / "cohort"
        start, cpu_start = time.perf_counter(), cpu_seconds()
        generate_cohort(root, studies, seed, workers=workers)
        synth_seconds, synth_cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
        start = time.perf_counter()
        summary = scan_cohort(root)
        scan_seconds = time.perf_counter() - start
        return synth_seconds, synth_cpu, scan_seconds, summary.images, len(summary.problems)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="synth processes (default: up to 2)")
    args = parser.parse_args()
    runs = [run_once(args.studies, args.seed + repeat, args.workers) for repeat in range(args.repeats)]
    synth_median = statistics.median(run[0] for run in runs)
    cpu_median = statistics.median(run[1] for run in runs)
    scan_median = statistics.median(run[2] for run in runs)
    images = statistics.median(run[3] for run in runs)
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} studies={args.studies} images~{images:.0f} "
          f"repeats={args.repeats} workers={args.workers or 'auto'} problems={[run[4] for run in runs]}")
    print(f"synth: median {synth_median:.2f} s wall, {cpu_median:.2f} s CPU ({images / synth_median:.1f} images/s) "
          f"runs {[round(run[0], 2) for run in runs]}")
    print(f"scan:  median {scan_median:.2f} s  ({images / scan_median:.1f} images/s)  runs "
          f"{[round(run[2], 2) for run in runs]}")
    print(f"synth + scan: {synth_median + scan_median:.2f} s  (scan/synth ratio {scan_median / synth_median:.2f})")


if __name__ == "__main__":
    main()
