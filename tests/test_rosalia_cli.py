"""`rosalia predict` on a tiny random model saved to disk: the real command, its files, its JSON lines, bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rosalia_hf import cli
from rosalia_hf.testing import tiny_rosalia

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_model")
    model, processor = tiny_rosalia(seed=0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture()
def images(tmp_path) -> Path:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    ramp = np.linspace(0, 4000, 96 * 80).reshape(96, 80)
    Image.fromarray(ramp.astype(np.uint16)).save(folder / "wide.png")
    Image.fromarray((ramp / 16).astype(np.uint8)).convert("RGB").save(folder / "sub" / "colour.jpg")
    Image.fromarray((ramp / 16).astype(np.uint8)).save(folder / "sub" / "wide.png")  # the same stem again
    return folder


def _predict(capsys, argv: list[str]) -> tuple[int, list[dict], list[str]]:
    code = cli.main(["predict", *argv])
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines() if line.strip()]
    return code, records, captured.err.splitlines()


def test_every_instruction_on_every_image(model_dir, images, tmp_path, capsys):
    out = tmp_path / "out"
    instructions = ["Segment the pneumonia in the right lung.", "Segment the edema."]
    code, records, err = _predict(capsys, ["--model", str(model_dir), "--out", str(out), "-i", instructions[0], "-i",
                                           instructions[1], "--batch-size", "3", "--max-new-tokens", "4",
                                           str(images)])
    assert code == 0, err
    assert len(records) == 6
    assert {(Path(r["image"]).name, r["instruction"]) for r in records} == \
        {(name, text) for name in ("wide.png", "colour.jpg") for text in instructions} | \
        {("wide.png", text) for text in instructions}
    stems = {Path(r["overlay"]).name.split(".")[0] for r in records}
    assert stems == {"wide", "wide_2", "colour"}  # two files called wide.png do not overwrite each other
    for record in records:
        assert set(record) >= {"image", "instruction", "text", "empty", "masks", "mask", "overlay", "timings"}
        source = np.asarray(Image.open(record["image"]))
        mask = np.asarray(Image.open(record["mask"]))
        assert mask.shape == source.shape[:2] and set(np.unique(mask)) <= {0, 255}  # the original frame
        assert record["empty"] == (not mask.any())
        assert Image.open(record["overlay"]).mode == "RGB"
        assert Path(record["overlay"]).parent == out
    assert all("\r" not in line and "\x1b[" not in line for line in err)  # plain progress, not a tqdm bar
    assert any(line.startswith("predict: 6/6 pairs (100%)") for line in err)


def test_segment_only_writes_one_mask_per_seg(model_dir, images, tmp_path, capsys):
    code, records, _ = _predict(capsys, ["--model", str(model_dir), "--out", str(tmp_path / "o"), "--segment-only",
                                         "-i", "Segment the edema.", "-q", str(images / "wide.png")])
    assert code == 0 and len(records) == 1
    (record,) = records
    assert record["text"] == "[SEG]" and record["masks"] == [record["mask"]]


def test_bad_inputs_are_one_line_each_and_the_rest_runs(model_dir, images, tmp_path, capsys):
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    too_long = "Segment the opacity " + "in the right lung " * 400 + "."
    code, records, err = _predict(capsys, [
        "--model", str(model_dir), "--out", str(tmp_path / "o"), "-q", "--max-new-tokens", "2",
        "-i", "Segment the edema.", "-i", "   ", "-i", too_long,
        str(images / "wide.png"), str(images / "broken.png"), str(tmp_path / "missing.dcm")])
    assert code == 1
    assert [Path(r["image"]).name for r in records] == ["wide.png"]  # the good pair still ran
    problems = [line for line in err if line.startswith("rosalia predict:")]
    assert len(problems) == 4, err
    assert any("missing.dcm: no such file" in line for line in problems)
    assert any("instruction 2: empty instruction" in line for line in problems)
    assert any("instruction 3:" in line and "tokens" in line and "at most 512" in line for line in problems)
    assert any("broken.png" in line and "decode" in line for line in problems)


def test_a_folder_that_is_not_a_model_is_one_line(tmp_path, images, capsys):
    not_model = tmp_path / "llava"
    not_model.mkdir()
    (not_model / "config.json").write_text(json.dumps({"model_type": "llava"}))
    for folder, reason in ((not_model, "a llava model, not ROSALIA"), (tmp_path, "no config.json"),
                           (tmp_path / "typo", "no such folder")):
        code, records, err = _predict(capsys, ["--model", str(folder), "--out", str(tmp_path / "o"),
                                               str(images / "wide.png")])
        assert code == 1 and records == []
        assert len(err) == 1 and reason in err[0] and str(folder) in err[0], err


def test_outputs_follow_the_umask(model_dir, images, tmp_path, capsys):
    previous = os.umask(0o027)
    try:
        code, records, _ = _predict(capsys, ["--model", str(model_dir), "--out", str(tmp_path / "o"), "-q",
                                             "--segment-only", "-i", "Segment the edema.", str(images / "wide.png")])
    finally:
        os.umask(previous)
    assert code == 0
    for path in (records[0]["mask"], records[0]["overlay"]):
        assert os.stat(path).st_mode & 0o777 == 0o640
    assert not list((tmp_path / "o").glob(".*.tmp"))


def test_the_console_script_runs_offline(model_dir, images, tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "TRANSFORMERS_"))}
    result = subprocess.run([sys.executable, "-m", "rosalia_hf", "predict", "--model", str(model_dir), "--out",
                             str(tmp_path / "o"), "--segment-only", "-i", "Segment the edema.",
                             str(images / "wide.png")], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["instruction"] == "Segment the edema."
    assert "\r" not in result.stderr  # no hub or transformers progress bars in a log


def test_help_names_the_interface():
    text = cli.build_parser().format_help()
    assert "predict" in text and "serve" in text
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
