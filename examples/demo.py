"""The main job end to end on a synthetic MIMIC-CXR-shaped cohort (what `make demo` runs).

    synth -> scan -> build (phantom vision backends, rules report backend) -> stats -> overlays
          -> train a tiny random ROSALIA on CPU -> evaluate it on the test split

Everything is written under ``--out`` (default ``demo_out/``); the last lines list the files worth opening.
Real data: replace the synthetic cohort by your PhysioNet MIMIC-CXR root and the phantom backends by ``real``
(see README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mimic_ils.cli import main as mimic_ils


def step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def done(started: float) -> None:
    print(f"    ({time.perf_counter() - started:.1f} s)", flush=True)


def run(argv: list[str]) -> None:
    code = mimic_ils(argv)
    if code:
        sys.exit(f"mimic-ils {' '.join(argv)} failed with exit code {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--studies", type=int, default=120, help="synthetic studies (default: 120)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-steps", type=int, default=150, help="tiny ROSALIA optimiser steps (default: 150)")
    parser.add_argument("--skip-training", action="store_true", help="stop after the dataset and its statistics")
    args = parser.parse_args()
    out = Path(args.out)
    cohort, dataset, run_dir = out / "cohort", out / "mimic_ils", out / "rosalia_tiny"

    t = step(f"1. synthetic MIMIC-CXR cohort: {args.studies} studies, seed {args.seed} -> {cohort}")
    if not (cohort / "mimic-cxr-2.0.0-metadata.csv.gz").is_file():
        run(["synth", "--out", str(cohort), "--studies", str(args.studies), "--seed", str(args.seed)])
    done(t)

    t = step("2. scan the cohort as a MIMIC-CXR root")
    run(["scan", str(cohort)])
    done(t)

    t = step(f"3. build MIMIC-ILS (phantom vision backends, rules report backend) -> {dataset}")
    run(["build", "--mimic-root", str(cohort), "--out", str(dataset), "--backends", "phantom", "--no-progress"])
    done(t)

    t = step("4. statistics (paper Tables 9-11, Fig. 4)")
    run(["stats", str(dataset)])
    done(t)

    t = step("5. overlays of masks on the images, with instruction and answer")
    from mimic_ils.orchestration import demo_overlays

    overlays = demo_overlays(dataset, out / "overlays", n=6)
    print("\n".join(f"    {path}" for path in overlays))
    done(t)
    if args.skip_training:
        return

    t = step(f"6. train a tiny random ROSALIA on CPU ({args.train_steps} steps) -> {run_dir}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import train_rosalia

    config = Path(__file__).resolve().parent / "configs" / "tiny_cpu.yaml"
    result = train_rosalia.main([
        "--config", str(config), "--dataset", str(dataset), "--output_dir", str(run_dir),
        "--max_steps", str(args.train_steps), "--eval_strategy", "no", "--disable_tqdm", "true",
    ])
    done(t)

    t = step("7. evaluate the trained tiny model on the test split (segment-only and with text)")
    run(["evaluate", "--model", str(run_dir / "merged"), "--dataset", str(dataset), "--split", "test",
         "--out", str(out / "evaluation"), "--device", "cpu", "--no-progress",
         "--max-new-tokens", "32"])  # an untrained tiny model rarely says </s>
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    done(t)

    print("\n=== summary")
    print(f"    validation before/after training: {json.dumps(result['before'])} -> {json.dumps(result['after'])}")
    figures = metrics.get("metrics", metrics)
    print(f"    test: gIoU {figures['giou']:.3f}  cIoU {figures['ciou']:.3f}  N-Acc {figures['n_acc']:.3f}")
    print("    (a tiny random model trained for seconds on a small phantom set: a smoke run of the real code path,"
          " not a model; examples/learning_curve.py shows a tiny model learning, benchmarks/ the figures)")
    for path in (dataset / "README.md", dataset / "stats", out / "overlays", run_dir / "loss_curve.png",
                 run_dir / "merged" / "README.md", out / "evaluation" / "report.md"):
        print(f"    {path}")


if __name__ == "__main__":
    main()
