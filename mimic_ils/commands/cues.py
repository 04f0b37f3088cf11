"""``mimic-ils cues``: run the vision backends on a cohort's frontal images and draw one overlay PNG per image."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "cues",
        help="vision cues (lungs/heart, pseudo-normal, anatomy, boxes) + overlay PNGs per frontal image",
        description="Writes OUT/<dicom_id>/ (image.png, masks.bin: the 19 masks bit-packed, pseudo_normal.bin, "
        "boxes.json, cues.json manifest) and OUT/<dicom_id>/overlay.png. Images whose artifacts are complete are "
        "skipped, so a rerun resumes.",
    )
    parser.add_argument("--mimic-root", required=True, help="MIMIC-CXR root (files/, metadata and split CSVs)")
    parser.add_argument("--out", required=True, help="output folder of the per-image artifact folders")
    parser.add_argument(
        "--backends",
        default="phantom",
        help="'phantom' (synthetic cohorts only), 'real' (weights under --weights-dir) or a vision "
        "config YAML file (default: phantom)",
    )
    parser.add_argument("--weights-dir", help="weights folder of the 'real' preset (default: $MIMIC_ILS_WEIGHTS)")
    parser.add_argument("--limit", type=int, help="only the first N frontal images (by study id, then dicom id)")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: from the config, else cpu)")
    parser.add_argument("--batch-size", type=int, help="images per backend call")
    parser.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")
    parser.set_defaults(func=run)
    return parser


def vision_config(backends: str, weights_dir: str | None, device: str | None, batch_size: int | None):
    """The ``VisionConfig`` named by ``--backends`` with the command-line overrides applied."""
    from pathlib import Path

    from mimic_ils.vision.runner import VisionConfig

    if backends in ("phantom", "real"):
        config = VisionConfig.preset(backends, weights_dir=weights_dir)
    elif Path(backends).is_file():
        config = VisionConfig.from_yaml(backends)
    else:
        from mimic_ils.schema import BackendError

        raise BackendError(f"--backends {backends!r} is neither 'phantom', 'real' nor an existing YAML file")
    if device:
        config.device = device
    if batch_size:
        config.batch_size = batch_size
    return config


def frontal_images(root: str, limit: int | None) -> list:
    """Frontal ``ImageRecord``s of the cohort, by study id then dicom id, the first ``limit`` of them."""
    from mimic_ils.ingest import iter_studies

    images = [image for study in iter_studies(root) for image in study.frontal_images]
    return images[:limit] if limit else images


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mimic_ils.commands import require_path
    from mimic_ils.schema import MimicIlsError
    from mimic_ils.vision import runner

    require_path(args.mimic_root, "--mimic-root")
    if args.backends not in ("phantom", "real"):
        require_path(args.backends, "--backends", "file")
    require_path(args.weights_dir, "--weights-dir")
    if args.limit is not None and args.limit < 1:
        raise MimicIlsError("--limit must be at least 1")
    config = vision_config(args.backends, args.weights_dir, args.device, args.batch_size)
    images = frontal_images(args.mimic_root, args.limit)
    out = Path(args.out)
    statuses = runner.run_cues(args.mimic_root, images, out, config, show_progress=True)
    failed = 0
    for dicom_id, status in statuses:
        if status in (runner.STATUS_WRITTEN, runner.STATUS_EXISTS):
            if not args.no_overlays:
                status = _overlay(out / dicom_id, status)
        else:
            failed += 1
        print(f"{dicom_id}\t{status}")
    done = len(statuses) - failed
    print(f"{done} of {len(statuses)} frontal images have cues in {out}; {failed} failed")
    return 0 if done or not statuses else 1


def _overlay(folder, status: str) -> str:
    """Draw ``folder/overlay.png`` unless it exists; return the status line (with the overlay's problem if any)."""
    from mimic_ils.schema import MimicIlsError
    from mimic_ils.vision.overlay import render_overlay
    from mimic_ils.vision.runner import load_cues

    if (folder / "overlay.png").is_file():
        return status
    try:
        render_overlay(load_cues(folder), folder / "overlay.png")
    except (MimicIlsError, OSError, ValueError) as error:
        return f"{status} (overlay failed: {error})"
    return f"{status} + overlay"
