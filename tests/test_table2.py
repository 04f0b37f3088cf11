"""rosalia_hf.table2: the paper's Table 2 strings, byte for byte, and the instruction parser read back from them."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from rosalia_hf import table2
from rosalia_hf.table2 import INSTRUCTIONS, ParsedInstruction, join_locations, parse_instruction, split_locations

# Table 2 of the paper (and the names mimic_ils.pairs has always given them).
TABLE2 = {
    "BASIC_INSTRUCTION": "Segment the {target} in the {location}.",
    "BASIC_POSITIVE": "[SEG]",
    "BASIC_NEGATIVE": "[SEG] There is no {target} in the {location}.",
    "GLOBAL_INSTRUCTION": "Segment the {target}.",
    "GLOBAL_POSITIVE": "[SEG] It is located in the {location}.",
    "GLOBAL_NEGATIVE": "[SEG] There is no {target}.",
    "INFERENCE_INSTRUCTION": "Segment the opacity in the {location} and predict its type.",
    "INFERENCE_DEFINITIVE": "[SEG] It is highly suggestive of {lesion}.",
    "INFERENCE_TENTATIVE": "[SEG] It possibly reflects {lesion}.",
    "INFERENCE_NEGATIVE": "[SEG] There is no opacity in the {location}.",
}


@pytest.mark.parametrize("name", sorted(TABLE2))
def test_the_template_strings_are_table2_byte_for_byte(name):
    assert getattr(table2, name).encode() == TABLE2[name].encode()


def test_table2_imports_only_the_standard_library():
    tree = ast.parse(Path(table2.__file__).read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.module and not node.level}
    assert imported and imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Segment the edema in the right lung base.", ParsedInstruction("basic", "edema", ("right lung base",))),
        ("Segment the cardiomegaly in the heart.", ParsedInstruction("basic", "cardiomegaly", ("heart",))),
        ("Segment the pleural effusion.", ParsedInstruction("global", "pleural effusion", ())),
        ("Segment the opacity in the left upper zone lung and left lung base and predict its type.",
         ParsedInstruction("lesion_inference", "opacity", ("left upper zone lung", "left lung base"))),
        # the basic form with the target "opacity" is not lesion inference
        ("Segment the opacity in the left lung.", ParsedInstruction("basic", "opacity", ("left lung",))),
        # no vocabulary: any target and location words parse, the caller checks them against its own
        ("Segment the pneumothorax in the a, b and c.", ParsedInstruction("basic", "pneumothorax", ("a", "b", "c"))),
    ],
)
def test_parse_instruction_reads_each_form(text, expected):
    assert parse_instruction(text) == expected


@pytest.mark.parametrize(
    "text",
    ["Segment edema.", "segment the edema.", "Segment the edema", "Please segment the edema.", "",
     "Segment the opacity in the right lung and predict its type", "Segment the edema. Segment the effusion."],
)
def test_parse_instruction_refuses_a_paraphrase(text):
    assert parse_instruction(text) is None


@pytest.mark.parametrize("count", [1, 2, 3, 5])
@pytest.mark.parametrize("question_type", sorted(INSTRUCTIONS))
def test_every_rendered_instruction_parses_back(question_type, count):
    locations = tuple(f"zone {i}" for i in range(count))
    text = INSTRUCTIONS[question_type].format(target="atelectasis", location=join_locations(locations))
    parsed = parse_instruction(text)
    assert parsed.question_type == question_type
    assert parsed.target == ("opacity" if question_type == "lesion_inference" else "atelectasis")
    assert parsed.locations == (() if question_type == "global" else locations)


def test_split_locations_of_nothing_is_empty():
    assert split_locations(None) == split_locations("") == ()
    with pytest.raises(ValueError, match="at least one location"):
        join_locations([])
