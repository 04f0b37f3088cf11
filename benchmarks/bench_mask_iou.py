"""IoU of the grounded lesion masks with the phantom truth, per lesion type, with and without edema (issue 14).

Run::

    .venv/bin/python benchmarks/bench_mask_iou.py [--studies 300] [--seed 0] [--noise free|default]
        [--clips off,anatomy,box_dilation] [--effusion-fill both|per_column|full_rows]

It writes a synthetic cohort (``mimic_ils.synth.generate_cohort``) into a temporary folder, computes the four
vision cues of every frontal image with the ``phantom`` backends in the order of ``mimic_ils.vision.runner``
(lungs/heart -> pseudo-normal inside lungs ∪ heart -> anatomy on the pseudo-normal -> boxes on the image), gives
``ground_image`` the truth's findings (type, certainty and locations of every lesion: the report stage is not
measured here), and compares each grounded mask with that lesion's phantom mask. ``--noise free`` (the default)
switches every phantom noise source off (no mask jitter, exact boxes, no misses or spurious boxes, an ideal
pseudo-normal: residual 0, noise 0); ``--noise default`` uses the backends' default noise.

Each row of the table is a lesion type, split by whether the image also has edema: ``n`` truth lesions,
``grounded`` how many got a mask, then the median and mean IoU over the grounded ones and ``big``, how many of them
cover more than half of a lung (the issue-14 symptom). Columns repeat per setting of ``focal_mask_clip``;
cardiomegaly (the heart mask, not Algorithm 1) and edema are shown for completeness. ``effusion fill`` rows compare
the old full-row base fill with the per-column one for effusions on images without edema.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from mimic_ils import synth  # noqa: E402
from mimic_ils.grounding import GroundingConfig, ground_image  # noqa: E402
from mimic_ils.schema import HEART_LABEL, LESION_TYPES, Finding, Section, StructuredReport, VisionCues  # noqa: E402
from mimic_ils.vision import base  # noqa: E402

NOISE_FREE = {
    "lungs_heart": {"jitter": 0.0},
    "anatomy": {"jitter": 0.0},
    "pseudo_normal": {"residual": 0.0, "noise": 0.0},
    "lesion_boxes": {"miss_rate": 0.0, "box_jitter": 0.0, "spurious_rate": 0.0},
}


def phantom_cues(root: Path, dicom_id: str, noise: str) -> tuple[VisionCues, synth.PhantomImageTruth]:
    """The four phantom cues of one frontal image, computed as the vision runner does."""
    options = NOISE_FREE if noise == "free" else {step: {} for step in NOISE_FREE}
    backends = {step: base.create(step, "phantom", cohort_root=root, **opts) for step, opts in options.items()}
    truth = synth.load_image_truth(root, dicom_id)
    image = truth.display
    [lungs] = backends["lungs_heart"].segment([image], [dicom_id])
    edit = lungs.lung_right | lungs.lung_left | lungs.heart
    [pseudo] = backends["pseudo_normal"].edit([image], [edit], [dicom_id])
    [anatomy] = backends["anatomy"].segment([pseudo], [dicom_id])
    [boxes] = backends["lesion_boxes"].detect([image], [dicom_id])
    cues = VisionCues(
        dicom_id=dicom_id,
        image=image,
        pseudo_normal=pseudo,
        lung_right=lungs.lung_right,
        lung_left=lungs.lung_left,
        heart=lungs.heart,
        anatomy=anatomy,
        boxes=list(boxes),
    )
    return cues, truth


def truth_report(study: dict) -> StructuredReport:
    findings = tuple(
        Finding(
            entity=lesion["lesion_type"],
            sentence_index=index + 1,
            presence="positive",
            certainty=lesion["certainty"],
            lesion_type=lesion["lesion_type"],
            locations=tuple(lesion["locations"]),
        )
        for index, lesion in enumerate(study.get("lesions", []))
    )
    return StructuredReport(section=Section("findings", ""), findings=findings)


def iou(first: np.ndarray, second: np.ndarray) -> float:
    union = np.count_nonzero(first | second)
    return np.count_nonzero(first & second) / union if union else 0.0


def measure(root: Path, configs: dict[str, GroundingConfig], noise: str) -> dict:
    """``results[setting][(lesion, with_edema)]`` = list of (IoU or None when not grounded, covers half a lung)."""
    results: dict[str, dict] = {name: defaultdict(list) for name in configs}
    for study_id, study in sorted(synth.load_truth(root).items()):
        lesions = study.get("lesions", [])
        if not lesions:
            continue
        with_edema = any(lesion["lesion_type"] == "edema" for lesion in lesions)
        report = truth_report(study)
        for image in study["images"]:
            if image["view"] not in ("PA", "AP"):
                continue
            cues, truth = phantom_cues(root, image["dicom_id"], noise)
            half_lung = 0.5 * min(np.count_nonzero(truth.lung_right), np.count_nonzero(truth.lung_left))
            for name, config in configs.items():
                grounding = ground_image(
                    report, cues, study_id=study_id, dicom_id=image["dicom_id"], view=image["view"], config=config
                )
                keys = {o.lesion: o.mask_key for o in grounding.findings if o.presence == "positive"}
                for lesion, truth_mask in zip(lesions, truth.lesions, strict=True):
                    kind = lesion["lesion_type"]
                    mask = grounding.masks.get(keys.get(kind) or "")
                    if mask is None:
                        results[name][(kind, with_edema)].append((None, False))
                        continue
                    big = kind not in ("edema", "cardiomegaly") and np.count_nonzero(mask & ~truth_mask) > half_lung
                    results[name][(kind, with_edema)].append((iou(mask, truth_mask), big))
    return results


def summary(values: list) -> str:
    ious = [value for value, _ in values if value is not None]
    big = sum(flag for _, flag in values)
    if not ious:
        return f"{len(values):>3} {0:>3}    -      -    -"
    return f"{len(values):>3} {len(ious):>3} {statistics.median(ious):6.3f} {statistics.mean(ious):6.3f} {big:>3}"


def table(results: dict) -> list[str]:
    names = list(results)
    header = f"{'lesion':<14} {'edema':<5} " + " | ".join(f"{name:^26}" for name in names)
    sub = f"{'':<14} {'':<5} " + " | ".join(f"{'n':>3} {'gnd':>3} {'median':>6} {'mean':>6} {'big':>3}" for _ in names)
    lines = [header, sub, "-" * len(sub)]
    for lesion in (*[t for t in LESION_TYPES if t != HEART_LABEL],):
        for with_edema in (False, True):
            if lesion == "edema" and not with_edema:
                continue
            if not any(results[name].get((lesion, with_edema)) for name in names):
                continue
            cells = [summary(results[name].get((lesion, with_edema), [])) for name in names]
            lines.append(f"{lesion:<14} {'yes' if with_edema else 'no':<5} " + " | ".join(cells))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", choices=("free", "default"), default="free")
    parser.add_argument("--clips", default="off,anatomy,box_dilation", help="focal_mask_clip settings to compare")
    parser.add_argument("--effusion-fill", choices=("both", "per_column", "full_rows"), default="both")
    parser.add_argument("--workers", type=int, default=None, help="processes rendering the cohort")
    args = parser.parse_args(argv)
    configs = {}
    for clip in args.clips.split(","):
        configs[f"clip={clip}"] = GroundingConfig(focal_mask_clip=None if clip == "off" else clip)
    if args.effusion_fill in ("both", "full_rows"):
        configs["fill=full_rows"] = GroundingConfig.from_dict({"refine": {"effusion_fill": "full_rows"}})
    if args.effusion_fill == "full_rows":
        configs = {"fill=full_rows": configs["fill=full_rows"]}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cohort"
        start = time.perf_counter()
        synth.generate_cohort(root, args.studies, args.seed, workers=args.workers)
        generated = time.perf_counter() - start
        start = time.perf_counter()
        results = measure(root, configs, args.noise)
        measured = time.perf_counter() - start
    print(f"cohort: {args.studies} studies, seed {args.seed}, noise {args.noise}; generated in {generated:.1f} s, "
          f"cues + grounding of {len(configs)} settings in {measured:.1f} s")
    print("n: truth lesions; gnd: grounded; median/mean IoU over grounded masks; big: masks reaching more than half a "
          "lung beyond the truth")
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
