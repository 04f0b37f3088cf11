"""The NumPy core of the ILS metric (gIoU, cIoU, N-Acc, text accuracy; paper Sec. 6.1): pure functions.

``metrics/ils/ils.py`` (the ``evaluate`` module) forwards to these, and ``rosalia_hf.evaluation`` imports them
directly. Masks are reduced to per-sample statistics (:data:`STAT_COLUMNS`) as soon as they arrive, so any number
of full-resolution masks can be streamed; :func:`summarize` turns the columns into the figures.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from rosalia_hf.table2 import ParsedAnswer, ignoring_certainty, parse_answer, parsed_reference

# Mirror mimic_ils.schema (the model half never imports the dataset half; tests/test_ils_metric.py checks it).
LESION_TYPES = ("cardiomegaly", "pneumonia", "atelectasis", "opacity", "consolidation", "edema", "effusion")
QUESTION_TYPES = ("basic", "global", "lesion_inference", "reasoning")  # reasoning: beyond Table 2
POLARITIES = ("positive", "negative")
SAMPLE_KEYS = (
    "lesions",
    "question_types",
    "polarities",
    "predicted_answers",
    "reference_answers",
    "targets",
    "locations",
    "certainties",
    "turn_indices",
)
NO_TEXT = -1
STAT_NAMES = ("intersection", "union", "prediction_area", "reference_area")
STAT_COLUMNS = ("intersection", "union", "prediction_area", "reference_area", "lesion", "question_type",
                "text_correct", "text_correct_ignoring_certainty", "turn")
NO_TURN = 0  # the turn column of a sample outside a conversation (turns count from 1)

# --------------------------------------------------------------------------------------------------------------
# Masks -> per-sample statistics


def to_mask(value: Any) -> np.ndarray | None:
    """An HxW bool mask (foreground = value > 0) from an array, tensor, PIL image, path or image dict; None stays.

    A 1xHxW or HxWx1 array is squeezed; HxWx3/4 (RGB masks) is foreground where any channel is > 0.
    """
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("bytes") and _image_from_bytes(value["bytes"]) or value.get("path")
        if value is None:
            raise ValueError("an image dict needs 'bytes' or 'path'")
    if isinstance(value, (str, os.PathLike)):
        with Image.open(value) as image:
            value = np.array(image)
    elif isinstance(value, Image.Image):
        value = np.asarray(value)
    elif hasattr(value, "detach"):  # a torch tensor on any device, without importing torch
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    return _binarise(_squeeze(array))


def _image_from_bytes(data: bytes) -> Image.Image:
    import io

    return Image.open(io.BytesIO(data))


def _squeeze(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[0] == 1:
        return array[0]
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        return array.any(axis=-1) if array.shape[-1] > 1 else array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"a mask must be HxW, got shape {array.shape}")
    return array


def _binarise(array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        return array
    if np.issubdtype(array.dtype, np.floating) and np.any((array != 0) & (array != 1)):
        raise ValueError("float masks must hold only 0 and 1; threshold probabilities or logits first")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"a mask must be numeric or bool, got dtype {array.dtype}")
    return array > 0


def mask_statistics(prediction: Any, reference: Any) -> tuple[int, int, int, int]:
    """``(intersection, union, prediction_area, reference_area)`` in pixels of one prediction/reference pair.

    Both are converted with :func:`to_mask`; None is an empty mask of the other's frame. The frames must agree.
    """
    pred, ref = to_mask(prediction), to_mask(reference)
    if pred is None and ref is None:
        return 0, 0, 0, 0
    if pred is not None and ref is not None and pred.shape != ref.shape:
        raise ValueError(
            f"prediction is {pred.shape[0]}x{pred.shape[1]} but reference is {ref.shape[0]}x{ref.shape[1]}; "
            "resize predictions to the reference frame first"
        )
    pred_area = 0 if pred is None else int(np.count_nonzero(pred))
    ref_area = 0 if ref is None else int(np.count_nonzero(ref))
    inter = 0 if pred is None or ref is None else int(np.count_nonzero(pred & ref))
    return inter, pred_area + ref_area - inter, pred_area, ref_area


def batch_statistics(predictions: Any, references: Any) -> np.ndarray:
    """``(N, 4)`` int64 rows of :func:`mask_statistics`; an ``NxHxW`` array pair is reduced without a Python loop."""
    for name, value in (("predictions", predictions), ("references", references)):
        if isinstance(value, np.ndarray) and value.ndim == 3 and value.shape[-1] in (1, 3, 4):
            raise ValueError(f"{name} is one {value.shape} array: a batch of {value.shape[0]} masks of width "
                             f"{value.shape[-1]}, or one mask with {value.shape[-1]} channels? Pass a list of masks")
        if isinstance(value, np.ndarray) and value.ndim == 2:
            raise ValueError(f"{name} is one {value.shape} mask, not a batch: pass a list of masks")
    if isinstance(predictions, np.ndarray) and isinstance(references, np.ndarray) and predictions.ndim == 3:
        if predictions.shape != references.shape:
            raise ValueError(f"prediction batch is {predictions.shape} but reference batch is {references.shape}")
        pred = np.stack([_binarise(p) for p in predictions]) if predictions.dtype != bool else predictions
        ref = np.stack([_binarise(r) for r in references]) if references.dtype != bool else references
        inter = np.count_nonzero(pred & ref, axis=(1, 2))
        pred_area, ref_area = np.count_nonzero(pred, axis=(1, 2)), np.count_nonzero(ref, axis=(1, 2))
        return np.stack([inter, pred_area + ref_area - inter, pred_area, ref_area], axis=1).astype(np.int64)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    rows = np.zeros((len(predictions), 4), dtype=np.int64)
    for index, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        try:
            rows[index] = mask_statistics(prediction, reference)
        except (ValueError, OSError) as error:
            raise ValueError(f"sample {index}: {error}") from None
    return rows


# --------------------------------------------------------------------------------------------------------------
# Text


def _reference_parse(sample: dict[str, Any], polarity: str) -> ParsedAnswer:
    if sample.get("reference_answers") is not None:
        parsed = parse_answer(sample["reference_answers"])
        if parsed is None:
            raise ValueError(f"reference answer {sample['reference_answers']!r} matches no answer template")
        return parsed
    if sample.get("question_types") is None:
        raise ValueError("text accuracy needs reference_answers or question_types plus structured variables")
    return parsed_reference(
        sample["question_types"],
        sample.get("polarities") or polarity,
        target=sample.get("targets"),
        locations=tuple(sample.get("locations") or ()),
        lesion=sample.get("lesions"),
        certainty=sample.get("certainties"),
    )


def text_verdict(sample: dict[str, Any], polarity: str) -> tuple[int, int]:
    """``(strict, ignoring_certainty)`` correctness of one predicted answer: 1, 0, or -1 when it has no answer."""
    if sample.get("predicted_answers") is None:
        return NO_TEXT, NO_TEXT
    expected = _reference_parse(sample, polarity)
    predicted = parse_answer(sample["predicted_answers"])
    return int(predicted == expected), int(ignoring_certainty(predicted) == ignoring_certainty(expected))


# --------------------------------------------------------------------------------------------------------------
# Statistics -> figures


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else math.nan


def segmentation_figures(
    intersection: np.ndarray, union: np.ndarray, prediction_area: np.ndarray, reference_area: np.ndarray
) -> dict[str, Any]:
    """gIoU, cIoU and N-Acc (fractions; NaN for an empty group) and the counts, from per-sample statistics."""
    positive = reference_area > 0
    num_positive, num_negative = int(positive.sum()), int((~positive).sum())
    inter, uni = intersection[positive].astype(np.float64), union[positive].astype(np.float64)
    return {
        "giou": float(np.mean(inter / uni)) if num_positive else math.nan,
        "ciou": _ratio(inter.sum(), uni.sum()),
        "n_acc": _ratio(np.count_nonzero(prediction_area[~positive] == 0), num_negative),
        "num_positive": num_positive,
        "num_negative": num_negative,
    }


def _ordered_keys(values: np.ndarray, canonical: Sequence[str]) -> list[str]:
    present = {str(value) for value in values if value}
    return [key for key in canonical if key in present] + sorted(present - set(canonical))


def _text_accuracy(verdicts: np.ndarray) -> float:
    scored = verdicts[verdicts != NO_TEXT]
    return _ratio(np.count_nonzero(scored == 1), scored.size)


def _text_figures(columns: dict[str, np.ndarray], positive: np.ndarray) -> dict[str, Any]:
    strict, lenient = columns["text_correct"], columns["text_correct_ignoring_certainty"]
    lesions, question_types = columns["lesion"], columns["question_type"]
    per_question_type = {}
    for question_type in _ordered_keys(question_types, QUESTION_TYPES):
        in_type = question_types == question_type
        per_question_type[question_type] = {
            "all": _text_accuracy(strict[in_type]),
            "positive": _text_accuracy(strict[in_type & positive]),
            "negative": _text_accuracy(strict[in_type & ~positive]),
        }
    inference_positive = (question_types == "lesion_inference") & positive
    return {
        "text_accuracy": _text_accuracy(strict),
        "num_text": int(np.count_nonzero(strict != NO_TEXT)),
        "text_accuracy_per_question_type": per_question_type,
        "text_accuracy_per_lesion": {
            lesion: _text_accuracy(strict[lesions == lesion]) for lesion in _ordered_keys(lesions, LESION_TYPES)
        },
        "text_accuracy_lesion_inference_ignoring_certainty": _text_accuracy(lenient[inference_positive]),
    }


def _as_keys(values: np.ndarray) -> np.ndarray:
    return np.array(["" if value is None else str(value) for value in values], dtype=object)


def summarize(columns: dict[str, Sequence[Any]]) -> dict[str, Any]:
    """All figures from the per-sample statistic columns (the metric's features); the core of ``_compute``."""
    columns = {name: np.asarray(values) for name, values in columns.items()}
    stats = [columns[name].astype(np.int64) for name in STAT_NAMES]
    lesions = columns["lesion"] = _as_keys(columns["lesion"])
    question_types = columns["question_type"] = _as_keys(columns["question_type"])
    results = segmentation_figures(*stats)
    results["per_lesion"] = {
        lesion: segmentation_figures(*(s[lesions == lesion] for s in stats))
        for lesion in _ordered_keys(lesions, LESION_TYPES)
    }
    results["per_question_type"] = {
        question_type: segmentation_figures(*(s[question_types == question_type] for s in stats))
        for question_type in _ordered_keys(question_types, QUESTION_TYPES)
    }
    if np.any(np.asarray(columns["text_correct"]) != NO_TEXT):
        results.update(_text_figures(columns, stats[3] > 0))
    turns = np.asarray(columns.get("turn", np.zeros(len(stats[0]), np.int64)), dtype=np.int64)
    if np.any(turns != NO_TURN):  # conversations: the figures of each turn index
        strict = np.asarray(columns["text_correct"])
        results["per_turn"] = {
            str(turn): {**segmentation_figures(*(s[turns == turn] for s in stats)),
                        "text_accuracy": _text_accuracy(strict[turns == turn])}
            for turn in sorted(set(turns.tolist()) - {NO_TURN})
        }
    return results


def _normalise_question_type(value: str | None) -> str | None:
    return None if value is None else str(value).strip().replace(" ", "_")


def _sample_fields(kwargs: dict[str, Any], size: int) -> list[dict[str, Any]]:
    unknown = set(kwargs) - set(SAMPLE_KEYS)
    if unknown:
        raise ValueError(f"unknown inputs {sorted(unknown)}; expected some of {list(SAMPLE_KEYS)}")
    for name, values in kwargs.items():
        if values is not None and len(values) != size:
            raise ValueError(f"{size} predictions but {len(values)} {name}")
    return [{name: values[i] for name, values in kwargs.items() if values is not None} for i in range(size)]


def statistics_batch(predictions: Any, references: Any, **sample_inputs: Any) -> dict[str, list]:
    """The per-sample statistic columns (``STAT_COLUMNS``) of a batch of masks and optional per-sample inputs."""
    rows = batch_statistics(predictions, references)
    samples = _sample_fields(sample_inputs, len(rows))
    columns: dict[str, list] = {name: [] for name in STAT_COLUMNS}
    for index, (row, sample) in enumerate(zip(rows, samples, strict=True)):
        polarity = "positive" if row[3] > 0 else "negative"
        given = sample.get("polarities")
        if given is not None and given != polarity:
            raise ValueError(f"sample {index}: polarity {given!r} but the reference mask is {polarity}")
        sample["question_types"] = _normalise_question_type(sample.get("question_types"))
        try:
            strict, lenient = text_verdict(sample, polarity)
        except (ValueError, KeyError) as error:
            raise ValueError(f"sample {index}: {error}") from None
        for name, value in zip(STAT_NAMES, row, strict=True):
            columns[name].append(int(value))
        columns["lesion"].append(sample.get("lesions") or "")  # Arrow string columns take no None
        columns["question_type"].append(sample["question_types"] or "")
        columns["text_correct"].append(strict)
        columns["text_correct_ignoring_certainty"].append(lenient)
        turn = sample.get("turn_indices")
        if turn is not None and (isinstance(turn, bool) or not isinstance(turn, int | np.integer) or turn < 1):
            raise ValueError(f"sample {index}: turn index {turn!r} must be an integer >= 1")
        columns["turn"].append(NO_TURN if turn is None else int(turn))
    return columns
