"""Grounding + pair generation per image at full MIMIC resolution (2048x2500), five findings.

Run: ``.venv/bin/python benchmarks/bench_grounding.py [--repeats 20]``. Prints the median wall time per image of
``mimic_ils.grounding.ground_image`` (QC, anomaly map, Algorithm 1 with Refine, verification) and the pair stage
(``mimic_ils.pairs.image_pairs``) on one core,
against the 50 ms target. The scene: elliptical lungs and heart, 16 anatomy masks, pseudo-normal = image with
+-3 grey-level noise everywhere, five lesions (bibasilar atelectasis, right upper pneumonia, faint left edema,
right effusion) and two distractor boxes, and a report of five findings (cardiomegaly included).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from mimic_ils.grounding import GroundingConfig, ground_image  # noqa: E402
from mimic_ils.pairs import image_pairs  # noqa: E402
from mimic_ils.schema import Box, Finding, Section, StructuredReport, VisionCues  # noqa: E402

HEIGHT, WIDTH = 2048, 2500


def _ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    rows, cols = np.ogrid[:HEIGHT, :WIDTH]
    return ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0


def _bands(lung: np.ndarray, side: str) -> dict[str, np.ndarray]:
    rows = np.flatnonzero(lung.any(axis=1))
    top, height = rows[0], rows[-1] + 1 - rows[0]
    out = {}
    cuts = {
        "apical zone lung": (0.0, 0.15),
        "upper zone lung": (0.15, 0.4),
        "mid zone lung": (0.4, 0.7),
        "lung base": (0.7, 1.0),
    }
    for name, (start, stop) in cuts.items():
        band = np.zeros_like(lung)
        band[top + int(start * height) : top + int(stop * height)] = True
        out[f"{side} {name}"] = band & lung
    return out


def make_scene(seed: int = 0) -> tuple[StructuredReport, VisionCues]:
    rng = np.random.default_rng(seed)
    lung_right = _ellipse(900, 800, 650, 380)
    lung_left = _ellipse(900, 1700, 650, 380)
    heart = _ellipse(1250, 1300, 330, 360)
    image = np.full((HEIGHT, WIDTH), 170, np.uint8)
    image[lung_right | lung_left] = 70
    image = (image.astype(np.int16) + rng.integers(-4, 5, image.shape)).clip(0, 255).astype(np.uint8)
    pseudo = (image.astype(np.int16) + rng.integers(-3, 4, image.shape)).clip(0, 255).astype(np.uint8)
    anatomy = {**_bands(lung_right, "right"), **_bands(lung_left, "left")}
    anatomy.update({"right lung": lung_right, "left lung": lung_left, "heart": heart})
    split = 900
    anatomy["lung upper lobe right"] = lung_right & (np.arange(HEIGHT)[:, None] < split - 100)
    anatomy["lung middle lobe right"] = lung_right & (np.abs(np.arange(HEIGHT)[:, None] - split) <= 100)
    anatomy["lung lower lobe right"] = lung_right & (np.arange(HEIGHT)[:, None] > split + 100)
    anatomy["lung upper lobe left"] = lung_left & (np.arange(HEIGHT)[:, None] < split)
    anatomy["lung lower lobe left"] = lung_left & (np.arange(HEIGHT)[:, None] >= split)
    lesions = [  # (cy, cx, ry, rx, delta, confidence, class)
        (1380, 800, 140, 300, 60, 0.8, "Atelectasis"),
        (1380, 1700, 140, 300, 60, 0.7, "Atelectasis"),
        (600, 750, 120, 150, 50, 0.9, "Consolidation"),
        (900, 1700, 560, 340, 8, 0.05, "Infiltration"),
        (1480, 820, 60, 300, 70, 0.85, "Pleural effusion"),
    ]
    boxes = []
    for cy, cx, ry, rx, delta, confidence, class_name in lesions:
        blob = _ellipse(cy, cx, ry, rx) & (lung_right | lung_left)
        image[blob] = (image[blob].astype(np.int16) + delta).clip(0, 255).astype(np.uint8)
        boxes.append(Box(cx - rx - 10, cy - ry - 10, cx + rx + 10, cy + ry + 10, confidence, 0, class_name))
    boxes.append(Box(100, 100, 2400, 1900, 0.6, 7, "Lung Opacity"))  # whole-chest box: fails c1
    boxes.append(Box(300, 300, 340, 340, 0.9, 8, "Nodule/Mass"))  # tiny: fails c4
    findings = (
        Finding(
            "atelectasis",
            1,
            "positive",
            "definitive",
            lesion_type="atelectasis",
            locations=("right lung base", "left lung base"),
        ),
        Finding(
            "pneumonia", 2, "positive", "tentative", lesion_type="pneumonia", locations=("right upper zone lung",)
        ),
        Finding("edema", 3, "positive", "definitive", lesion_type="edema", locations=("right lung", "left lung")),
        Finding("effusion", 4, "positive", "definitive", lesion_type="effusion", locations=("right lung base",)),
        Finding("cardiomegaly", 5, "positive", "definitive", lesion_type="cardiomegaly"),
    )
    cues = VisionCues("bench", image, pseudo, lung_right, lung_left, heart, anatomy, boxes)
    return StructuredReport(Section("findings", ""), findings), cues


def ground_and_pair(report, cues, config: GroundingConfig):
    """The two stages the build runs on one image: grounding, then its pairs."""
    grounding = ground_image(report, cues, study_id="50000001", dicom_id="bench", view="PA", config=config)
    paired = image_pairs(grounding.findings, grounding.masks, study_id="50000001", dicom_id="bench",
                         empty_locations=grounding.empty_locations,
                         cardiomegaly_negative_reason=grounding.cardiomegaly_negative_reason)
    return grounding, paired


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--overlay", help="also write a PNG of the scene with the positive masks and boxes here")
    parser.add_argument(
        "--work-max-side", type=int, default=1024, help="GroundingConfig.work_max_side; 0 = full resolution"
    )
    args = parser.parse_args()
    config = GroundingConfig(work_max_side=args.work_max_side or None)
    report, cues = make_scene()
    grounding, result = ground_and_pair(report, cues, config)  # warm-up
    times, cpu_times = [], []
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        ground_and_pair(report, cues, config)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    median = statistics.median(times) * 1e3
    cpu_median = statistics.median(cpu_times) * 1e3
    positives = sum(pair.polarity == "positive" for pair in result.pairs)
    print(
        f"image {HEIGHT}x{WIDTH}, work_max_side {config.work_max_side}, "
        f"{len(report.findings)} findings, {len(cues.boxes)} boxes: "
        f"{len(result.pairs)} pairs ({positives} positive), {len(result.masks)} masks, "
        f"{len(grounding.exclusions) + len(result.skipped)} exclusions"
    )
    print(
        f"ground_image + image_pairs median {median:.1f} ms wall (min {min(times) * 1e3:.1f} ms), "
        f"median {cpu_median:.1f} ms CPU "
        f"over {args.repeats} runs; target 50 ms -> ratio wall {median / 50:.2f}, CPU {cpu_median / 50:.2f}"
    )
    print(f"load average: {os.getloadavg()[0]:.1f} (wall times grow when other processes share the cores)")
    if args.overlay:
        write_overlay(args.overlay, cues, result)


def write_overlay(path: str, cues: VisionCues, result) -> None:
    """The image (quarter size) with each positive mask tinted in its own colour and the detector boxes drawn."""
    from PIL import Image, ImageDraw

    colours = [(230, 60, 60), (60, 200, 90), (70, 120, 240), (240, 200, 40), (200, 80, 220), (40, 210, 210)]
    rgb = np.repeat(cues.image[..., None], 3, axis=2).astype(np.float32)
    for colour, key in zip(colours * 3, sorted(result.masks), strict=False):
        mask = result.masks[key]
        rgb[mask] = 0.55 * rgb[mask] + 0.45 * np.array(colour, np.float32)
    picture = Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).resize((WIDTH // 4, HEIGHT // 4))
    draw = ImageDraw.Draw(picture)
    for box in cues.boxes:
        draw.rectangle([box.x0 / 4, box.y0 / 4, box.x1 / 4, box.y1 / 4], outline=(255, 255, 255))
    for row, key in enumerate(sorted(result.masks)):
        draw.text((8, 8 + 14 * row), key, fill=colours[row % len(colours)])
    picture.save(path)


if __name__ == "__main__":
    main()
