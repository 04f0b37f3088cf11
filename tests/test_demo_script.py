"""examples/demo.py's closing commands: `rosalia predict` on one test image and instruction of the built folder,
and `rosalia serve`, for the model the demo trained."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from _build_helpers import FakeStages

from mimic_ils.orchestration import build

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import demo  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "mimic_ils"
    build(None, out, stages=FakeStages(12), progress=False)
    return out


def test_the_commands_name_a_test_image_and_one_of_its_instructions(built, tmp_path):
    model, predictions = tmp_path / "run" / "merged", tmp_path / "out" / "predictions"
    predict, serve = demo.try_commands(built, model, predictions)
    match = re.fullmatch(r'rosalia predict --model (\S+) --out (\S+) (\S+)  -i "(.+)"', predict)
    assert match, predict
    assert (match[1], match[2]) == (str(model), str(predictions)) and serve == f"rosalia serve --model {model}"
    image, instruction = Path(match[3]), shlex.split(f'"{match[4]}"')[0]
    assert image.is_file() and built in image.parents and "test" in image.parts
    test = datasets.load_dataset(str(built), "pairs", split="test")
    positives = [row["instruction"] for row in test if row["polarity"] == "positive"]
    assert instruction == (positives[0] if positives else test[0]["instruction"])


def test_a_copy_with_the_same_bytes_names_its_own_image(built, tmp_path):
    """datasets serves an identical folder from its cache, with the first folder's image paths."""
    datasets.load_dataset(str(built), "pairs", split="test")
    copy = tmp_path / "again" / "mimic_ils"
    shutil.copytree(built, copy)
    image, _ = demo.example_pair(copy)
    assert Path(image).is_file() and copy in Path(image).parents


def test_an_instruction_is_quoted_for_the_shell():
    text = 'Segment the "edema" for $HOME `x` \\ now.'
    echoed = subprocess.run(["bash", "-c", f"printf %s {demo._double_quoted(text)}"], capture_output=True, text=True)
    assert echoed.stdout == text
