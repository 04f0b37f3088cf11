"""ILS: the instruction-guided lesion segmentation metrics of MIMIC-ILS (gIoU, cIoU, N-Acc, text accuracy)."""

from __future__ import annotations

from typing import Any

import datasets
import evaluate

# The pure NumPy core lives in the model package, so that rosalia_hf imports it publicly; this module forwards to it.
from rosalia_hf.ils_scores import (  # noqa: F401  (LESION_TYPES, QUESTION_TYPES, ...: the module's public face)
    LESION_TYPES,
    QUESTION_TYPES,
    SAMPLE_KEYS,
    STAT_COLUMNS,
    batch_statistics,
    mask_statistics,
    statistics_batch,
    summarize,
    to_mask,
)

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
  correct answer of a basic positive. Reported overall, by question type x polarity and by lesion. The reasoning
  question type (beyond Table 2) is scored on its template, lesion and locations, not on its sentence of reasoning.
- per turn: with `turn_indices` (multi-turn conversations, turns counted from 1), every figure of each turn index.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list`): predicted masks, one per sample, already in the reference frame. Each is an HxW array
        (bool, 0/1 or 0/255 integers, 0/1 floats), a PIL image, a file path, a `datasets` image dict
        (`{"bytes", "path"}`) or None (an empty mask). A pixel is foreground when its value is > 0, as ROSALIA
        thresholds its mask logits at 0; threshold probabilities or logits yourself.
    references (`list`): reference masks in the same forms; None is an empty mask (a negative pair of MIMIC-ILS).
    lesions (`list` of `str`, *optional*): lesion type per sample (Table 5 breakdown).
    question_types (`list` of `str`, *optional*): "basic", "global", "lesion_inference" or "reasoning" per sample.
    polarities (`list` of `str`, *optional*): "positive"/"negative"; checked against the reference mask.
    predicted_answers (`list` of `str`, *optional*): generated answers; enables text accuracy.
    reference_answers (`list` of `str`, *optional*): reference answers. When absent, the reference is rendered
        from `question_types`, `polarities`, `targets`, `locations`, `lesions` and `certainties`.
    targets, locations, certainties (*optional*): the structured variables of the reference answers.
    turn_indices (`list` of `int`, *optional*): the turn (1, 2, ...) of each sample in its conversation.
Returns:
    giou (`float`), ciou (`float`), n_acc (`float`): fractions in [0, 1] (NaN when the group has no sample).
    num_positive (`int`), num_negative (`int`).
    per_lesion (`dict`): lesion -> the five keys above; per_question_type (`dict`): question type -> the same.
    With text: text_accuracy (`float`), num_text (`int`), text_accuracy_per_question_type
    (question type -> {"all", "positive", "negative"}), text_accuracy_per_lesion (lesion -> float), and
    text_accuracy_lesion_inference_ignoring_certainty (positive lesion-inference answers scored on the lesion only,
    the authors' convention). With turn indices: per_turn (turn -> the five keys above and text_accuracy).
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

# --------------------------------------------------------------------------------------------------------------
# The evaluate module

_STAT_TYPES = {"lesion": "string", "question_type": "string", "text_correct": "int8",
               "text_correct_ignoring_certainty": "int8", "turn": "int16"}
STAT_FEATURES = datasets.Features({name: datasets.Value(_STAT_TYPES.get(name, "int64")) for name in STAT_COLUMNS})


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
        "turn_index": "turn_indices",
    }
    return mapping.get(name, name)
