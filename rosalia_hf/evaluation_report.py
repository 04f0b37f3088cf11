"""Markdown report and case grid of an ILS evaluation (the output of ``rosalia_hf.evaluation.evaluate_model``).

Tables follow the paper: Table 4 (gIoU / cIoU / N-Acc), Table 5 (per lesion), Table 6 (text accuracy by question
type and polarity) and Table 13 (text accuracy by lesion). Figures are printed as percentages with one decimal.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

QUESTION_TYPE_NAMES = {"basic": "Basic", "global": "Global", "lesion_inference": "Lesion inference",
                       "reasoning": "Reasoning"}


def percent(value: float | None) -> str:
    """``0.7123`` -> ``"71.2"``; NaN or None -> ``"–"``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.1f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; the first column is left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _segmentation_row(name: str, figures: dict) -> list:
    return [name, percent(figures["giou"]), percent(figures["ciou"]), percent(figures["n_acc"]),
            figures["num_positive"], figures["num_negative"]]


SEGMENTATION_HEADER = ("", "gIoU", "cIoU", "N-Acc", "# positive", "# negative")


def segmentation_tables(metrics: dict, model_name: str) -> list[str]:
    """Table 4 (overall), Table 5 (per lesion) and the per-question-type breakdown, as Markdown sections."""
    overall = markdown_table(("Model", *SEGMENTATION_HEADER[1:]), [_segmentation_row(model_name, metrics)])
    lesions = markdown_table(
        ("Lesion", *SEGMENTATION_HEADER[1:]),
        [_segmentation_row(lesion.capitalize(), figures) for lesion, figures in metrics["per_lesion"].items()],
    )
    types = markdown_table(
        ("Question type", *SEGMENTATION_HEADER[1:]),
        [_segmentation_row(QUESTION_TYPE_NAMES.get(name, name), figures)
         for name, figures in metrics["per_question_type"].items()],
    )
    sections = [
        "## Segmentation (Table 4)\n\n" + overall,
        "## Segmentation by lesion (Table 5)\n\n" + lesions,
        "## Segmentation by question type\n\n" + types,
    ]
    if metrics.get("per_turn"):
        sections.append(turn_table(metrics["per_turn"]))
    return sections


def turn_table(per_turn: dict) -> str:
    """The figures of each turn index of a ``conversations`` evaluation (earlier turns teacher-forced)."""
    rows = [[f"Turn {turn}", percent(figures["giou"]), percent(figures["ciou"]), percent(figures["n_acc"]),
             percent(figures.get("text_accuracy")), figures["num_positive"], figures["num_negative"]]
            for turn, figures in per_turn.items()]
    table = markdown_table(("Turn", "gIoU", "cIoU", "N-Acc", "Text accuracy", "# positive", "# negative"), rows)
    return ("## By turn (conversations)\n\nEach turn is answered after the conversation's earlier turns with their "
            "reference answers (teacher forcing).\n\n" + table)


def text_tables(metrics: dict) -> list[str]:
    """Table 6 (text accuracy by question type x polarity) and Table 13 (by lesion); empty without text."""
    if "text_accuracy" not in metrics:
        return ["## Text accuracy\n\nNot measured (segment-only evaluation, or no reference answers)."]
    rows = [
        [QUESTION_TYPE_NAMES.get(name, name), percent(acc["positive"]), percent(acc["negative"]), percent(acc["all"])]
        for name, acc in metrics["text_accuracy_per_question_type"].items()
    ]
    rows.append(["**Total**", "", "", f"**{percent(metrics['text_accuracy'])}**"])
    by_type = markdown_table(("Question type", "Positive", "Negative", "All"), rows)
    lenient = percent(metrics["text_accuracy_lesion_inference_ignoring_certainty"])
    by_lesion = markdown_table(
        ("Lesion", "Text accuracy"),
        [[lesion.capitalize(), percent(acc)] for lesion, acc in metrics["text_accuracy_per_lesion"].items()],
    )
    note = (
        f"An answer is correct only when its template and every variable match the reference exactly "
        f"({metrics['num_text']} answers scored). Positive lesion-inference answers scored on the lesion only "
        f"(ignoring certainty, the authors' convention): {lenient}."
    )
    return [
        f"## Text accuracy (Table 6)\n\n{by_type}\n\n{note}",
        f"## Text accuracy by lesion (Table 13)\n\n{by_lesion}",
    ]


def _overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[float, float, float]) -> np.ndarray:
    rgb = np.repeat(image[..., None].astype(np.float32) / 255.0, 3, axis=2)
    rgb[mask] = 0.5 * rgb[mask] + 0.5 * np.asarray(colour, dtype=np.float32)
    return rgb


