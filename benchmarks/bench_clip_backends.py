"""CLIP preprocessing: the PIL backend (LISA's pixels, used for converted checkpoints) vs torchvision (our default).

    .venv/bin/python benchmarks/bench_clip_backends.py [--size 2500x2048] [--images 8] [--repeats 5]

Prints the median seconds per image of each backend on X-ray-sized grey images, their ratio, and how far apart
their pixels are (max |difference| and the share of values that differ), in 8-bit levels after normalisation.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from bench_predict import _median_seconds  # the script folder is on sys.path
from transformers import CLIPImageProcessor

from rosalia_hf.processing_rosalia import to_rgb_uint8, with_clip_backend

CLIP_STD_MIN = 0.26130258  # the smallest channel std: one 8-bit level is 1 / 255 / std after normalisation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2500x2048", help="HxW of the test images")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = (127 + 100 * np.sin(xx / 37.0) * np.cos(yy / 53.0)).astype(np.float32)
    images = [to_rgb_uint8(np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8))
              for _ in range(args.images)]
    base = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    backends = {name: with_clip_backend(base, name) for name in ("torchvision", "pil")}
    pixels = {name: proc(images=images, return_tensors="pt")["pixel_values"] for name, proc in backends.items()}
    seconds = {name: _median_seconds(lambda p=proc: p(images=images, return_tensors="pt"), args.repeats, warmup=1)
               / args.images for name, proc in backends.items()}
    diff = (pixels["pil"] - pixels["torchvision"]).abs()
    level = 1 / 255 / CLIP_STD_MIN
    for name, value in seconds.items():
        print(f"{name:12s} {1000 * value:8.2f} ms/image ({args.size}, {args.threads} thread(s))")
    print(f"pil / torchvision time ratio: {seconds['pil'] / seconds['torchvision']:.2f}")
    print(f"pixels: max |pil - torchvision| = {float(diff.max()):.4f} ({float(diff.max()) / level:.2f} 8-bit levels), "
          f"{100 * float((diff > 1e-6).float().mean()):.2f}% of values differ")


if __name__ == "__main__":
    main()
