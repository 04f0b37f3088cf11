"""examples/train_rosalia.py's arguments: HfArgumentParser reads the YAML (dicts, lists, bools), the command line
overrides it, --config is in --help; the validation split is `validation`, `validate` an alias, whichever exists."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _training_helpers import write_dataset_folder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import train_rosalia  # noqa: E402


def _yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_help_lists_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_rosalia.parse_arguments(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--config FILE.yaml" in out and "--learning_rate" in out and "--eval_split" in out


def test_dict_values_in_the_yaml_reach_the_arguments_as_dicts(tmp_path):
    config = _yaml(tmp_path, "use_cpu: true\nlr_scheduler_type: cosine_with_min_lr\n"
                             "lr_scheduler_kwargs: {min_lr: 1.0e-5}\nreport_to: [none]\n")
    _, args = train_rosalia.parse_arguments(["--config", config, "--dataset", "D"])
    assert args.lr_scheduler_kwargs == {"min_lr": 1e-5}
    assert args.lr_scheduler_type == "cosine_with_min_lr" and args.report_to == []  # the list [none]


def test_the_yaml_may_name_the_dataset_and_flags_still_override_it(tmp_path):
    config = _yaml(tmp_path, "dataset: FROM_YAML\nuse_cpu: true\nlearning_rate: 0.25\nsave_merged: false\n"
                             "per_device_train_batch_size: '4'\nglobal_train_batch_size: 16\n")
    script, args = train_rosalia.parse_arguments(["--config", config])
    assert script.dataset == "FROM_YAML" and script.save_merged is False
    assert args.learning_rate == 0.25 and args.per_device_train_batch_size == 4  # a YAML string is parsed as a flag
    assert args.gradient_accumulation_steps == 4
    script, args = train_rosalia.parse_arguments(["--config", config, "--dataset", "CLI", "--learning_rate", "0.5",
                                                  "--save_merged", "true", "--per_device_train_batch_size", "8"])
    assert (script.dataset, args.learning_rate, script.save_merged) == ("CLI", 0.5, True)
    assert args.gradient_accumulation_steps == 2  # derived from the merged values, not the YAML's alone


def test_a_flag_overrides_the_yaml_output_dir(tmp_path):
    config = _yaml(tmp_path, "use_cpu: true\noutput_dir: runs/from_yaml\n")
    out = str(tmp_path / "o")
    _, args = train_rosalia.parse_arguments(["--config", config, "--dataset", "D", "--output_dir", out])
    assert args.output_dir == out


def test_an_unknown_key_in_the_yaml_is_one_error_naming_it(tmp_path, capsys):
    config = _yaml(tmp_path, "use_cpu: true\nlearning_rat: 0.1\n")
    with pytest.raises(SystemExit) as exit_info:
        train_rosalia.parse_arguments(["--config", config, "--dataset", "D"])
    assert exit_info.value.code == 2
    assert "unknown fields learning_rat" in capsys.readouterr().err


def test_without_dataset_anywhere_the_parser_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_rosalia.parse_arguments(["--config", _yaml(tmp_path, "use_cpu: true\n")])
    assert "--dataset" in capsys.readouterr().err


def test_eval_split_defaults_to_validation_and_finds_the_folders_validate(tmp_path):
    folder = write_dataset_folder(tmp_path / "ils", 4, 2)  # its split is named `validate`
    script, _ = train_rosalia.parse_arguments(["--dataset", folder, "--use_cpu", "true"])
    assert script.eval_split == "validation"
    _, validation = train_rosalia.load_splits(script)
    assert script.eval_split == "validate" and len(validation) == 4


def test_validate_is_an_alias_of_validation(tmp_path):
    folder = Path(write_dataset_folder(tmp_path / "ils", 4, 2))
    card = folder / "README.md"
    card.write_text(card.read_text().replace("split: validate", "split: validation"))
    script, _ = train_rosalia.parse_arguments(["--dataset", str(folder), "--use_cpu", "true", "--eval_split",
                                               "validate"])
    _, validation = train_rosalia.load_splits(script)
    assert script.eval_split == "validation" and len(validation) == 4


def test_an_eval_split_the_folder_lacks_ends_in_one_line(tmp_path):
    folder = write_dataset_folder(tmp_path / "ils", 4, 2)
    with pytest.raises(SystemExit) as exit_info:
        train_rosalia.main(["--dataset", folder, "--use_cpu", "true", "--eval_split", "tset"])
    message = str(exit_info.value.code)
    assert message.startswith("train_rosalia.py: --split tset:") and "\n" not in message