def case_rows(cases: dict, positives: dict[str, int] | None = None) -> list[tuple[str, str, Any]]:
    """The rows of the case grid, ``(lesion, label, case)``: per lesion its best cases (labelled ``best``, highest
    IoU first), then its worst (``worst``, lowest first) that are not already shown as best.

    ``positives`` (``{lesion: number of positive pairs}``, the metric's ``per_lesion[...]["num_positive"]``) says
    when one row stands for more than one label: a lesion with a single positive pair gets one row labelled
    ``only case``, and a lesion whose best case is also its worst (every pair at the same IoU) one row labelled
    ``all N tie``, rather than a row that calls one case both best and worst.

    >>> from types import SimpleNamespace as Case
    >>> a, b = Case(index=3, iou=0.9), Case(index=5, iou=0.1)
    >>> [(lesion, label, case.index) for lesion, label, case in case_rows(
    ...     {"edema": {"best": [a], "worst": [b]}, "effusion": {"best": [b], "worst": [b]}}, {"effusion": 1})]
    [('edema', 'best', 3), ('edema', 'worst', 5), ('effusion', 'only case', 5)]
    """
    positives = positives or {}
    rows = []
    for lesion, kinds in cases.items():
        best, worst = list(kinds.get("best", [])), list(kinds.get("worst", []))
        shown = {case.index for case in best}
        count = positives.get(lesion, len(shown | {case.index for case in worst}))
        if count == 1:
            rows.append((lesion, "only case", (best or worst)[0]))
        elif best and worst and best[0].index == worst[0].index:  # the top case is the bottom one: max IoU == min
            rows += [(lesion, f"all {count} tie", case) for case in best]
        else:
            rows += [(lesion, "best", case) for case in best]
            rows += [(lesion, "worst", case) for case in worst if case.index not in shown]
    return rows


def plot_cases(cases: dict, path: Path, positives: dict[str, int] | None = None) -> Path | None:
    """PNG grid: one row per :func:`case_rows` row (lesion, best / worst / only case), columns image (titled with
    the lesion, the label, the pair's index and its instruction) | reference overlay (green) | prediction overlay
    (red, titled with the IoU)."""
    rows = case_rows(cases, positives)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(rows), 3, figsize=(9, 3.0 * len(rows)), squeeze=False)
    for (lesion, label, case), row_axes in zip(rows, axes, strict=True):
        panels = (
            (np.repeat(case.image[..., None], 3, axis=2), textwrap.fill(f"{lesion}, {label} (#{case.index}): "
                                                                        f"{case.instruction}", 42)),
            (_overlay(case.image, case.reference, (0.0, 1.0, 0.0)), "reference"),
            (_overlay(case.image, case.prediction, (1.0, 0.0, 0.0)), f"prediction (IoU {100 * case.iou:.1f})"),
        )
        for axis, (picture, title) in zip(row_axes, panels, strict=True):
            axis.imshow(picture, cmap="gray")
            axis.set_title(title, fontsize=8)
            axis.axis("off")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def write_report(evaluation: dict, out_dir: str | Path, *, model_name: str = "ROSALIA",
                 details: dict[str, Any] | None = None) -> Path:
    """Write ``report.md`` (and ``cases.png``) into ``out_dir``; returns the report path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = evaluation["metrics"]
    positives = {lesion: figures["num_positive"] for lesion, figures in metrics.get("per_lesion", {}).items()}
    rows = case_rows(evaluation["cases"], positives)
    grid = plot_cases(evaluation["cases"], out_dir / "cases.png", positives)
    picture = "No positive pairs."
    if grid:
        listed = markdown_table(("Lesion", "Case", "Pair", "IoU"), [
            [lesion.capitalize(), label, f"#{case.index}", percent(case.iou)] for lesion, label, case in rows])
        picture = f"![cases](cases.png)\n\nGreen: reference; red: prediction.\n\n{listed}"
    run = {
        "samples": evaluation["num_samples"],
        "seconds": f"{evaluation['seconds']:.1f}",
        "samples/s": f"{evaluation['samples_per_second']:.2f}",
        "mode": "segment only" if evaluation["segment_only"] else "segment + text",
        **(details or {}),
    }
    sections = [
        f"# ILS evaluation: {model_name}",
        markdown_table(("Run", ""), [[key, value] for key, value in run.items()]),
        *segmentation_tables(metrics, model_name),
        *text_tables(metrics),
        "## Best and worst cases per lesion\n\n" + picture,
        "Figures are percentages. gIoU: mean per-pair IoU over positive pairs; cIoU: total intersection over total "
        "union of positive pairs; N-Acc: share of negative pairs whose predicted mask is empty.",
    ]
    path = out_dir / "report.md"
    path.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    return path


__all__ = ["write_report", "plot_cases", "case_rows", "segmentation_tables", "text_tables", "markdown_table",
           "percent"]
