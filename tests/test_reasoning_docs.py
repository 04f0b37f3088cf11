"""docs/reasoning.md says what the code does: its cue and description tables are the generated ones."""

from __future__ import annotations

from pathlib import Path

from mimic_ils.reasoning import rules_markdown
from rosalia_hf.table2 import TEMPLATES

PAGE = Path(__file__).resolve().parents[1] / "docs" / "reasoning.md"


def test_the_page_holds_the_generated_tables():
    page = PAGE.read_text()
    assert page.rstrip().endswith(rules_markdown()), "regenerate the tables of docs/reasoning.md (rules_markdown)"


def test_the_page_states_the_four_answer_forms():
    page = PAGE.read_text()
    for name, template in TEMPLATES.items():
        if name.startswith("reasoning_"):
            assert f"| `{name}` | `{template}` |" in page
