"""``convert_lisa`` on broken LISA folders: one line naming the file and the field, and no output folder left behind.

Each case copies the reference fixture (``tests/fixtures/lisa_reference``), breaks one thing, and converts.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from transformers import CLIPVisionConfig, CLIPVisionModel

from rosalia_hf import convert_lisa
from rosalia_hf.convert_lisa import convert_lisa_checkpoint, main
from rosalia_hf.convert_sam import CheckpointConversionError

FIXTURE = Path(__file__).parent / "fixtures" / "lisa_reference"


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path]:
    for name in ("lisa", "clip"):
        shutil.copytree(FIXTURE / name, tmp_path / name)
        for path in (tmp_path / name).iterdir():
            path.chmod(0o644)
    return tmp_path / "lisa", tmp_path / "clip"


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _wider_clip(lisa: Path, clip: Path) -> None:
    config = CLIPVisionConfig.from_pretrained(clip)
    config.hidden_size, config.intermediate_size = 48, 96
    (clip / "pytorch_model.bin").unlink()
    CLIPVisionModel(config).save_pretrained(clip)


def _drop_shard(lisa: Path, clip: Path) -> None:
    (lisa / "pytorch_model-00002-of-00002.bin").unlink()


BREAKAGES = {
    "clip of another width": (_wider_clip, r"clip/config\.json: vision hidden_size 48 != mm_hidden_size 32"),
    "clip preprocessor of another size": (
        lambda lisa, clip: _edit_json(clip / "preprocessor_config.json", crop_size=336),
        r"clip/preprocessor_config\.json: crop_size 336 != the tower's image_size 224"),
    "clip folder without config": (lambda lisa, clip: (clip / "config.json").unlink(), r"clip/config\.json: missing"),
    "no tokenizer.model": (lambda lisa, clip: (lisa / "tokenizer.model").unlink(), r"lisa/tokenizer\.model: missing"),
    "added ids beyond the config": (
        lambda lisa, clip: _edit_json(lisa / "config.json", vocab_size=421),
        r"lisa/added_tokens\.json: ids \{'<im_start>': 421, '<im_end>': 422\} are outside config\.json "
        r"vocab_size 421"),
    "added ids with a gap": (
        lambda lisa, clip: _edit_json(lisa / "added_tokens.json", **{"<im_end>": 423}),
        r"lisa/added_tokens\.json: added token ids .* must run from 420"),
    "a shard the index names is missing": (
        _drop_shard, r"pytorch_model\.bin\.index\.json: names shard\(s\) missing .*pytorch_model-00002-of-00002\.bin"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_broken_folder_is_named_and_nothing_is_written(breakage, folders, tmp_path, capsys):
    lisa, clip = folders
    breaker, message = BREAKAGES[breakage]
    breaker(lisa, clip)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(lisa), "--clip", str(clip), "--output", str(out)])
    text = str(exit_info.value)
    assert text.startswith("convert_lisa: ") and "\n" not in text, text
    assert re.search(message, text), text
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip", "lisa"]  # no temporary folder either


def test_an_existing_output_folder_is_not_touched(folders, tmp_path):
    lisa, clip = folders
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(CheckpointConversionError, match="exists and is not empty"):
        convert_lisa_checkpoint(lisa, clip, out)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_a_failure_while_writing_leaves_nothing(folders, tmp_path, monkeypatch):
    lisa, clip = folders

    def failing_write(state, config, folder, dtype=None):
        (Path(folder) / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(convert_lisa, "write_model", failing_write)
    with pytest.raises(OSError, match="disk full"):
        convert_lisa_checkpoint(lisa, clip, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip", "lisa"]


def test_the_intact_fixture_converts_into_an_empty_existing_folder(folders, tmp_path):
    lisa, clip = folders
    (tmp_path / "out").mkdir()
    out = convert_lisa_checkpoint(lisa, clip, tmp_path / "out")
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= {
        p.name for p in out.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip", "lisa", "out"]
