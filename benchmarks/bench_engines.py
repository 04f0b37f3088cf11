"""Wall time of the three ways to run a build on one machine: local (one process), torchrun (N gloo ranks), Ray.

    python benchmarks/bench_engines.py [--studies 40] [--repeats 2] [--workers 2] [--seconds-per-image 0]

Synthesises a cohort, then builds it with phantom backends (rules report backend) three ways, each into a fresh
output and work folder, ``--repeats`` times; prints the median wall seconds and studies/s of each, and checks that
the three output folders are byte-identical (``build_digest.folder_lines``). ``--seconds-per-image S`` makes the
pseudo-normal step wait S seconds per image, as RadEdit would on a GPU: it shows how each engine spreads one slow
model stage (Ray: a pool of actors for that step; torchrun: a fixed hash split of the studies).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from build_digest import folder_lines  # noqa: E402


def build_command(engine: str, cohort: Path, out: Path, config: Path, workers: int) -> list[str]:
    common = ["-m", "mimic_ils", "build", "--mimic-root", str(cohort), "--out", str(out), "--config", str(config),
              "--no-progress"]
    if engine == "local":
        return [sys.executable, *common]
    if engine == "torchrun":
        return [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node", str(workers),
                *common]
    return [sys.executable, *common, "--engine", "ray", "--ray-num-cpus", str(workers)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="torchrun ranks and Ray CPUs")
    parser.add_argument("--seconds-per-image", type=float, default=0.0)
    args = parser.parse_args()
    from mimic_ils.synth import generate_cohort

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MIMIC_ILS_CODE_COMMIT": "0" * 40}
    with tempfile.TemporaryDirectory(prefix="bench_engines_") as tmp:
        tmp = Path(tmp)
        cohort = generate_cohort(tmp / "cohort", args.studies, 0, workers=1)
        config = tmp / "build.yaml"
        config.write_text(
            "batch_size: 4\nvision:\n  steps:\n    lungs_heart: phantom\n"
            f"    pseudo_normal: {{name: phantom, options: {{seconds_per_image: {args.seconds_per_image}}}}}\n"
            "    anatomy: phantom\n    lesion_boxes: phantom\n")
        times: dict[str, list[float]] = {}
        digests: dict[str, list[str]] = {}
        for repeat in range(args.repeats):
            for engine in ("local", "torchrun", "ray"):
                out = tmp / f"{engine}-{repeat}"
                started = time.monotonic()
                subprocess.run(build_command(engine, cohort, out, config, args.workers), env=env, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                times.setdefault(engine, []).append(time.monotonic() - started)
                digests[engine] = folder_lines(out)
        identical = all(lines == digests["local"] for lines in digests.values())
        print(f"{args.studies} studies, phantom backends, {args.seconds_per_image:g} s per image in pseudo_normal, "
              f"{args.workers} workers, {args.repeats} repeats; outputs byte-identical: {identical}")
        base = statistics.median(times["local"])
        for engine, values in times.items():
            median = statistics.median(values)
            print(f"{engine:9s} median {median:7.1f} s  {args.studies / median:6.2f} studies/s  "
                  f"{base / median:5.2f}x local  (runs: {', '.join(f'{value:.1f}' for value in values)})")
        if not identical:
            raise SystemExit("outputs differ")


if __name__ == "__main__":
    main()
