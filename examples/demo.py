"""The main job end to end on a synthetic MIMIC-CXR-shaped cohort (what `make demo` runs).

    synth -> scan -> build (phantom vision backends, rules report backend) -> stats -> overlays
          -> train a tiny random ROSALIA on CPU -> evaluate it on the test split

Everything is written under ``--out`` (default ``demo_out/``); the last lines list the files worth opening and the
``rosalia predict`` / ``rosalia serve`` commands for the trained model. The training (examples/train_rosalia.py
with examples/configs/tiny_cpu.yaml, about 3 minutes on 2 cores) goes through the real RosaliaTrainer, processor
and collator; its model segments the phantom lesions (test gIoU and N-Acc in docs/benchmarks.md, "Demo training").
Real data: replace the synthetic cohort by your PhysioNet MIMIC-CXR root and the phantom backends by ``real``
(see README.md).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
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


def example_pair(dataset: Path, split: str = "test") -> tuple[str, str]:
    """``(image path, instruction)`` of the first positive pair of ``split`` (the first pair if none is positive).

    The path is read from the split's ``metadata.parquet`` in ``dataset`` itself (``image_file_name``, relative to
    it, as ``datasets``' image folders have it), not from ``load_dataset``: a folder built again with the same bytes
    elsewhere is served from the ``datasets`` cache, whose image paths name the first folder."""
    import datasets
    import pyarrow.parquet as pq

    files = datasets.load_dataset_builder(str(dataset), "pairs").config.data_files[split]
    metadata = next(Path(name) for name in files if Path(name).name == "metadata.parquet")
    rows = pq.read_table(metadata, columns=["image_file_name", "instruction", "polarity"]).to_pylist()
    row = next((row for row in rows if row["polarity"] == "positive"), rows[0])
    return str(metadata.parent / row["image_file_name"]), row["instruction"]


def try_commands(dataset: Path, model: Path, predictions: Path) -> list[str]:
    """The ``rosalia predict`` (one test image and instruction) and ``rosalia serve`` command lines for ``model``."""
    image, instruction = example_pair(dataset)
    return [f"rosalia predict --model {shlex.quote(str(model))} --out {shlex.quote(str(predictions))} "
            f"{shlex.quote(image)}  -i {_double_quoted(instruction)}",
            f"rosalia serve --model {shlex.quote(str(model))}"]


def _double_quoted(text: str) -> str:
    """``"text"`` for a POSIX shell (the instructions are plain sentences; ``$`` ``"`` `` ` `` ``\\`` escaped)."""
    return '"' + "".join("\\" + char if char in '$"`\\' else char for char in text) + '"'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--studies", type=int, default=360, help="synthetic studies (default: 360)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-steps", type=int, default=None,
                        help="tiny ROSALIA optimiser steps (default: max_steps of examples/configs/tiny_cpu.yaml)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for training and evaluation (default: 1; see below)")
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

    config = Path(__file__).resolve().parent / "configs" / "tiny_cpu.yaml"
    steps = [] if args.train_steps is None else ["--max_steps", str(args.train_steps)]
    t = step(f"6. train a tiny random ROSALIA on CPU ({config.name}"
             f"{'' if args.train_steps is None else f', {args.train_steps} steps'}) -> {run_dir}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    import train_rosalia

    # The tiny model's operations are too small to gain from a second thread, and on a shared 2-core machine two
    # OpenMP threads spin against the other processes: training steps measured 10x slower at load 3 than with one.
    torch.set_num_threads(args.threads)

    result = train_rosalia.main([
        "--config", str(config), "--dataset", str(dataset), "--output_dir", str(run_dir),
        "--eval_strategy", "no", "--disable_tqdm", "true", *steps,
    ])
    done(t)

    t = step("7. evaluate the trained tiny model on the test split (segment-only and with text)")
    run(["evaluate", "--model", str(run_dir / "merged"), "--dataset", str(dataset), "--split", "test",
         "--out", str(out / "evaluation"), "--device", "cpu", "--no-progress",
         "--max-new-tokens", "32"])  # a tiny model trained for minutes does not always say </s>
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    done(t)

    print("\n=== summary")
    before, after = result["before"], result["after"]
    print(f"    validation before training: gIoU {before['giou']:.3f}  N-Acc {before['n_acc']:.3f}")
    print(f"    validation after {after['step']} steps: gIoU {after['giou']:.3f}  N-Acc {after['n_acc']:.3f}")
    print(f"    training wall time: {result['train_seconds']:.0f} s")
    figures = metrics.get("metrics", metrics)
    text = f"  text accuracy {figures['text_accuracy']:.3f}" if figures.get("text_accuracy") is not None else ""
    print(f"    test: gIoU {figures['giou']:.3f}  cIoU {figures['ciou']:.3f}  N-Acc {figures['n_acc']:.3f}{text}")
    print("    (a tiny random model trained for minutes on a small phantom set: it learns the phantom lesions, it is"
          " not a chest X-ray model)")
    for path in (dataset / "README.md", dataset / "stats", out / "overlays", run_dir / "loss_curve.png",
                 run_dir / "merged" / "README.md", out / "evaluation" / "report.md", out / "evaluation" / "cases.png"):
        print(f"    {path}")
    print("\n=== try the trained model")
    for line in try_commands(dataset, run_dir / "merged", out / "predictions"):
        print(f"    {line}")
    if shutil.which("rosalia") is None:  # make demo runs .venv/bin/python without activating the venv
        where = Path(sys.executable).parent
        print(f"    (the rosalia command is in {where}: run `source {where / 'activate'}` first)")


if __name__ == "__main__":
    main()
