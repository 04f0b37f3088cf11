"""``mimic-ils validate --ms-cxr CSV --dataset OUT --out DIR``: a build's masks against MS-CXR's radiologist boxes;
with ``--model``, a ROSALIA model's masks on the same images (the figures of both are the same)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "validate", help="compare a build's masks (or a model's) with MS-CXR's radiologist boxes",
        description="Per lesion type: coverage, pointing, recall (with the ledger's reasons) and contradictions of "
                    "the masks against the boxes of MS-CXR's local-alignment CSV. Writes DIR/report.md, "
                    "DIR/validation.json and DIR/agreement_grid.png.",
    )
    parser.add_argument("--ms-cxr", required=True, help="MS-CXR local-alignment CSV (MS_CXR_Local_Alignment_*.csv)")
    parser.add_argument("--dataset", help="a folder made by `mimic-ils build` (its masks are validated)")
    parser.add_argument("--model", help="a saved ROSALIA model folder: validate its masks instead")
    parser.add_argument("--images", help="root of the images the CSV's `path` column names (MIMIC-CXR-JPG, or the "
                                         "MIMIC-CXR DICOM root); default: the --dataset folder's images")
    parser.add_argument("--device", help="torch device for --model (default: cuda if available, else cpu)")
    parser.add_argument("--out", required=True, help="folder for report.md, validation.json and the grid PNG")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from mimic_ils.commands import require_path
    from mimic_ils.ms_cxr import read_ms_cxr
    from mimic_ils.schema import MimicIlsError
    from mimic_ils.validation import validate_dataset, write_validation

    require_path(args.ms_cxr, "--ms-cxr", "file")
    require_path(args.dataset, "--dataset")
    require_path(args.model, "--model")
    require_path(args.images, "--images")
    if not args.dataset and not args.model:
        raise MimicIlsError("mimic-ils validate needs --dataset (its masks) or --model (a model's masks)")
    boxes, problems = read_ms_cxr(args.ms_cxr)
    if args.model:
        results, title = _model_results(args, boxes), f"ROSALIA ({args.model}) against MS-CXR"
    else:
        results, title = validate_dataset(args.dataset, boxes), "MIMIC-ILS masks against MS-CXR"
    paths = write_validation(results, problems, args.out, title=title)
    print(paths["report"].read_text(), end="")
    print(f"\nwritten: {', '.join(str(path) for path in paths.values())}")
    return 0


def _model_results(args: argparse.Namespace, boxes):
    from pathlib import Path

    from mimic_ils.validation import DatasetIndex, score_model
    from rosalia_hf.images import read_image
    from rosalia_hf.predictor import RosaliaPredictor

    predictor = RosaliaPredictor.from_pretrained(args.model, device=args.device)
    files = DatasetIndex.read(args.dataset).images if args.dataset else {}
    paths = {box.dicom_id: box.path for box in boxes}

    def image_of(dicom_id: str):
        candidates = [files[dicom_id]] if dicom_id in files else []
        if args.images and paths.get(dicom_id):
            relative = Path(paths[dicom_id])
            candidates += [Path(args.images) / relative, Path(args.images) / relative.with_suffix(".dcm")]
        for candidate in candidates:
            if candidate.is_file():
                try:
                    return read_image(candidate), candidate, None
                except (OSError, ValueError) as error:
                    return None, None, f"image unreadable ({type(error).__name__})"
        return None, None, "image not found"

    def predict(image, instruction):  # the mask of a teacher-forced [SEG], as the Trainer's evaluation takes it
        return predictor.predict([image], [instruction], segment_only=True)[0]["mask"]

    return score_model(predict, boxes, image_of)
