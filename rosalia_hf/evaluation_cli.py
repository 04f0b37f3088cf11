"""Command line of the ILS evaluation: ``examples/evaluate_rosalia.py`` and ``mimic-ils evaluate`` share it.

Loads a ROSALIA checkpoint (``from_pretrained`` folder), a built MIMIC-ILS folder's ``pairs`` split, runs
``evaluate_model`` and writes ``report.md``, ``cases.png`` and ``metrics.json`` into ``--out``.

Offline unless the user opts in (``--allow-downloads`` or ``MIMIC_ILS_ALLOW_DOWNLOADS=1``): ``--model``,
``--processor``, ``--dataset`` and ``--metric-path`` must then be local paths, and a hub id gets one line naming the
option (:func:`mimic_ils.offline.require_local`), not a network look-up.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from mimic_ils.commands.evaluate import add_arguments
from mimic_ils.offline import add_download_flag, downloads_allowed, go_offline, require_local
from mimic_ils.schema import MimicIlsError


def load_pairs(folder: str | Path, split: str, limit: int | None = None):
    """The ``pairs`` configuration's ``split`` of a built folder (first ``limit`` rows when given)."""
    import datasets

    dataset = datasets.load_dataset(str(folder), "pairs", split=split)
    return dataset.select(range(min(limit, len(dataset)))) if limit is not None else dataset


def load_model(model_path: str, processor_path: str | None, device: str | None, dtype: str):
    """``(model, processor)`` from local folders, on ``device``, in eval mode."""
    import torch

    from rosalia_hf import RosaliaForSegmentation, RosaliaProcessor

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    source = model_path
    try:
        model = RosaliaForSegmentation.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device).eval()
        source = processor_path or model_path
        processor = RosaliaProcessor.from_pretrained(source)
    except OSError as error:  # a folder without the files, or (downloads allowed) a hub id that cannot be fetched
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MimicIlsError(f"cannot load {source}: {reason}") from None
    return model, processor


def check_inputs(args: argparse.Namespace) -> None:
    """One :class:`mimic_ils.offline.NotLocalError` line for a model, processor, dataset or metric that is not a local
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

    model, processor = load_model(args.model, args.processor, args.device, args.dtype)
    dataset = load_pairs(args.dataset, args.split, args.limit)
    with torch.inference_mode():
        evaluation = evaluate_model(
            model, processor, dataset, batch_size=args.batch_size, segment_only=args.segment_only,
            max_new_tokens=args.max_new_tokens, metric=load_ils_metric(args.metric_path),
            num_cases=args.num_cases, progress=not args.no_progress,
        )
    out = Path(args.out)
    details = {"model": args.model, "dataset": f"{args.dataset} ({args.split})", "batch size": args.batch_size}
    report = write_report(evaluation, out, model_name=Path(args.model).name or "ROSALIA", details=details)
    (out / "metrics.json").write_text(json.dumps(_json_safe(evaluation["metrics"]), indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = add_download_flag(add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])))
    args = parser.parse_args(argv)
    go_offline(args.allow_downloads)
    try:
        report = run(args)
    except MimicIlsError as error:
        parser.exit(1, f"{parser.prog}: {error}\n")
    print(report.read_text(encoding="utf-8"))
    print(f"written: {report}")
    return 0


__all__ = ["add_arguments", "check_inputs", "run", "main", "load_pairs", "load_model"]
