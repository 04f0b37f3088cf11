"""The report stage: one section per study, structured findings (the paper's seven fields) and mapped lung labels.

Public API::

    choose_section(text, study_id=None) -> Section            # findings, else impression, else last_paragraph
    get_backend("rules" | "llm", **options) -> ReportBackend  # .structure(section) -> tuple[Finding, ...]
    structure_report(text, *, study_id=None, backend=None) -> StructuredReport

Every failure is a :class:`mimic_ils.schema.ReportError` (or :class:`BackendError` for a backend that cannot be
built) with a one-line reason.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from mimic_ils.report.indication import clinical_cues
from mimic_ils.report.locations import COARSE_CATEGORIES, coarse_category, map_location
from mimic_ils.report.rules import RulesBackend
from mimic_ils.report.sections import choose_section, read_report_file, split_sections, split_sentences
from mimic_ils.schema import BackendError, Finding, Section, StructuredReport

__all__ = [
    "COARSE_CATEGORIES", "ReportBackend", "RulesBackend", "choose_section", "coarse_category", "get_backend",
    "map_location", "read_report_file", "split_sections", "split_sentences", "structure_report",
]
BACKENDS = ("rules", "llm")


@runtime_checkable
class ReportBackend(Protocol):
    """Turns a chosen section into findings with ``lesion_type`` and mapped ``locations`` filled in."""

    name: str

    def structure(self, section: Section) -> tuple[Finding, ...]: ...


def get_backend(name: str = "rules", **options: Any) -> ReportBackend:
    """The report backend called ``name``; ``options`` go to its constructor (see :class:`LlmBackend`)."""
    if name == "rules":
        if options:
            raise BackendError(f"the rules backend takes no options (got {', '.join(sorted(options))})")
        return RulesBackend()
    if name == "llm":
        from mimic_ils.report.llm import LlmBackend

        return LlmBackend(**options)
    raise BackendError(f"unknown report backend {name!r}; choose one of {', '.join(BACKENDS)}")


_DEFAULT_BACKEND: RulesBackend | None = None


def structure_report(text: str, *, study_id: str | None = None,
                     backend: ReportBackend | None = None) -> StructuredReport:
    """Section choice then structuring of one raw report (rules backend by default); raises ReportError."""
    global _DEFAULT_BACKEND
    if backend is None:
        _DEFAULT_BACKEND = _DEFAULT_BACKEND or RulesBackend()
        backend = _DEFAULT_BACKEND
    section = choose_section(text, study_id)
    return StructuredReport(section=section, findings=tuple(backend.structure(section)), clinical=clinical_cues(text))
