"""CPU seconds per frontal image of the build's CPU part at real resolution, and the work folder's bytes per image.

    .venv/bin/python benchmarks/bench_cpu_image.py [--size 2500x2048] [--studies 7] [--processes 2]
        [--small-studies 120] [--keep DIR]

A synthetic cohort is rendered at ``--size`` (every image HxW; ``synth``'s own planner, only the sizes replaced),
then built study by study through the real ``run_shard`` + ``ProjectStages`` (phantom vision backends, rules
report backend). ``time.process_time`` is added up around each piece:

* excluded: the phantom backends (``create_backends`` and the four steps) and the report stage;
* the CPU part: DICOM read, the runner's artifact write (``write_artifacts``, without its PNG encodes), the
  runner's PNG encodes (``encode_png``: ``image.png``, an output file, and before version 3 of the artifact folder
  also 20 intermediate PNGs; ``image.png`` alone is also timed on its own), ``load_cues``, grounding + QC
  (``ProjectStages.ground``), pairs, the study persist, and the rest of ``run_shard`` (resume checks, vision keys,
  decisions).

It prints the median per image over the studies after the first (the warm-up), the work folder's bytes and files
per frontal image (vision artifacts, study artifacts, PNGs), and with ``--processes N`` the CPU part's images/s at
phantom size (``--small-studies`` studies of ~450-640 px, ``N`` shard processes at once): frontal images over the
largest CPU part of one process (the wall time of the CPU part on N free cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mimic_ils import synth  # noqa: E402
from mimic_ils.files import encode_png  # noqa: E402
from mimic_ils.orchestration import pipeline  # noqa: E402
from mimic_ils.orchestration.config import BuildConfig  # noqa: E402
from mimic_ils.orchestration.shard import Shard  # noqa: E402
from mimic_ils.orchestration.stages import ProjectStages  # noqa: E402
from mimic_ils.orchestration.workdir import WorkDir  # noqa: E402
from mimic_ils.vision import runner  # noqa: E402

EXCLUDED = ("backends", "report")
STEP_METHODS = {"lungs_heart": "segment", "pseudo_normal": "edit", "anatomy": "segment", "lesion_boxes": "detect"}


class Meter:
    """CPU seconds per named piece (``time.process_time``; an inner piece is not also counted in an outer one)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[float] = []

    def wrap(self, name: str, function):
        def timed(*args, **kwargs):
            start = time.process_time()
            self._stack.append(0.0)
            try:
                return function(*args, **kwargs)
            finally:
                inner = self._stack.pop()
                spent = time.process_time() - start
                self.seconds[name] += spent - inner
                if self._stack:
                    self._stack[-1] += spent

        return timed

    def take(self) -> dict[str, float]:
        out, self.seconds = dict(self.seconds), defaultdict(float)
        return out


def instrument(meter: Meter) -> None:
    """Install the timers on the modules the build looks its pieces up in."""
    create = runner.create_backends

    def timed_backends(config, root):
        backends = meter.wrap("backends", create)(config, root)
        for step, backend in backends.items():
            method = STEP_METHODS[step]
            setattr(backend, method, meter.wrap("backends", getattr(backend, method)))
        return backends

    runner.create_backends = timed_backends
    runner._read_image = meter.wrap("dicom read", runner._read_image)
    runner.write_artifacts = meter.wrap("artifacts write", runner.write_artifacts)
    runner.encode_png = meter.wrap("runner PNG encodes", runner.encode_png)
    runner.load_cues = meter.wrap("cues load", runner.load_cues)
    pipeline.persist = meter.wrap("study persist", pipeline.persist)
    ProjectStages.structure = meter.wrap("report", ProjectStages.structure)
    ProjectStages.ground = meter.wrap("grounding+qc", ProjectStages.ground)
    ProjectStages.pairs = meter.wrap("pairs", ProjectStages.pairs)


def make_cohort(root: Path, studies: int, size: tuple[int, int] | None, seed: int = 0) -> Path:
    """``synth.generate_cohort`` with every image ``size`` (None: synth's own sizes)."""
    plan_images = synth._plan_images
    if size is not None:
        synth._plan_images = lambda rng: [replace(image, height=size[0], width=size[1]) for image in plan_images(rng)]
    try:
        if not (root / "phantom_truth" / "truth.jsonl").exists():
            synth.generate_cohort(root, studies, seed, workers=1)
    finally:
        synth._plan_images = plan_images
    return root


def build_studies(cohort: Path, work: Path, shard: Shard | None = None) -> list[dict]:
    """Build the cohort's studies one by one; per study with frontal images, its frontal count and CPU seconds."""
    meter = Meter()
    instrument(meter)
    stages = ProjectStages(cohort, BuildConfig(vision="phantom"))
    studies = sorted(stages.studies(), key=lambda study: study.study_id)
    if shard is not None:
        studies = [study for study in studies if shard.owns(study.study_id)]
    rows = []
    for study in studies:
        if not study.frontal_images:
            continue
        start = time.process_time()
        pipeline.run_shard(stages, WorkDir(work), [study], progress=False)
        total = time.process_time() - start
        pieces = meter.take()
        pieces["rest of run_shard"] = total - sum(pieces.values())
        rows.append({"images": len(study.frontal_images), "pieces": pieces,
                     "cpu_part": total - sum(pieces.get(name, 0.0) for name in EXCLUDED)})
    return rows


