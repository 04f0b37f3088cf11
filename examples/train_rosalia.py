"""Train ROSALIA on a built MIMIC-ILS folder.

    # CPU, tiny random model, a few minutes:
    python examples/train_rosalia.py --config examples/configs/tiny_cpu.yaml --dataset demo_out/mimic_ils
    # one or many GPUs / nodes (DDP or DeepSpeed ZeRO-2):
    accelerate launch --config_file examples/configs/accelerate_deepspeed_zero2.yaml examples/train_rosalia.py \
        --config examples/configs/rosalia_7b.yaml --dataset /data/mimic_ils
    torchrun --nproc_per_node 8 examples/train_rosalia.py --config examples/configs/rosalia_7b.yaml --dataset DIR

Every ``RosaliaTrainingArguments`` / ``ScriptArguments`` field can be set in the YAML file and overridden on the
command line (``--learning_rate 1e-4``). Prints one JSON line of validation metrics before training and one after,
writes the loss curve PNG, the LoRA adapters, the merged model and its model card under ``output_dir``.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from rosalia_hf.trainer_config import RosaliaTrainingArguments


@dataclass
class ScriptArguments:
    dataset: str = field(metadata={"help": "A folder written by `mimic-ils build` (or `import-release`)."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A RosaliaForSegmentation folder (e.g. a converted LISA/ROSALIA "
                                        "checkpoint); None trains rosalia_hf.testing.tiny_rosalia()."})
    train_config: str = field(default="images", metadata={"help": "Dataset configuration to train on: images|pairs."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(default="validate",
                            metadata={"help": "Split of the `pairs` configuration to validate on."})
    save_merged: bool = field(default=True, metadata={"help": "Also save the model with LoRA merged."})
    tiny_seed: int = field(default=0, metadata={"help": "Seed of tiny_rosalia() when no model is given."})


def parse_arguments(argv: list[str]) -> tuple[ScriptArguments, RosaliaTrainingArguments]:
    """``--config FILE.yaml`` gives defaults; every other flag overrides them."""
    config_argv: list[str] = []
    if "--config" in argv:
        at = argv.index("--config")
        config = yaml.safe_load(Path(argv[at + 1]).read_text()) or {}
        argv = argv[:at] + argv[at + 2:]
        for key, value in config.items():
            values = value if isinstance(value, list) else [value]
            config_argv += [f"--{key}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
    parser = HfArgumentParser((ScriptArguments, RosaliaTrainingArguments))
    return parser.parse_args_into_dataclasses(config_argv + argv)


def load_model(script: ScriptArguments):
    if script.model_name_or_path is None:
        from rosalia_hf.testing import tiny_rosalia

        model, processor = tiny_rosalia(seed=script.tiny_seed)
        return model.train(), processor
    from rosalia_hf import RosaliaForSegmentation, RosaliaProcessor

    return (RosaliaForSegmentation.from_pretrained(script.model_name_or_path),
            RosaliaProcessor.from_pretrained(script.model_name_or_path))


def main(argv: list[str] | None = None) -> dict:
    import datasets

    from rosalia_hf.trainer import RosaliaTrainer
    from rosalia_hf.training_report import plot_loss_curve, render_model_card

    script, args = parse_arguments(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO if args.process_index == 0 else logging.WARNING)
    train = datasets.load_dataset(script.dataset, script.train_config, split=script.train_split)
    validate = datasets.load_dataset(script.dataset, "pairs", split=script.eval_split)
    model, processor = load_model(script)
    trainer = RosaliaTrainer(model, args, processor, train_dataset=train, eval_dataset=validate)

    before = {"step": 0, **_short(trainer.evaluate())}
    _emit(trainer, before)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    after = {"step": trainer.state.global_step, **_short(trainer.evaluate())}
    _emit(trainer, after)

    if trainer.is_world_process_zero():
        output = Path(args.output_dir)
        plot_loss_curve(trainer.state.log_history, output / "loss_curve.png")
        trainer.save_adapters(output / "adapters")
        if script.save_merged:
            merged = trainer.save_merged(output / "merged")
            render_model_card(merged / "README.md", args=args, model_config=model.config, script=vars(script),
                              before=before, after=after, num_train_pairs=len(trainer.train_dataset),
                              num_eval_pairs=len(validate))
    return {"before": before, "after": after}


def _short(metrics: dict) -> dict:
    return {key.removeprefix("eval_"): round(value, 4) for key, value in metrics.items()}


def _emit(trainer, record: dict) -> None:
    if trainer.is_world_process_zero():
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
