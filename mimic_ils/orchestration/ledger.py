"""The ledger: every study and image of the source metadata with its fate, and every finding grounding dropped.

Rows are :class:`mimic_ils.rows.LedgerRow`: ``kind`` (study / image / finding / reasoning, a reasoning candidate
that was not made; the release import adds pair),
``study_id``, ``dicom_id`` (None for studies), ``split``, ``fate`` (used / excluded / dropped), ``reason`` (one line;
None when used). For studies, used + excluded = the number of studies in the metadata (of the ``--limit``
selection).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from mimic_ils.rows import LedgerRow, StudyResult


def ledger_rows(results: Sequence[StudyResult]) -> list[LedgerRow]:
    """Ledger rows from study results (sorted by study id; per study: the study, its images, its dropped findings)."""
    return [row for result in sorted(results, key=lambda item: item.study_id) for row in study_ledger_rows(result)]


def study_ledger_rows(result: StudyResult) -> list[LedgerRow]:
    """One study's ledger rows: the study, its images, its dropped findings."""
    study, split = result.study_id, result.split
    rows = [LedgerRow("study", study, None, split, result.fate, result.reason)]
    rows += [LedgerRow("image", study, image.dicom_id, split, image.fate, image.reason) for image in result.images]
    rows += [LedgerRow("reasoning" if finding.what.startswith("reasoning ") else "finding", study, finding.dicom_id,
                       split, "dropped", f"{finding.what}: {finding.reason}") for finding in result.findings]
    return rows


def reason_class(reason: str | None) -> str:
    """A reason without its specifics (ids, numbers, quoted text), so that equal causes count together."""
    if not reason:
        return ""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "…", reason)
    text = re.sub(r"(?<![\w-])\d+(\.\d+)?(?!\w)", "N", text)
    return text.split(" (")[0] if text.startswith("no usable frontal image") else text


def summarize_ledger(rows: Iterable[LedgerRow]) -> dict[str, Any]:
    """Counts of fates per kind and of reason classes per kind (for the card, ``stats`` and the tests)."""
    summary = LedgerSummary()
    summary.add(rows)
    return summary.result()


class LedgerSummary:
    """:func:`summarize_ledger` accumulated as the rows stream by (two counters, never the rows)."""

    def __init__(self) -> None:
        self.fates: Counter = Counter()
        self.reasons: Counter = Counter()

    def add(self, rows: Iterable[LedgerRow]) -> None:
        for row in rows:
            self.fates[f"{row.kind}:{row.fate}"] += 1
            if row.reason:
                self.reasons[f"{row.kind}: {reason_class(row.reason)}"] += 1

    def result(self) -> dict[str, Any]:
        ordered_reasons = sorted(self.reasons.items(), key=lambda item: (-item[1], item[0]))
        return {"fates": dict(sorted(self.fates.items())), "reasons": dict(ordered_reasons)}
