"""The ``rosalia`` console script: look at what a ROSALIA model does with an X-ray.

    rosalia predict --model DIR --out DIR [-i INSTRUCTION]... IMAGE_OR_FOLDER...
    rosalia serve --model DIR [--host 127.0.0.1] [--port 7860]
    rosalia evaluate --model DIR --dataset DIR --out DIR          (as ``mimic-ils evaluate``)

``predict`` runs every instruction on every image (DICOM through the dataset build's reader; PNG/JPEG/TIFF in any
bit depth; folders searched recursively) and writes, per (image, instruction), an overlay PNG (the mask over the
image, the instruction, the answer, R/L markers), the mask PNG(s) in the image's original frame (0/255, one per
``[SEG]`` of the answer) and one JSON line on stdout. Bad inputs (an undecodable image, an empty or too long
instruction) are one line each on stderr; the others are still processed and the exit code is 1.

Offline unless ``--allow-downloads`` (or ``MIMIC_ILS_ALLOW_DOWNLOADS=1``): ``--model`` must be a local folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rosalia_hf.console import add_verbosity_flags, output_settings, stderr_is_tty
from rosalia_hf.errors import RosaliaError
from rosalia_hf.offline import add_download_flag, downloads_allowed, go_offline, require_local

PROG = "rosalia"
log = logging.getLogger("rosalia_hf")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mimic-ils")
    except PackageNotFoundError:
        return "unknown"


def quiet_transformers_bars(verbosity: int) -> None:
    """transformers' own bars ("Loading weights") off when quiet or not on a terminal, as the hub's."""
    if verbosity < 0 or not stderr_is_tty():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="folder of RosaliaForSegmentation.save_pretrained")
    parser.add_argument("--processor", help="folder of RosaliaProcessor.save_pretrained (default: --model)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="answer length limit (512, as LISA's chat)")


def add_predict_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("predict", help="segment images by instructions; overlays, masks, JSON lines",
                                   description=__doc__.split("\n\n")[2])
    _model_options(parser)
    parser.add_argument("--out", required=True, help="folder for the overlay and mask PNGs")
    parser.add_argument("-i", "--instruction", action="append", dest="instructions", metavar="INSTRUCTION",
                        help="an instruction, e.g. 'Segment the pneumonia in the right lung.' (repeat for more; "
                             "default: the Table 2 global question for each of the seven lesions)")
    parser.add_argument("--batch-size", type=int, default=4, help="(image, instruction) pairs per forward pass")
    parser.add_argument("--segment-only", action="store_true", help="teacher-force [SEG]: masks, no generated text")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="DICOM/PNG/JPEG/TIFF files or folders")
    parser.set_defaults(func=run_predict_command)
    return parser


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("serve", help="the Gradio app on 127.0.0.1",
                                   description="Serve the Gradio app: upload a DICOM or an image, give instructions, "
                                               "see the overlay, the answer and the empty-target verdict.")
    _model_options(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1, this machine only; anything else exposes the "
                             "model and the images uploaded to it to the network)")
    parser.add_argument("--port", type=int, default=7860)
    parser.set_defaults(func=run_serve_command)
    return parser


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    from rosalia_hf.evaluation_cli import add_arguments

    parser = subparsers.add_parser("evaluate", help="gIoU, cIoU, N-Acc and text accuracy on a built MIMIC-ILS split")
    add_arguments(parser)
    parser.set_defaults(func=run_evaluate_command)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    add_download_flag(parser)
    add_verbosity_flags(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (add_predict_parser, add_serve_parser, add_evaluate_parser):
        sub = add(subparsers)
        add_download_flag(sub, suppress_default=True)
        add_verbosity_flags(sub, suppress_default=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    go_offline(args.allow_downloads)  # before anything imports the hub libraries
    with output_settings(args.verbosity):
        try:
            return int(args.func(args) or 0)
        except RosaliaError as error:
            print(f"{PROG} {args.command}: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
            return 130


# --------------------------------------------------------------------------------------------------- predict


def default_instructions() -> list[str]:
    from rosalia_hf.table2 import GLOBAL_INSTRUCTION

    lesions = ("cardiomegaly", "pneumonia", "atelectasis", "consolidation", "edema", "pleural effusion",
               "lung opacity")
    return [GLOBAL_INSTRUCTION.format(target=lesion) for lesion in lesions]


@dataclass
class Job:
    """One (image, instruction) pair and where its files go."""

    image: Path
    image_number: int
    instruction: str
    instruction_number: int
    stem: str


def unique_stems(files: list[Path]) -> list[str]:
    """File stems (``.dcm``/``.png`` dropped) made unique in order: a repeated one gets ``_2``, ``_3``..."""
    seen: dict[str, int] = {}
    stems = []
    for path in files:
        stem = path.stem
        count = seen.get(stem, 0) + 1
        seen[stem] = count
        stems.append(stem if count == 1 else f"{stem}_{count}")
    return stems


def run_predict_command(args: argparse.Namespace) -> int:
    """Every instruction on every image; JSON lines on stdout, problems on stderr. 0, or 1 if any input failed."""
    from rosalia_hf.app import display_name
    from rosalia_hf.files import atomic_write_bytes, png_bytes
    from rosalia_hf.images import find_images, read_image
    from rosalia_hf.overlay import describe_mask, render_overlay
    from rosalia_hf.predictor import RosaliaPredictor
    from rosalia_hf.progress import Progress

    downloads = downloads_allowed(args.allow_downloads)
    require_local(args.model, "--model", downloads=downloads)
    require_local(args.processor, "--processor", downloads=downloads)
    quiet_transformers_bars(args.verbosity)
    if args.batch_size < 1:
        raise RosaliaError(f"--batch-size {args.batch_size}: must be at least 1")
    problems = 0

    def problem(line: str) -> None:
        nonlocal problems
        problems += 1
        print(f"{PROG} predict: {line}", file=sys.stderr, flush=True)

    files, missing = find_images(args.inputs)
    for line in missing:
        problem(line)
    started = time.perf_counter()
    predictor = RosaliaPredictor.from_pretrained(args.model, args.processor, device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - started
    log.info("loaded %s in %.1f s on %s", args.model, load_s, next(predictor.model.parameters()).device)
    instructions, refused = predictor.check_instructions(args.instructions or default_instructions(),
                                                         args.segment_only)
    for line in refused:
        problem(line)
    out = Path(args.out)
    stems = unique_stems(files)
    name = display_name(args.model)
    total = len(files) * len(instructions)
    batch: list[Job] = []
    images: dict[int, object] = {}
    read_s: dict[int, float] = {}

    def flush(progress: Progress) -> None:
        if not batch:
            return
        order = sorted({job.image_number for job in batch})
        position = {number: k for k, number in enumerate(order)}
        tick = time.perf_counter()
        try:
            results = predictor.predict([images[n] for n in order], [job.instruction for job in batch],
                                        image_index=[position[job.image_number] for job in batch],
                                        segment_only=args.segment_only, max_new_tokens=args.max_new_tokens)
        except (ValueError, RuntimeError) as error:  # a batch the model refuses: each of its pairs gets the line
            reason = " ".join(str(error).split())[:300]
            for job in batch:
                problem(f"{job.image} / instruction {job.instruction_number}: {reason}")
            progress.update(len(batch))
            batch.clear()
            return
        predict_s = (time.perf_counter() - tick) / len(batch)
        for job, result in zip(batch, results, strict=True):
            tick = time.perf_counter()
            base = f"{job.stem}.q{job.instruction_number}"
            overlay_path = out / f"{base}.overlay.png"
            mask_paths = [out / (f"{base}.mask.png" if k == 0 else f"{base}.mask{k + 1}.png")
                          for k in range(max(1, len(result["masks"])))]
            masks = result["masks"] or [result["mask"]]
            for path, mask in zip(mask_paths, masks, strict=True):
                atomic_write_bytes(path, png_bytes(mask))
            footer = f"{name} · {job.image.name} · {describe_mask(result['mask'])}"
            picture = render_overlay(images[job.image_number], result["mask"], instruction=job.instruction,
                                     answer=result["text"], footer=footer)
            atomic_write_bytes(overlay_path, png_bytes(picture))
            record = {"image": str(job.image), "instruction": job.instruction, "text": result["text"],
                      "empty": bool(result["empty"]), "masks": [str(p) for p in mask_paths[:len(result["masks"])]],
                      "mask": str(mask_paths[0]), "overlay": str(overlay_path),
                      "mask_pixels": int(result["mask"].sum()),
                      "timings": {"read_s": round(read_s[job.image_number], 4), "predict_s": round(predict_s, 4),
                                  "write_s": round(time.perf_counter() - tick, 4)}}
            print(json.dumps(record), flush=True)
        progress.update(len(batch))
        batch.clear()

    with Progress("predict", total, "pairs", enabled=args.verbosity >= 0) as progress:
        for number, (path, stem) in enumerate(zip(files, stems, strict=True)):
            tick = time.perf_counter()
            try:
                images[number] = read_image(path)
            except RosaliaError as error:
                problem(str(error))
                progress.update(len(instructions))
                continue
            read_s[number] = time.perf_counter() - tick
            for k, text in instructions:
                batch.append(Job(path, number, text, k, stem))
                if len(batch) >= args.batch_size:
                    flush(progress)
            waiting = {job.image_number for job in batch}
            for kept in [n for n in images if n not in waiting]:  # keep only the images the next batch needs
                del images[kept]
        flush(progress)
    log.info("%d pairs in %.1f s; %d problems", total, time.perf_counter() - started, problems)
    return 1 if problems else 0


# ------------------------------------------------------------------------------------------- serve and evaluate


def run_serve_command(args: argparse.Namespace) -> int:
    from rosalia_hf.app import serve

    downloads = downloads_allowed(args.allow_downloads)
    require_local(args.model, "--model", downloads=downloads)
    require_local(args.processor, "--processor", downloads=downloads)
    quiet_transformers_bars(args.verbosity)
    serve(args.model, processor=args.processor, host=args.host, port=args.port, device=args.device,
          dtype=args.dtype, max_new_tokens=args.max_new_tokens)
    return 0


def run_evaluate_command(args: argparse.Namespace) -> int:
    from rosalia_hf.evaluation_cli import run

    if args.verbosity < 0:
        args.no_progress = True
    report = run(args)
    print(report.read_text(encoding="utf-8"))
    print(f"written: {report}")
    return 0


__all__ = ["main", "build_parser", "run_predict_command", "default_instructions"]
