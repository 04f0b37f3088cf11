"""The report-stage docs say what the code does: the lexicon page is generated, the location table is checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from mimic_ils.report import map_location
from mimic_ils.report.lexicon import FINDING_TERMS, lexicon_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _location_rows() -> list[tuple[str, tuple[str, ...]]]:
    text = (DOCS / "report_rules.md").read_text()
    table = text.split("## Location table (step 2)", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 2 or cells[0] in ("phrase", "---"):
            continue
        labels = () if cells[1] == "—" else tuple(label.strip() for label in cells[1].split(","))
        rows.append((cells[0], labels))
    return rows


def test_the_location_table_has_its_rows():
    assert len(_location_rows()) >= 30


@pytest.mark.parametrize(("phrase", "labels"), _location_rows())
def test_location_table_row(phrase, labels):
    assert map_location(phrase) == labels


def test_lexicon_page_is_the_generated_one():
    page = (DOCS / "report_lexicon.md").read_text()
    assert page == lexicon_markdown(), "regenerate: python -m mimic_ils.report.lexicon > docs/report_lexicon.md"
    assert all(term in page for _, terms in FINDING_TERMS.values() for term in terms)
