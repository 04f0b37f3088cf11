"""Evaluate a ROSALIA model on MIMIC-ILS pairs with the ``metrics/ils`` evaluate module (paper Sec. 6.1).

``evaluate_model`` streams a ``pairs`` split through ``RosaliaPredictor.predict`` in batches and
``metric.add_batch``, so only one batch of full-resolution masks is in memory at a time; it keeps small thumbnails
of the best and worst positive cases per lesion for the report (``rosalia_hf.evaluation_report``).
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rosalia_hf import ils_scores

# The repository's evaluate module (an editable install or a checkout); elsewhere pass its folder as ``path``.
METRIC_DIR = Path(__file__).resolve().parents[1] / "metrics" / "ils"
THUMBNAIL_SIDE = 192


def load_ils_metric(path: str | Path | None = None, **kwargs: Any):
    """``evaluate.load`` of the ILS metric module, offline-safe (a local file, never a hub look-up).

    Where it looks: the folder ``path`` (holding ``ils.py``) when given; otherwise :data:`METRIC_DIR`, the
    ``metrics/ils`` folder beside the ``rosalia_hf`` package (``<checkout>/metrics/ils``), which exists in a git
    checkout and an editable install but not in a wheel, where ``path`` must be passed. ``FileNotFoundError`` names
    the folder when ``ils.py`` is not there. The module's NumPy core is :mod:`rosalia_hf.ils_scores` (imported
    directly by this module), its answer parser :mod:`rosalia_hf.table2`; ``kwargs`` go to ``evaluate.load``."""
    import evaluate

    folder = Path(path) if path is not None else METRIC_DIR
    if not (folder / "ils.py").is_file():
        raise FileNotFoundError(f"no ILS metric module at {folder} (expected ils.py); pass the metrics/ils folder")
    return evaluate.load(str(folder / "ils.py"), **kwargs)


@dataclass(frozen=True)
class Case:
    """One evaluated positive pair kept for the report: thumbnails (``hxw uint8`` image, ``hxw bool`` masks)."""

    iou: float
    index: int
    lesion: str
    instruction: str
    answer: str
    image: np.ndarray
    reference: np.ndarray
    prediction: np.ndarray


@dataclass
class CaseKeeper:
    """The ``k`` best and ``k`` worst positive pairs by IoU, per lesion, as thumbnails (bounded memory)."""

    k: int = 1
    best: dict[str, list] = field(default_factory=dict)
    worst: dict[str, list] = field(default_factory=dict)

    def offer(self, iou: float, index: int, lesion: str, make_case) -> None:
        """Keep the pair if it ranks; ``make_case()`` builds the thumbnails only then."""
        case = None
        for heaps, key in ((self.best, iou), (self.worst, -iou)):
            heap = heaps.setdefault(lesion, [])
            if self.k <= 0 or (len(heap) >= self.k and (key, -index) <= heap[0][:2]):
                continue
            case = case if case is not None else make_case()
            push = heapq.heappush if len(heap) < self.k else heapq.heapreplace
            push(heap, (key, -index, case))

    def cases(self) -> dict[str, dict[str, list[Case]]]:
        """``{lesion: {"best": [...highest IoU first], "worst": [...lowest first]}}``."""
        out = {}
        for lesion in self.best:
            out[lesion] = {
                "best": [entry[2] for entry in sorted(self.best[lesion], reverse=True)],
                "worst": [entry[2] for entry in sorted(self.worst[lesion], reverse=True)],
            }
        return out


def thumbnail(array: np.ndarray, *, is_mask: bool, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """Longest side at most ``side`` px: nearest for masks (bool out), bilinear for images (uint8 out)."""
    height, width = array.shape[:2]
    scale = min(1.0, side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if is_mask:
        return np.asarray(Image.fromarray(array.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
    return np.asarray(Image.fromarray(array).resize(size, Image.BILINEAR))


def _grey(image: Any) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("L"))
    array = np.asarray(image)
    return array if array.ndim == 2 else np.asarray(Image.fromarray(array).convert("L"))


def _batches(dataset, batch_size: int):
    if "turns" in dataset.column_names:
        yield from _turn_batches(dataset, batch_size)
        return
    for start in range(0, len(dataset), batch_size):
        yield start, dataset[start : start + batch_size]


TURN_FIELDS = ("instruction", "answer", "mask", "lesion", "question_type", "polarity")


def _turn_batches(dataset, batch_size: int):
    """A ``conversations`` split as batches of turns (columns of the pairs config plus ``history`` and ``turn``):
    turn ``k`` of a conversation carries its ``k - 1`` earlier turns with their *reference* answers (teacher
    forcing), so that every turn is scored on the same context whatever the model answered before."""
    batch: dict[str, list] = {}
    start = count = 0
    for row in dataset:
        earlier = []
        for number, turn in enumerate(row["turns"], start=1):
            for name, value in (("image", row["image"]), ("history", list(earlier)), ("turn", number),
                                *((name, turn[name]) for name in TURN_FIELDS)):
                batch.setdefault(name, []).append(value)
            earlier.append((turn["instruction"], turn["answer"]))
            count += 1
            if count - start == batch_size:
                yield start, batch
                batch, start = {}, count
    if batch:
        yield start, batch


def _sample_count(dataset) -> int:
    """Pairs, or the turns of a ``conversations`` split (read from the Arrow column, no image decoded)."""
    if "turns" not in dataset.column_names:
        return len(dataset)
    import pyarrow.compute as pc

    turns = dataset.with_format("arrow")[:].column("turns")
    return int(pc.sum(pc.list_value_length(turns)).as_py() or 0)


def _predict(predictor, batch: dict, segment_only: bool, max_new_tokens: int) -> list[dict]:
    import torch

    extra = {"history": batch["history"]} if "history" in batch else {}
    with torch.inference_mode():  # also when called from a Trainer with autograd on
        return predictor.predict(batch["image"], batch["instruction"], segment_only=segment_only,
                                 max_new_tokens=max_new_tokens, **extra)


def _metric_inputs(batch: dict, outputs: list[dict], references: list, segment_only: bool) -> dict[str, Any]:
    inputs = {"predictions": [out["mask"] for out in outputs], "references": references}
    for column, name in (("lesion", "lesions"), ("question_type", "question_types"), ("polarity", "polarities")):
        if column in batch:
            inputs[name] = batch[column]
    if not segment_only and "answer" in batch:
        inputs["predicted_answers"] = [out["text"] for out in outputs]
        inputs["reference_answers"] = batch["answer"]
    if "turn" in batch:
        inputs["turn_indices"] = batch["turn"]
    return inputs


def _offer_cases(keeper: CaseKeeper, start: int, batch: dict, outputs, references) -> None:
    for offset, (out, reference) in enumerate(zip(outputs, references, strict=True)):
        if reference is None or not reference.any():
            continue
        inter, union, _, _ = ils_scores.mask_statistics(out["mask"], reference)
        row = {name: values[offset] for name, values in batch.items()}

        def make_case(row=row, out=out, reference=reference, iou=inter / union, index=start + offset) -> Case:
            return Case(
                iou=float(iou),
                index=index,
                lesion=row.get("lesion") or "",
                instruction=row.get("instruction", ""),
                answer=out["text"],
                image=thumbnail(_grey(row["image"]), is_mask=False),
                reference=thumbnail(reference, is_mask=True),
                prediction=thumbnail(out["mask"], is_mask=True),
            )

        keeper.offer(inter / union, start + offset, row.get("lesion") or "", make_case)


def evaluate_model(
    predictor,
    dataset,
    *,
    batch_size: int = 8,
    segment_only: bool = False,
    max_new_tokens: int = 512,
    metric=None,
    num_cases: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``predictor.predict`` (a :class:`~rosalia_hf.predictor.RosaliaPredictor`, or anything with its
    ``predict(images, instructions, *, segment_only, max_new_tokens)``) over a MIMIC-ILS ``pairs`` dataset and
    compute the ILS figures.

    ``dataset``: a ``datasets.Dataset`` with the ``pairs`` features (``image``, ``mask`` (None = negative),
    ``instruction``, ``answer``, ``lesion``, ``question_type``, ``polarity``), or a ``conversations`` split: each
    turn is then one sample, predicted after its conversation's earlier turns with their reference answers
    (teacher forcing), and the figures gain ``per_turn`` rows. Text accuracy is computed unless
    ``segment_only``. Returns ``{"metrics": <ILS figures>, "cases": {lesion: {"best", "worst"}},
    "num_samples", "seconds", "samples_per_second", "segment_only"}``.
    """
    from rosalia_hf.progress import Progress

    metric = metric if metric is not None else load_ils_metric()
    keeper = CaseKeeper(k=num_cases)
    started = time.perf_counter()
    total = _sample_count(dataset)
    unit = "turns" if "turns" in dataset.column_names else "pairs"
    with Progress("evaluate", total, unit, enabled=progress) as bar:  # plain lines off a terminal
        for start, batch in _batches(dataset, batch_size):
            outputs = _predict(predictor, batch, segment_only, max_new_tokens)
            references = [ils_scores.to_mask(mask) for mask in batch["mask"]]
            metric.add_batch(**_metric_inputs(batch, outputs, references, segment_only))
            _offer_cases(keeper, start, batch, outputs, references)
            bar.update(len(outputs))
    seconds = time.perf_counter() - started
    return {
        "metrics": metric.compute(),
        "cases": keeper.cases(),
        "num_samples": total,
        "seconds": seconds,
        "samples_per_second": total / seconds if seconds > 0 else float("nan"),
        "segment_only": segment_only,
    }


__all__ = ["evaluate_model", "load_ils_metric", "Case", "CaseKeeper"]
