"""Segment-only vs generate-mode ``predict`` on ``tiny_rosalia`` (CPU): medians and their ratio.

    .venv/bin/python benchmarks/bench_predict.py [--batch 4] [--new-tokens 16] [--repeats 10]

Generation is forced to ``--new-tokens`` tokens (``min_new_tokens``) so that the random model's early ``</s>``
does not shorten it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from rosalia_hf.predictor import RosaliaPredictor
from rosalia_hf.testing import tiny_rosalia


def _median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, processor = tiny_rosalia(0)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (256, 320), dtype=np.uint8) for _ in range(args.batch)]
    instructions = ["Segment the opacity in the right lung base."] * args.batch
    forced = {"min_new_tokens": args.new_tokens}

    def segment():
        return RosaliaPredictor(model, processor).predict(images, instructions, segment_only=True)

    def generate():
        return RosaliaPredictor(model, processor).predict(images, instructions, max_new_tokens=args.new_tokens,
                             generate_kwargs=forced)

    seg = _median_seconds(segment, args.repeats)
    gen = _median_seconds(generate, args.repeats)
    print(f"tiny_rosalia CPU, batch {args.batch}, {args.new_tokens} new tokens, threads {args.threads}, "
          f"{args.repeats} repeats")
    print(f"segment_only median: {seg * 1000:.1f} ms/batch ({seg * 1000 / args.batch:.1f} ms/instruction)")
    print(f"generate     median: {gen * 1000:.1f} ms/batch ({gen * 1000 / args.batch:.1f} ms/instruction)")
    print(f"ratio generate / segment_only: {gen / seg:.2f}x")


if __name__ == "__main__":
    main()
