"""Training-step throughput of ``RosaliaTrainer`` on ``tiny_rosalia`` (CPU): with vs without once-per-image encoders.

    .venv/bin/python benchmarks/bench_training.py [--sam-size 256] [--sam-patch 16] [--train-sam-encoder]
        [--image-size 512] [--pairs-per-image 4] [--batch 8] [--steps 12] [--threads 2] [--rounds 2]

``--sam-size 128 --sam-patch 8 --train-sam-encoder`` times the demo's model (``examples/configs/tiny_cpu.yaml``).

*With reuse*: the sampler keeps the pairs of an image together and ``RosaliaCollator(group_by_image=True)`` hands
each unique image to CLIP and SAM once (``image_index``). *Without*: ``group_by_image=False`` in both, so every
pair is preprocessed and encoded on its own. Each image carries ``--pairs-per-image`` pairs, half positive and half
negative (MIMIC-ILS images carry several pairs), so a 1:1 batch of 8 holds 2 images with reuse and 8 without.
A step is timed from ``on_step_begin`` to ``on_step_end`` plus the data loading before it (wall time between
consecutive step ends); the two modes alternate ``--rounds`` times (the machine may be shared) and the median over
all timed steps of a mode is reported as samples/s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import datasets
import numpy as np
import torch
from PIL import Image
from transformers import TrainerCallback

from mimic_ils.features import pairs_features
from rosalia_hf.testing import tiny_rosalia
from rosalia_hf.trainer import RosaliaTrainer
from rosalia_hf.trainer_config import RosaliaTrainingArguments


class StepTimer(TrainerCallback):
    """Wall seconds between consecutive optimiser-step ends (data loading + forward + backward + update)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        if not self.times and state.global_step == 0:
            self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


def make_pairs(num_images: int, size: int, pairs_per_image: int, seed: int = 0) -> datasets.Dataset:
    """A ``pairs`` split: ``size x size`` noisy images, half the pairs of each image positive (a bright disc)."""
    rng = np.random.default_rng(seed)
    rows = []
    yy, xx = np.mgrid[:size, :size]
    for index in range(num_images):
        image = rng.normal(90, 25, (size, size))
        for slot in range(pairs_per_image):
            positive = slot % 2 == 0
            mask = None
            if positive:
                cy, cx, radius = rng.uniform(0.3, 0.7) * size, rng.uniform(0.2, 0.45) * size, 0.1 * size
                disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
                image[disc] += 80
                mask = Image.fromarray(disc.astype(np.uint8) * 255)
            rows.append({"id": f"img{index}-{slot}", "target": "opacity", "lesion": "opacity",
                         "question_type": "global" if positive else "basic",
                         "locations": ["right lung"] if positive else ["left lung"],
                         "certainty": "definitive" if positive else None,
                         "instruction": f"Segment the opacity{'' if positive else ' in the left lung'}.",
                         "answer": "[SEG] It is in the right lung." if positive else "[SEG] There is no opacity.",
                         "polarity": "positive" if positive else "negative", "mask": mask,
                         "study_id": f"s{index}", "dicom_id": f"img{index}", "split": "train"})
        for row in rows[-pairs_per_image:]:
            row["image"] = Image.fromarray(image.clip(0, 255).astype(np.uint8))
    columns = {name: [row[name] for row in rows] for name in pairs_features()}
    return datasets.Dataset.from_dict(columns, features=pairs_features())


def step_times(dataset: datasets.Dataset, group: bool, args: argparse.Namespace) -> tuple[list[float], float]:
    """Seconds of ``args.steps`` training steps after warm-up, and the mean number of encoded images per batch."""
    model, processor = tiny_rosalia(seed=0, sam_image_size=args.sam_size, sam_patch_size=args.sam_patch,
                                    freeze_sam_image_encoder=not args.train_sam_encoder)
    with tempfile.TemporaryDirectory() as output:
        training = RosaliaTrainingArguments(
            output_dir=output, per_device_train_batch_size=args.batch, global_train_batch_size=None,
            gradient_accumulation_steps=1, max_steps=args.warmup + args.steps, learning_rate=1e-3, warmup_steps=0,
            bf16=False, use_cpu=True, report_to="none", logging_steps=10_000, save_strategy="no", lora_r=8,
            lora_alpha=16, lora_dropout=0.0, group_by_image=group, histogram_equalization_prob=0.5,
            dataloader_num_workers=0, disable_tqdm=True, seed=0,
        )
        timer = StepTimer()
        trainer = RosaliaTrainer(model.train(), training, processor, train_dataset=dataset, callbacks=[timer])
        collate, images_per_batch = trainer.data_collator, []

        def counting_collate(items):
            batch = collate(items)
            images_per_batch.append(len(batch["sam_pixel_values"]))
            return batch

        trainer.data_collator = counting_collate
        trainer.train()
    return timer.times[args.warmup:], statistics.mean(images_per_batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam-size", type=int, default=256, help="SAM input side of the tiny SAM")
    parser.add_argument("--sam-patch", type=int, default=16, help="SAM patch side")
    parser.add_argument("--train-sam-encoder", action="store_true", help="train the SAM image encoder (the demo's)")
    parser.add_argument("--image-size", type=int, default=512, help="side of the square uint8 training images")
    parser.add_argument("--pairs-per-image", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternate with/without this many times (shared CPUs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    num_images = (args.warmup + args.steps + 2) * args.batch // args.pairs_per_image * 2
    dataset = make_pairs(num_images, args.image_size, args.pairs_per_image)
    print(f"tiny_rosalia(sam_image_size={args.sam_size}, sam_patch_size={args.sam_patch}, "
          f"freeze_sam_image_encoder={not args.train_sam_encoder}), {args.image_size}x{args.image_size} images, "
          f"{args.pairs_per_image} pairs/image, batch {args.batch}, {args.steps} timed steps, "
          f"{args.threads} threads, {args.rounds} alternating rounds")
    times: dict[bool, list[float]] = {True: [], False: []}
    images: dict[bool, float] = {}
    for _ in range(args.rounds):
        for group in (True, False):
            seconds, images[group] = step_times(dataset, group, args)
            times[group] += seconds
    results = {}
    for group in (True, False):
        step = statistics.median(times[group])
        results[group] = args.batch / step
        label = "with reuse (group_by_image=True) " if group else "without (group_by_image=False)  "
        print(f"{label} {images[group]:4.1f} encoded images/batch  median step {step * 1000:8.1f} ms  "
              f"{results[group]:7.2f} samples/s")
    print(f"ratio with/without: {results[True] / results[False]:.2f}x")


if __name__ == "__main__":
    main()