def folder_bytes(work: Path, frontal: int) -> dict[str, tuple[float, float]]:
    """(bytes, files) per frontal image of each part of the work folder."""
    parts = {"vision artifacts": ["vision", "vision_keys"], "study artifacts": ["studies", "reports"],
             "PNGs (images, masks)": ["images", "masks"]}
    out = {}
    for name, folders in parts.items():
        files = [path for folder in folders for path in (work / folder).rglob("*") if path.is_file()]
        out[name] = (sum(path.stat().st_size for path in files) / frontal, len(files) / frontal)
    every = [path for path in work.rglob("*") if path.is_file()]
    out["whole work folder"] = (sum(path.stat().st_size for path in every) / frontal, len(every) / frontal)
    # on disk, as du counts: a hard-linked file (images/<id>.png is the vision artifact's image.png) once
    inodes = {(path.stat().st_dev, path.stat().st_ino): path.stat().st_size for path in every}
    out["whole, on disk (links once)"] = (sum(inodes.values()) / frontal, len(inodes) / frontal)
    return out


def png_encode_seconds(work: Path) -> float:
    """Median CPU seconds of encoding one cached image as ``image.png`` (the output folder's image file)."""
    times = []
    for folder in [path for path in sorted((work / "vision").iterdir()) if not path.name.startswith(".")][:5]:
        image = runner.load_cues(folder).image
        start = time.process_time()
        encode_png(image)
        times.append(time.process_time() - start)
    return statistics.median(times)


def real_resolution(args: argparse.Namespace, root: Path) -> None:
    size = tuple(int(value) for value in args.size.split("x"))
    start = time.perf_counter()
    cohort = make_cohort(root / "cohort", args.studies, size)
    print(f"cohort: {args.studies} studies at {size[0]}x{size[1]} in {time.perf_counter() - start:.0f} s")
    rows = build_studies(cohort, root / "work")
    measured = rows[1:] or rows
    names = sorted({name for row in measured for name in row["pieces"]})
    print(f"per frontal image, median over {len(measured)} studies after a warm-up (CPU s):")
    for name in names:
        value = statistics.median(row["pieces"].get(name, 0.0) / row["images"] for row in measured)
        print(f"  {name:<22} {value:8.3f}{'  (excluded)' if name in EXCLUDED else ''}")
    encode = png_encode_seconds(root / "work")
    print(f"  {'image.png encode alone':<22} {encode:8.3f}  (inside runner PNG encodes)")
    cpu_part = statistics.median(row["cpu_part"] / row["images"] for row in measured)
    print(f"CPU part per image: {cpu_part:.3f} s; without the image.png encode (an output file) "
          f"{cpu_part - encode:.3f} s (target <= 0.3 s)")
    frontal = sum(row["images"] for row in rows)
    for name, (size_bytes, count) in folder_bytes(root / "work", frontal).items():
        print(f"work folder, {name:<22} {size_bytes / 1e6:8.2f} MB/image  {count:5.1f} files/image")


def phantom_size(args: argparse.Namespace, root: Path) -> None:
    cohort = make_cohort(root / "small", args.small_studies, None)
    command = [sys.executable, __file__, "--worker", str(cohort), str(root / "small_work")]
    workers = [subprocess.Popen([*command, f"{i}/{args.processes}"], stdout=subprocess.PIPE, text=True)
               for i in range(args.processes)]
    results = [json.loads(worker.communicate()[0].strip().splitlines()[-1]) for worker in workers]
    images = sum(result["images"] for result in results)
    slowest = max(result["cpu_part"] for result in results)
    print(f"phantom size, {args.processes} processes: {images} frontal images, CPU part "
          f"{[round(result['cpu_part'], 2) for result in results]} s per process -> {images / slowest:.1f} images/s "
          f"(one core: {images / sum(result['cpu_part'] for result in results):.1f} images/s)")


def worker(cohort: str, work: str, shard: str) -> None:
    index, count = (int(value) for value in shard.split("/"))
    rows = build_studies(Path(cohort), Path(work), Shard(index, count))
    print(json.dumps({"images": sum(row["images"] for row in rows), "cpu_part": sum(row["cpu_part"] for row in rows)}))


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2500x2048", help="HxW of every image")
    parser.add_argument("--studies", type=int, default=7, help="studies at --size (0: skip that part)")
    parser.add_argument("--processes", type=int, default=0, help="also the phantom-size images/s on N processes")
    parser.add_argument("--small-studies", type=int, default=120)
    parser.add_argument("--keep", help="folder for the cohorts and work folders (default: a temporary one)")
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench_cpu_image."))
    for stale in ("work", "small_work"):
        shutil.rmtree(root / stale, ignore_errors=True)
    if args.studies:
        real_resolution(args, root)
    if args.processes:
        phantom_size(args, root)


if __name__ == "__main__":
    main()
