"""ILS: the instruction-guided lesion segmentation metrics of MIMIC-ILS (gIoU, cIoU, N-Acc, text accuracy)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
import numpy as np
from PIL import Image

from .ils_answers import ParsedAnswer, ignoring_certainty, parse_answer, parsed_reference

_CITATION = """\
@inproceedings{choi2026ils,
  title     = {Instruction-Guided Lesion Segmentation for Chest X-rays with Automatically Generated
               Large-Scale Dataset},
  author    = {Choi, Geon and Yoon, Hangyul and Shin, Hyunju and Park, Hyunki and Seo, Sang Hoon and Yang, Eunho
               and Choi, Edward},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2026},
  note      = {arXiv:2511.15186}
}
"""

_DESCRIPTION = """\
Instruction-guided lesion segmentation (ILS) metrics of MIMIC-ILS (paper Sec. 6.1, Tables 4, 5, 6 and 13).

A sample is *positive* when its reference mask has a foreground pixel and *negative* (a "null target") when it is
empty. Per sample the module keeps only the intersection I and union U of the binary masks, both areas, the group
keys and the text verdict, never the masks, so any number of full-resolution masks can be streamed with
`add_batch`.

- gIoU: mean over positive samples of I/U (a positive sample with an empty prediction scores 0; no epsilon).
- cIoU: sum of I over sum of U, positive samples only.
- N-Acc: fraction of negative samples whose predicted mask has no foreground pixel.
- text accuracy: an answer is correct only when it matches the reference's template (Table 2) and every bracketed
  variable (target, locations in order, lesion; the certainty through the template) exactly. "[SEG]" alone is the
  correct answer of a basic positive. Reported overall, by question type x polarity and by lesion.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list`): predicted masks, one per sample, already in the reference frame. Each is an HxW array
        (bool, 0/1 or 0/255 integers, 0/1 floats), a PIL image, a file path, a `datasets` image dict
        (`{"bytes", "path"}`) or None (an empty mask). A pixel is foreground when its value is > 0, as ROSALIA
        thresholds its mask logits at 0; threshold probabilities or logits yourself.
    references (`list`): reference masks in the same forms; None is an empty mask (a negative pair of MIMIC-ILS).
    lesions (`list` of `str`, *optional*): lesion type per sample (Table 5 breakdown).
    question_types (`list` of `str`, *optional*): "basic", "global" or "lesion_inference" per sample.
    polarities (`list` of `str`, *optional*): "positive"/"negative"; checked against the reference mask.
    predicted_answers (`list` of `str`, *optional*): generated answers; enables text accuracy.
    reference_answers (`list` of `str`, *optional*): reference answers. When absent, the reference is rendered
        from `question_types`, `polarities`, `targets`, `locations`, `lesions` and `certainties`.
    targets, locations, certainties (*optional*): the structured variables of the reference answers.
Returns:
    giou (`float`), ciou (`float`), n_acc (`float`): fractions in [0, 1] (NaN when the group has no sample).
    num_positive (`int`), num_negative (`int`).
    per_lesion (`dict`): lesion -> the five keys above; per_question_type (`dict`): question type -> the same.
    With text: text_accuracy (`float`), num_text (`int`), text_accuracy_per_question_type
    (question type -> {"all", "positive", "negative"}), text_accuracy_per_lesion (lesion -> float), and
    text_accuracy_lesion_inference_ignoring_certainty (positive lesion-inference answers scored on the lesion only,
    the authors' convention).
Examples:
    >>> import evaluate
    >>> import numpy as np
    >>> ils = evaluate.load("metrics/ils")
    >>> reference = np.zeros((4, 4), dtype=np.uint8)
    >>> reference[:2, :2] = 255
    >>> prediction = np.zeros((4, 4), dtype=bool)
    >>> prediction[:2, :] = True
    >>> results = ils.compute(
    ...     predictions=[prediction, np.zeros((4, 4), dtype=bool)],
    ...     references=[reference, None],
    ...     lesions=["edema", "edema"],
    ...     question_types=["global", "global"],
    ...     predicted_answers=["[SEG] It is located in the right lung.", "[SEG] There is no edema."],
    ...     reference_answers=["[SEG] It is located in the left lung.", "[SEG] There is no edema."],
    ... )
    >>> print({key: results[key] for key in ("giou", "ciou", "n_acc", "num_positive", "num_negative")})
    {'giou': 0.5, 'ciou': 0.5, 'n_acc': 1.0, 'num_positive': 1, 'num_negative': 1}
    >>> print(results["text_accuracy"], results["text_accuracy_per_question_type"]["global"])
    0.5 {'all': 0.5, 'positive': 0.0, 'negative': 1.0}
"""

# Mirrors mimic_ils.schema (the module may not import the project: evaluate runs it from its cache).
LESION_TYPES = ("cardiomegaly", "pneumonia", "atelectasis", "opacity", "consolidation", "edema", "effusion")
QUESTION_TYPES = ("basic", "global", "lesion_inference")
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
)
NO_TEXT = -1
STAT_NAMES = ("intersection", "union", "prediction_area", "reference_area")

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
    return results


# --------------------------------------------------------------------------------------------------------------
# The evaluate module

STAT_FEATURES = datasets.Features(
    {
        "intersection": datasets.Value("int64"),
        "union": datasets.Value("int64"),
        "prediction_area": datasets.Value("int64"),
        "reference_area": datasets.Value("int64"),
        "lesion": datasets.Value("string"),
        "question_type": datasets.Value("string"),
        "text_correct": datasets.Value("int8"),
        "text_correct_ignoring_certainty": datasets.Value("int8"),
    }
)


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
    """The per-sample statistic columns (``STAT_FEATURES``) of a batch of masks and optional per-sample inputs."""
    rows = batch_statistics(predictions, references)
    samples = _sample_fields(sample_inputs, len(rows))
    columns: dict[str, list] = {name: [] for name in STAT_FEATURES}
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
    return columns


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ILS(evaluate.Metric):
    """gIoU / cIoU / N-Acc / text accuracy of instruction-guided lesion segmentation.

    Masks are reduced to per-sample statistics inside ``add``/``add_batch`` before anything reaches the Arrow
    cache, so the declared features are those statistics (``STAT_FEATURES``), not the masks.
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=STAT_FEATURES,
            reference_urls=["https://arxiv.org/abs/2511.15186", "https://github.com/checkoneee/ROSALIA"],
        )

    def add_batch(self, *, predictions: Any = None, references: Any = None, **kwargs: Any) -> None:
        """Reduce a batch of masks (and optional per-sample inputs) to statistics and append them to the cache."""
        if predictions is None or references is None:
            raise ValueError("add_batch needs predictions and references (use None items for empty masks)")
        evaluate.Metric.add_batch(self, **statistics_batch(predictions, references, **kwargs))

    def add(self, *, prediction: Any = None, reference: Any = None, **kwargs: Any) -> None:
        """Add one sample: ``prediction``/``reference`` masks and singular per-sample inputs (``lesion=...``)."""
        plural = {_plural(name): [value] for name, value in kwargs.items()}
        self.add_batch(predictions=[prediction], references=[reference], **plural)

    def compute(self, *, predictions: Any = None, references: Any = None, **kwargs: Any) -> dict | None:
        """Add the given batch (if any) and compute every figure over all the samples added so far."""
        sample_inputs = {name: kwargs.pop(name) for name in list(kwargs) if name in SAMPLE_KEYS}
        if predictions is not None or references is not None:
            self.add_batch(predictions=predictions, references=references, **sample_inputs)
        if self.writer is None:  # nothing was ever added
            return summarize({name: [] for name in STAT_FEATURES})
        return evaluate.Metric.compute(self, **kwargs)

    def _compute(self, **columns: Any) -> dict[str, Any]:
        return summarize(columns)


def _plural(name: str) -> str:
    mapping = {
        "lesion": "lesions",
        "question_type": "question_types",
        "polarity": "polarities",
        "predicted_answer": "predicted_answers",
        "reference_answer": "reference_answers",
        "target": "targets",
        "certainty": "certainties",
    }
    return mapping.get(name, name)
