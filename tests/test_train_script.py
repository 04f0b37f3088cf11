"""examples/train_rosalia.py end to end on CPU: YAML + CLI overrides, JSON metric lines, PNG, adapters, card."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import datasets
from _training_helpers import tiny_images_dataset, write_dataset_folder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import train_rosalia  # noqa: E402


def test_yaml_gives_defaults_and_flags_override(tmp_path):
    script, args = train_rosalia.parse_arguments(
        ["--config", str(ROOT / "examples/configs/tiny_cpu.yaml"), "--dataset", "D", "--learning_rate", "0.5"]
    )
    assert script.dataset == "D" and script.train_config == "images"
    assert args.learning_rate == 0.5 and args.max_steps == 1000 and args.bf16 is False
    assert args.gradient_accumulation_steps == 1 and args.lora_r == 8


def test_the_demo_config_builds_the_better_conditioned_tiny_model():
    """tiny_cpu.yaml (the demo's): SAM 128 px / 8 px patches with a trained encoder, LM init 0.2, width 64;
    without the tiny_* fields the script builds the test model (SAM 64 px / 16 px, frozen encoder, init 0.02)."""
    script, args = train_rosalia.parse_arguments(["--config", str(ROOT / "examples/configs/tiny_cpu.yaml"),
                                                  "--dataset", "D"])
    model, processor = train_rosalia.load_model(script)
    sam = model.config.sam_config
    assert (processor.sam_image_size, sam.vision_config.patch_size, sam.prompt_encoder_config.image_embedding_size,
            model.config.freeze_sam_image_encoder) == (128, 8, 16, False)
    assert model.config.llava_config.text_config.initializer_range == 0.2 and model.config.text_hidden_size == 64
    assert args.bce_loss_weight is None and model.config.bce_loss_weight == 5.0  # the paper's loss
    plain, _ = train_rosalia.parse_arguments(["--dataset", "D", "--use_cpu", "true"])
    model, processor = train_rosalia.load_model(plain)
    assert (processor.sam_image_size, model.config.sam_config.vision_config.patch_size) == (64, 16)
    assert model.config.freeze_sam_image_encoder and model.config.llava_config.text_config.initializer_range == 0.02


def test_paper_config_keeps_the_paper_defaults():
    _, args = train_rosalia.parse_arguments(
        ["--config", str(ROOT / "examples/configs/rosalia_7b.yaml"), "--dataset", "D", "--use_cpu", "true"]
    )
    assert (args.num_train_epochs, args.learning_rate, args.adam_beta2, args.warmup_steps) == (15, 3e-4, 0.95, 100)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 256  # one process
    assert (args.lora_r, args.lora_alpha, args.lora_dropout) == (128, 256, 0.05)


def test_written_folder_loads_with_the_documented_features(tmp_path):
    folder = write_dataset_folder(tmp_path / "ils_small", 4, 2)
    loaded = datasets.load_dataset(folder, "images", split="train")
    assert loaded.features == tiny_images_dataset(1).features


def test_script_trains_and_leaves_metrics_curve_adapters_and_card(tmp_path, capsys):
    folder = write_dataset_folder(tmp_path / "ils_train", 8, 2)
    out = tmp_path / "run"
    result = train_rosalia.main(["--config", str(ROOT / "examples/configs/tiny_cpu.yaml"), "--dataset", folder,
                                 "--output_dir", str(out), "--max_steps", "2", "--eval_strategy", "no"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{\"step\"")]
    assert [line["step"] for line in lines] == [0, 2]
    assert set(lines[0]) == {"step", "giou", "ciou", "n_acc"} and lines == [result["before"], result["after"]]
    assert result["train_seconds"] > 0
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert (out / "adapters" / "adapter_config.json").is_file()
    card = (out / "merged" / "README.md").read_text()
    assert "gIoU" in card and "lora" in card and f"| after training | 2 | {lines[1]['giou']} |" in card
