"""Command line of the ILS evaluation: ``examples/evaluate_rosalia.py`` and ``mimic-ils evaluate`` share it.

Loads a ROSALIA checkpoint (``from_pretrained`` folder), a built MIMIC-ILS folder's ``pairs`` split, runs
``evaluate_model`` and writes ``report.md``, ``cases.png`` and ``metrics.json`` into ``--out``.

Offline unless the user opts in (``--allow-downloads`` or ``MIMIC_ILS_ALLOW_DOWNLOADS=1``): ``--model``,
``--processor``, ``--dataset`` and ``--metric-path`` must then be local paths, and a hub id gets one line naming the
option (:func:`rosalia_hf.offline.require_local`), not a network look-up.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from rosalia_hf.errors import EvaluationError, RosaliaError
from rosalia_hf.offline import add_download_flag, downloads_allowed, go_offline, require_local
from rosalia_hf.splits import split_names


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `mimic-ils evaluate` and `examples/evaluate_rosalia.py` (no heavy imports)."""
    parser.add_argument("--model", required=True, help="folder of RosaliaForSegmentation.save_pretrained")
    parser.add_argument("--processor", help="folder of RosaliaProcessor.save_pretrained (default: --model)")
    parser.add_argument("--dataset", required=True, help="a built MIMIC-ILS folder (load_dataset(folder, 'pairs'))")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--config", default="pairs", choices=("pairs", "conversations"),
                        help="configuration to evaluate: pairs (default) or conversations (each turn after the "
                             "earlier ones with their reference answers; figures per turn as well)")
    parser.add_argument("--out", required=True, help="folder for report.md, cases.png and metrics.json")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--segment-only", action="store_true", help="teacher-force [SEG]; no text accuracy")
    parser.add_argument("--max-new-tokens", type=int, default=512,
                        help="greedy answer length limit (512, as LISA's chat; a trained model stops at </s>)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N pairs")
    parser.add_argument("--num-cases", type=int, default=1, help="best and worst cases per lesion in the grid")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--metric-path", help="folder of the ILS metric module (default: the repository's)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def resolve_split(folder: str | Path, split: str) -> str:
    """The name ``folder`` gives ``split``: ``validation`` and ``validate`` name the same split, whichever of the
    two the folder has. A split the folder does not have is one :class:`EvaluationError` line listing those it has;
    a folder whose splits cannot be read (no data files, no ``pairs`` configuration) is left to :func:`load_pairs`,
    so that it is reported after the model (whose problems come first)."""
    import datasets

    try:
        builder = datasets.load_dataset_builder(str(folder), "pairs")
    except (OSError, ValueError):
        return split
    available = list(builder.config.data_files or {})
    chosen = next((name for name in split_names(split) if name in available), split if not available else None)
    if available and chosen not in available:
        raise EvaluationError(f"--split {split}: {folder} has no such split (it has {', '.join(available)})")
    return chosen


def load_pairs(folder: str | Path, split: str, limit: int | None = None, *, resolved: bool = False,
               config: str = "pairs"):
    """The ``pairs`` (or ``config``) configuration's ``split`` of a built folder (first ``limit`` rows when given),
    the split named as :func:`resolve_split` reads it (``resolved``: the caller did that already); a folder that
    cannot be loaded is one :class:`EvaluationError` line."""
    import datasets

    chosen = split if resolved else resolve_split(folder, split)
    try:
        dataset = datasets.load_dataset(str(folder), config, split=chosen)
    except (OSError, ValueError) as error:  # no data files, no pairs configuration, unreadable parquet
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise EvaluationError(f"--dataset {folder}: {reason}") from None
    return dataset.select(range(min(limit, len(dataset)))) if limit is not None else dataset


def load_model(model_path: str, processor_path: str | None, device: str | None, dtype: str):
    """``(model, processor)`` from local folders, on ``device``, in eval mode; one :class:`EvaluationError` line
    for a folder that is not a ROSALIA model or cannot be loaded."""
    from rosalia_hf.predictor import load_model_and_processor

    try:
        return load_model_and_processor(model_path, processor_path, device, dtype)
    except RosaliaError as error:
        raise EvaluationError(str(error)) from None


def check_inputs(args: argparse.Namespace) -> None:
    """One :class:`rosalia_hf.offline.NotLocalError` line for a model, processor, dataset or metric that is not a local
    path while downloads are off (a hub id where a folder is expected)."""
    downloads = downloads_allowed(getattr(args, "allow_downloads", False))
    require_local(args.model, "--model", downloads=downloads)
    require_local(args.processor, "--processor", downloads=downloads)
    require_local(args.dataset, "--dataset", downloads=downloads)
    require_local(args.metric_path, "--metric-path", downloads=downloads, fetchable=False)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def run(args: argparse.Namespace) -> Path:
    """Evaluate and write the report; returns the path of ``report.md``."""
    check_inputs(args)
    import torch

    from rosalia_hf.evaluation import evaluate_model, load_ils_metric
    from rosalia_hf.evaluation_report import write_report
    from rosalia_hf.predictor import RosaliaPredictor

    split = resolve_split(args.dataset, args.split)  # a wrong split is refused before the model loads
    model, processor = load_model(args.model, args.processor, args.device, args.dtype)
    dataset = load_pairs(args.dataset, split, args.limit, resolved=True, config=getattr(args, "config", "pairs"))
    with torch.inference_mode():
        evaluation = evaluate_model(
            RosaliaPredictor(model, processor), dataset, batch_size=args.batch_size, segment_only=args.segment_only,
            max_new_tokens=args.max_new_tokens, metric=load_ils_metric(args.metric_path),
            num_cases=args.num_cases, progress=not args.no_progress,
        )
    out = Path(args.out)
    details = {"model": args.model, "dataset": f"{args.dataset} ({getattr(args, 'config', 'pairs')}, {args.split})",
               "batch size": args.batch_size}
    report = write_report(evaluation, out, model_name=Path(args.model).name or "ROSALIA", details=details)
    (out / "metrics.json").write_text(json.dumps(_json_safe(evaluation["metrics"]), indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = add_download_flag(add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])))
    args = parser.parse_args(argv)
    go_offline(args.allow_downloads)
    try:
        report = run(args)
    except RosaliaError as error:
        parser.exit(1, f"{parser.prog}: {error}\n")
    print(report.read_text(encoding="utf-8"))
    print(f"written: {report}")
    return 0


__all__ = ["add_arguments", "check_inputs", "run", "main", "load_pairs", "load_model"]
