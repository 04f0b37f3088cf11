"""The learning experiment: a tiny random ROSALIA trained on CPU, validation gIoU / cIoU / N-Acc every K steps.

    .venv/bin/python examples/learning_curve.py [--config examples/configs/tiny_learning.yaml] [--dataset DIR]
        [--output-dir runs/learning_curve] [--eval-every 50] [--max-steps N]

Without ``--dataset`` the disc dataset of ``tests/_training_helpers.py`` is written under the output folder
(200 training and 30 validation images, 48x64; positives have one bright disc, always in the image-left half, so
"... in the left lung" questions are learnably empty). ``--dataset`` takes any folder written by
``mimic-ils build``. Prints one JSON line per evaluation (``{"step", "giou", "ciou", "n_acc", "elapsed_s"}``,
step 0 before training) and writes ``learning_curve.png`` and ``learning_curve.jsonl`` in the output folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import train_rosalia  # noqa: E402

DISC_TRAIN_IMAGES = 200
DISC_VALIDATE_IMAGES = 30


class CurveRecorder(TrainerCallback):
    """Collects each evaluation logged by ``RosaliaTrainer.evaluate`` as one curve point and hands it to ``emit``."""

    def __init__(self, emit: Callable[[dict], None]) -> None:
        self.points: list[dict] = []
        self.emit = emit
        self.start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "eval_giou" in logs and state.is_world_process_zero:
            point = {"step": state.global_step, **{key: round(float(logs[f"eval_{key}"]), 4)
                                                   for key in ("giou", "ciou", "n_acc")},
                     "elapsed_s": round(time.perf_counter() - self.start, 1)}
            if not self.points or self.points[-1]["step"] != point["step"]:
                self.points.append(point)
                self.emit(point)


def disc_dataset(folder: Path) -> str:
    """Writes (once) the disc dataset of ``tests/_training_helpers.py`` into ``folder``."""
    if (folder / "README.md").is_file():
        return str(folder)
    sys.path.insert(0, str(ROOT / "tests"))
    from _training_helpers import write_dataset_folder

    return write_dataset_folder(folder, DISC_TRAIN_IMAGES, DISC_VALIDATE_IMAGES)


def run(config: str | Path, output_dir: str | Path, *, dataset: str | None = None, eval_every: int = 50,
        max_steps: int | None = None, emit: Callable[[dict], None] = lambda point: None) -> list[dict]:
    """Trains as ``config`` says and returns the curve: one dict per evaluation, the first at step 0."""
    import datasets

    from rosalia_hf.trainer import RosaliaTrainer

    output_dir = Path(output_dir)
    dataset = dataset or disc_dataset(output_dir / "disc_dataset")
    argv = ["--config", str(config), "--dataset", dataset, "--output_dir", str(output_dir),
            "--eval_strategy", "steps", "--eval_steps", str(eval_every), "--disable_tqdm", "true"]
    script, args = train_rosalia.parse_arguments(argv + (["--max_steps", str(max_steps)] if max_steps else []))
    datasets.disable_progress_bars()
    train, validate = train_rosalia.load_splits(script)
    model, processor = train_rosalia.load_model(script)
    recorder = CurveRecorder(emit)
    trainer = RosaliaTrainer(model, args, processor, train_dataset=train, eval_dataset=validate,
                             callbacks=[recorder])
    trainer.evaluate()
    trainer.train()
    if recorder.points[-1]["step"] != trainer.state.global_step:
        trainer.evaluate()
    if trainer.is_world_process_zero():
        (output_dir / "learning_curve.jsonl").write_text("".join(json.dumps(p) + "\n" for p in recorder.points))
        plot_curve(recorder.points, output_dir / "learning_curve.png")
    return recorder.points


def plot_curve(points: list[dict], path: Path) -> Path:
    """Validation gIoU, cIoU and N-Acc against the optimiser step, with the wall time on the top axis label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=120)
    steps = [p["step"] for p in points]
    for key, style, label in (("giou", "C0o-", "gIoU"), ("ciou", "C1s--", "cIoU"), ("n_acc", "C2^-", "N-Acc")):
        axis.plot(steps, [p[key] for p in points], style, label=label, linewidth=1.4)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("optimiser step")
    axis.set_ylabel("validation metric")
    axis.set_title(f"tiny ROSALIA, random init, CPU: {points[-1]['elapsed_s']:.0f} s wall")
    axis.grid(alpha=0.3)
    axis.legend(loc="center right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "examples/configs/tiny_learning.yaml"))
    parser.add_argument("--dataset", default=None, help="a built MIMIC-ILS folder (default: the disc dataset)")
    parser.add_argument("--output-dir", default="runs/learning_curve")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--max-steps", type=int, default=None)
    options = parser.parse_args()
    points = run(options.config, options.output_dir, dataset=options.dataset, eval_every=options.eval_every,
                 max_steps=options.max_steps, emit=lambda point: print(json.dumps(point), flush=True))
    print(f"wrote {Path(options.output_dir) / 'learning_curve.png'}; final {json.dumps(points[-1])}")


if __name__ == "__main__":
    main()
