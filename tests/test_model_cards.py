"""The cards a training run writes: filled from code, honest metadata (no pipeline_tag, base_model when known)."""

from __future__ import annotations

from types import SimpleNamespace

from huggingface_hub import ModelCard

from rosalia_hf.training_report import render_adapter_card, render_model_card, starting_point

ARGS = SimpleNamespace(lora_r=8, lora_alpha=16, lora_dropout=0.0, learning_rate=3e-3, adam_beta1=0.9, adam_beta2=0.999,
                       weight_decay=0.0, warmup_steps=20, lr_scheduler_type="linear", max_grad_norm=1.0,
                       per_device_train_batch_size=8, gradient_accumulation_steps=1)
CONFIG = SimpleNamespace(ce_loss_weight=0.5, bce_loss_weight=5.0, dice_loss_weight=1.0)
BEFORE = {"step": 0, "giou": 0.01, "ciou": 0.02, "n_acc": 0.5}
AFTER = {"step": 300, "giou": 0.41, "ciou": 0.45, "n_acc": 0.9}


def _card(tmp_path, model_name_or_path):
    script = {"model_name_or_path": model_name_or_path, "dataset": "/data/mimic_ils", "eval_split": "validation"}
    path = render_model_card(tmp_path / "merged" / "README.md", args=ARGS, model_config=CONFIG, script=script,
                             before=BEFORE, after=AFTER, num_train_pairs=1000, num_eval_pairs=100)
    return ModelCard.load(path), script


def test_model_card_metadata_and_sections(tmp_path):
    card, _ = _card(tmp_path, "someone/rosalia-7b")
    data = card.data.to_dict()
    assert "pipeline_tag" not in data  # no transformers pipeline behind the model
    assert data["base_model"] == "someone/rosalia-7b"
    assert data["license"] == "other" and "physionet" in data["license_name"]
    metrics = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert metrics == {"giou": 0.41, "ciou": 0.45, "n_acc": 0.9}
    for heading in ("## Uses", "### Direct use", "### Out-of-scope use", "## Evaluation",
                    "## Bias, risks and limitations", "## Data use agreement"):
        assert heading in card.text, heading
    assert "| after training | 300 | 0.41 | 0.45 | 0.9 |" in card.text
    assert "rosalia predict --model" in card.text and "rosalia serve --model" in card.text
    assert "{{" not in card.content


def test_base_model_from_a_local_folder_and_the_tiny_model(tmp_path):
    start = tmp_path / "converted"
    start.mkdir()
    (start / "README.md").write_text("---\nbase_model: someone/lisa-7b\n---\n# converted\n")
    assert starting_point(str(start))[0] == "someone/lisa-7b"
    card, _ = _card(tmp_path, str(start))
    assert card.data.base_model == "someone/lisa-7b" and str(start) in card.text
    bare = tmp_path / "bare"
    bare.mkdir()
    assert starting_point(str(bare))[0] is None
    tiny, _ = _card(tmp_path, None)
    assert tiny.data.base_model is None and "smoke-test model" in tiny.text


def test_adapter_card_replaces_peft_template(tmp_path):
    script = {"model_name_or_path": "someone/rosalia-7b", "dataset": "/data/mimic_ils"}
    lora = SimpleNamespace(target_modules={"q_proj", "v_proj"}, modules_to_save=["text_hidden_fcs"])
    path = render_adapter_card(tmp_path / "adapters" / "README.md", args=ARGS, script=script, after=AFTER,
                               merged_path=tmp_path / "merged", lora_config=lora)
    card = ModelCard.load(path)
    assert card.data.library_name == "peft" and card.data.base_model == "someone/rosalia-7b"
    assert "pipeline_tag" not in card.data.to_dict()
    assert "`q_proj`, `v_proj`" in card.text and "`text_hidden_fcs`" in card.text
    assert "PeftModel.from_pretrained" in card.text and "gIoU 0.41" in card.text
    assert "[More Information Needed]" not in card.text and "{{" not in card.content


def test_a_training_run_writes_both_cards(tmp_path, capsys):
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "tests"))
    sys.path.insert(0, str(root / "examples"))
    import train_rosalia
    from _training_helpers import write_dataset_folder

    folder = write_dataset_folder(tmp_path / "ils", 8, 2)
    out = tmp_path / "run"
    train_rosalia.main(["--dataset", folder, "--output_dir", str(out), "--max_steps", "1", "--eval_strategy", "no",
                        "--use_cpu", "true", "--per_device_train_batch_size", "2", "--global_train_batch_size", "2",
                        "--eval_max_samples", "4", "--report_to", "none", "--save_strategy", "no"])
    capsys.readouterr()
    adapters = ModelCard.load(out / "adapters" / "README.md")
    assert adapters.data.library_name == "peft" and "[More Information Needed]" not in adapters.text
    assert "PeftModel.from_pretrained" in adapters.text and "LoRA r=" in adapters.text
    merged = ModelCard.load(out / "merged" / "README.md")
    assert "pipeline_tag" not in merged.data.to_dict() and "## Data use agreement" in merged.text
