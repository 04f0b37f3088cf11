"""Build throughput on a synthetic cohort with phantom vision backends and the rules report backend.

Measures (1) wall time of a full build with N worker processes (``--shard i/N`` in parallel, then ``--merge``),
(2) per-stage CPU time of a single-process build (report, vision runner, grounding + pairs, merge), and (3) bytes
per pair of the output (Parquet metadata, image PNGs, mask PNGs). Prints medians and ratios.

    .venv/bin/python benchmarks/bench_build.py --studies 200 --processes 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mimic_ils.orchestration import BuildConfig, build
from mimic_ils.orchestration.stages import ProjectStages


class TimedStages(ProjectStages):
    """ProjectStages that add up the wall time spent in each stage."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seconds = {"report": 0.0, "vision": 0.0, "grounding": 0.0, "pairs": 0.0}

    def _timed(self, name, method, *args):
        start = time.perf_counter()
        try:
            return method(*args)
        finally:
            self.seconds[name] += time.perf_counter() - start

    def structure(self, study):
        return self._timed("report", super().structure, study)

    def cues(self, images, vision_dir):
        return self._timed("vision", super().cues, images, vision_dir)

    def ground(self, report, cues, study, image):
        return self._timed("grounding", super().ground, report, cues, study, image)

    def pairs(self, grounding, study, image):
        return self._timed("pairs", super().pairs, grounding, study, image)


def parallel_build(cohort: Path, out: Path, processes: int) -> float:
    """Wall seconds of ``processes`` shard processes in parallel plus the merge."""
    work = out.parent / "work_parallel"
    base = [sys.executable, "-m", "mimic_ils", "build", "--mimic-root", str(cohort), "--out", str(out),
            "--backends", "phantom", "--work", str(work), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    workers = [subprocess.Popen(base + ["--shard", f"{i}/{processes}"], env=env, stdout=subprocess.DEVNULL)
               for i in range(processes)]
    if any(worker.wait() for worker in workers):
        raise SystemExit("a shard process failed")
    subprocess.run(base + ["--merge"], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def output_bytes(out: Path) -> dict[str, int]:
    sizes = {"parquet": 0, "images": 0, "masks": 0}
    for path in out.rglob("*"):
        if path.suffix == ".parquet" and path.name == "metadata.parquet":
            sizes["parquet"] += path.stat().st_size
        elif path.suffix == ".png":
            sizes["masks" if path.parent.name == "masks" else "images"] += path.stat().st_size
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--keep", help="keep the cohort and outputs in this folder")
    args = parser.parse_args()
    from mimic_ils.orchestration.orchestrate import _git_commit

    os.environ["MIMIC_ILS_CODE_COMMIT"] = _git_commit() or "unknown"  # commits landing mid-run must not differ
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench_build_"))
    from mimic_ils.synth import generate_cohort

    start = time.perf_counter()
    cohort = root / "cohort"
    if not (cohort / "phantom_truth").exists():
        generate_cohort(cohort, args.studies, 0, workers=args.processes)
    print(f"cohort: {args.studies} studies generated in {time.perf_counter() - start:.1f} s")

    shutil.rmtree(root / "out1", ignore_errors=True)
    shutil.rmtree(root / "work1", ignore_errors=True)
    stages = TimedStages(cohort, BuildConfig(vision="phantom"))
    start = time.perf_counter()
    result = build(cohort, root / "out1", config=stages.config, work=root / "work1", stages=stages, progress=False)
    single = time.perf_counter() - start
    counts = result["info"]["counts"]
    pairs = sum(row["pairs"] for row in counts.values())
    frontal = sum(len(study.frontal_images) for study in stages.studies())
    used = sum(row["images"] for row in counts.values())
    merge_s = single - sum(stages.seconds.values())
    print(f"1 process: {single:.1f} s = {args.studies / single:.2f} studies/s, {frontal / single:.2f} frontal img/s")
    for name, seconds in {**stages.seconds, "ingest+cache+merge": merge_s}.items():
        print(f"  {name:>20}: {seconds:6.1f} s  ({frontal / max(seconds, 1e-9):7.1f} images/s)")
    cpu_part = stages.seconds["report"] + stages.seconds["grounding"] + stages.seconds["pairs"] + merge_s
    print(f"  CPU part without the vision backends: {frontal / cpu_part:.1f} images/s (target >= 20 on two cores)")

    shutil.rmtree(root / "out2", ignore_errors=True)
    shutil.rmtree(root / "work_parallel", ignore_errors=True)
    parallel = parallel_build(cohort, root / "out2", args.processes)
    print(f"{args.processes} processes: {parallel:.1f} s = {args.studies / parallel:.2f} studies/s, "
          f"{frontal / parallel:.2f} frontal images/s (speed-up {single / parallel:.2f}x)")
    same = all((root / "out1" / p.relative_to(root / "out2")).read_bytes() == p.read_bytes()
               for p in (root / "out2").rglob("*") if p.is_file())
    print(f"outputs of 1 and {args.processes} processes byte-identical: {same}")

    sizes = output_bytes(root / "out1")
    masks = sum(row["masks"] for row in counts.values())
    print(f"output: {pairs} pairs, {used} images, {masks} unique masks")
    print(f"  bytes/pair: parquet {sizes['parquet'] / pairs:.0f}, masks {sizes['masks'] / pairs:.0f}, "
          f"images {sizes['images'] / pairs:.0f}; bytes/mask {sizes['masks'] / max(masks, 1):.0f}, "
          f"bytes/image {sizes['images'] / max(used, 1):.0f}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
