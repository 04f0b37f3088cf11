"""Benchmark of the ILS metric module: 12,235 pairs of 1024x1024 masks streamed through ``add_batch`` + ``compute``.

    .venv/bin/python benchmarks/bench_metric.py [--samples 12235] [--size 1024] [--batch-size 32] [--repeats 3]

Prints the median wall time and samples/s of the module, the peak memory (process max RSS and the tracemalloc
peak of the streaming run), and the ratio to a straightforward per-sample Python loop (LISA-style 2-class
histogram per pair, then the paper's formulas), timed on ``--baseline-samples`` pairs and scaled up. The masks come
from a small pool (references 0/255 uint8 as decoded from PNG, predictions bool as ``predict`` returns them), so the
producer holds only the pool and one batch, as an evaluation loop would.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
POOL = 16


def blob_masks(count: int, size: int, seed: int) -> list[np.ndarray]:
    """``count`` ``size x size`` bool masks, each one random ellipse (a lesion-like blob)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:size, :size]
    masks = []
    for _ in range(count):
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        ry, rx = rng.uniform(0.05, 0.25, 2) * size
        masks.append(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0)
    return masks


def sample_pairs(samples: int, size: int):
    """Yield ``(prediction bool, reference uint8 0/255 or None, lesion)``; every third pair is a negative."""
    references = [(mask.astype(np.uint8) * 255) for mask in blob_masks(POOL, size, seed=1)]
    predictions = blob_masks(POOL, size, seed=2)
    empty = np.zeros((size, size), dtype=bool)
    lesions = ("cardiomegaly", "pneumonia", "atelectasis", "opacity", "consolidation", "edema", "effusion")
    for index in range(samples):
        negative = index % 3 == 2
        prediction = empty if negative and index % 2 else predictions[index % POOL]
        yield prediction, None if negative else references[(index * 7) % POOL], lesions[index % 7]


def stream_metric(metric, samples: int, size: int, batch_size: int) -> dict:
    batch: dict[str, list] = {"predictions": [], "references": [], "lesions": []}
    for prediction, reference, lesion in sample_pairs(samples, size):
        batch["predictions"].append(prediction)
        batch["references"].append(reference)
        batch["lesions"].append(lesion)
        if len(batch["predictions"]) == batch_size:
            metric.add_batch(**batch)
            batch = {name: [] for name in batch}
    if batch["predictions"]:
        metric.add_batch(**batch)
    return metric.compute()


def histogram_loop(samples: int, size: int) -> dict:
    """The straightforward baseline: per pair a 2-class histogram of intersection and union (as LISA does)."""
    ious, inter_sum, union_sum, negatives, negatives_ok = [], 0, 0, 0, 0
    for prediction, reference, _ in sample_pairs(samples, size):
        pred = prediction.astype(np.int64).ravel()
        ref = np.zeros_like(pred) if reference is None else (reference > 0).astype(np.int64).ravel()
        area_inter = np.histogram(pred[pred == ref], bins=2, range=(0, 1))[0]
        area_pred = np.histogram(pred, bins=2, range=(0, 1))[0]
        area_ref = np.histogram(ref, bins=2, range=(0, 1))[0]
        inter, union = area_inter[1], area_pred[1] + area_ref[1] - area_inter[1]
        if area_ref[1] > 0:
            ious.append(inter / union)
            inter_sum, union_sum = inter_sum + inter, union_sum + union
        else:
            negatives += 1
            negatives_ok += int(area_pred[1] == 0)
    return {"giou": float(np.mean(ious)), "ciou": inter_sum / union_sum, "n_acc": negatives_ok / negatives}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=12_235)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-samples", type=int, default=600)
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
    os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="bench_ils_"))
    import evaluate

    metric = evaluate.load(str(REPO / "metrics" / "ils"))
    print(f"cores available: {len(os.sched_getaffinity(0))}; python {sys.version.split()[0]}; numpy {np.__version__}")

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times, results = [], None
    for _ in range(args.repeats):
        start = time.perf_counter()
        results = stream_metric(metric, args.samples, args.size, args.batch_size)
        times.append(time.perf_counter() - start)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    stream_metric(metric, args.samples, args.size, args.batch_size)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    module_time = statistics.median(times)
    start = time.perf_counter()
    baseline = histogram_loop(args.baseline_samples, args.size)
    baseline_per_sample = (time.perf_counter() - start) / args.baseline_samples
    reference = stream_metric(metric, args.baseline_samples, args.size, args.batch_size)
    agree = all(abs(reference[key] - baseline[key]) < 1e-9 for key in ("giou", "ciou", "n_acc"))

    print(f"samples {args.samples} of {args.size}x{args.size}, batch {args.batch_size}, repeats {args.repeats}")
    print(f"module add_batch+compute: median {module_time:.2f} s ({args.samples / module_time:,.0f} samples/s), "
          f"runs {', '.join(f'{t:.2f}' for t in times)}")
    print(f"peak RSS of the process: {rss_after:,.0f} MiB (before streaming {rss_before:,.0f} MiB); "
          f"tracemalloc peak of one streaming run: {traced_peak / 2**20:,.1f} MiB")
    print(f"per-sample histogram loop: {baseline_per_sample * 1e3:.2f} ms/sample -> "
          f"{baseline_per_sample * args.samples:.1f} s for {args.samples} (extrapolated from {args.baseline_samples})")
    print(f"ratio loop / module: {baseline_per_sample * args.samples / module_time:.1f}x; "
          f"figures agree on {args.baseline_samples} samples: {agree}")
    print(f"figures: giou {results['giou']:.4f} ciou {results['ciou']:.4f} n_acc {results['n_acc']:.4f} "
          f"pos {results['num_positive']} neg {results['num_negative']}")


if __name__ == "__main__":
    main()
