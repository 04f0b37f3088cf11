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

import argparse
import dataclasses
import json
import logging
import sys
import time
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
    train_config: str = field(default="images", metadata={
        "help": "Dataset configuration to train on: images|pairs|conversations (multi-turn, one mask per [SEG])."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(default="validation", metadata={
        "help": "Split of the `pairs` configuration to validate on; `validation` and `validate` name the same split, "
                "whichever of the two the folder has."})
    save_merged: bool = field(default=True, metadata={"help": "Also save the model with LoRA merged."})
    tiny_seed: int = field(default=0, metadata={"help": "Seed of tiny_rosalia() when no model is given."})
    tiny_sam_image_size: int | None = field(default=None, metadata={
        "help": "SAM input side of tiny_rosalia() when no model is given (None: its default, 64)."})
    tiny_sam_patch_size: int | None = field(default=None, metadata={
        "help": "SAM patch side of tiny_rosalia(); the image embedding is (side / patch) squared (None: 16)."})
    tiny_train_sam_image_encoder: bool = field(default=False, metadata={
        "help": "Train tiny_rosalia()'s (random) SAM image encoder fully instead of freezing it: a random frozen "
                "encoder gives the decoder little to segment from. Real checkpoints keep SAM's encoder frozen."})
    tiny_hidden: int | None = field(default=None, metadata={
        "help": "Width of every tower of tiny_rosalia() (None: its default, 32)."})
    tiny_text_initializer_range: float | None = field(default=None, metadata={
        "help": "Std of tiny_rosalia()'s random language-model weights (None: 0.02; see rosalia_hf.testing)."})


CONFIG_HELP = ("YAML file of ScriptArguments / RosaliaTrainingArguments fields (dicts and lists allowed); the flags "
               "given on the command line override its values.")


def argument_parser() -> HfArgumentParser:
    """``HfArgumentParser`` over both dataclasses, with ``--config`` (shown in ``--help``)."""
    parser = HfArgumentParser((ScriptArguments, RosaliaTrainingArguments), description=__doc__.splitlines()[0])
    parser.add_argument("--config", metavar="FILE.yaml", help=CONFIG_HELP)
    return parser


def parse_arguments(argv: list[str]) -> tuple[ScriptArguments, RosaliaTrainingArguments]:
    """``--config FILE.yaml`` gives the defaults, every other flag overrides them, and ``HfArgumentParser`` builds
    both dataclasses once from the merge.

    The YAML's values become the parser's defaults (keys checked against the dataclass fields, as
    ``HfArgumentParser.parse_yaml_file`` checks them): a string is then parsed like the flag's value, anything else
    (a dict such as ``lr_scheduler_kwargs`` or ``deepspeed``, a list, a bool, a number) is taken as it is. Only the
    keys the file names are set, so that fields derived from others (``logging_dir`` from ``output_dir``, the
    accumulation steps from ``global_train_batch_size``) follow the command line."""
    parser = argument_parser()
    config = _config_path(argv)
    if config is not None:
        values = _read_config(parser, config)
        parser.set_defaults(**values)
        for action in parser._actions:  # a field the file gives is no longer required on the command line
            if action.dest in values:
                action.required = False
    script, args, _ = parser.parse_args_into_dataclasses(argv)
    return script, args


def _config_path(argv: list[str]) -> Path | None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    config = pre.parse_known_args(argv)[0].config
    return Path(config) if config else None


def _read_config(parser: HfArgumentParser, path: Path) -> dict:
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        parser.error(f"--config {path}: {str(error).splitlines()[0]}")
    if not isinstance(values, dict):
        parser.error(f"--config {path}: expected a mapping of field names to values, got {type(values).__name__}")
    known = {f.name for dtype in parser.dataclass_types for f in dataclasses.fields(dtype) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        parser.error(f"--config {path}: unknown fields {', '.join(unknown)}")
    return values


def load_splits(script: ScriptArguments):
    """``(train, validation)``: the training split of ``script.train_config`` and the evaluation split of ``pairs``,
    the latter named as the folder names it (``script.eval_split`` is updated to that name)."""
    import datasets

    from rosalia_hf.evaluation_cli import resolve_split

    script.eval_split = resolve_split(script.dataset, script.eval_split)
    train = datasets.load_dataset(script.dataset, script.train_config, split=script.train_split)
    validation = datasets.load_dataset(script.dataset, "pairs", split=script.eval_split)
    return train, validation


def load_model(script: ScriptArguments):
    if script.model_name_or_path is None:
        from rosalia_hf.testing import tiny_rosalia

        given = (("sam_image_size", script.tiny_sam_image_size), ("sam_patch_size", script.tiny_sam_patch_size),
                 ("text_initializer_range", script.tiny_text_initializer_range), ("hidden", script.tiny_hidden))
        shape = {key: value for key, value in given if value is not None}
        model, processor = tiny_rosalia(seed=script.tiny_seed, freeze_sam_image_encoder=not
                                        script.tiny_train_sam_image_encoder, **shape)
        return model.train(), processor
    from rosalia_hf import RosaliaForSegmentation, RosaliaProcessor

    return (RosaliaForSegmentation.from_pretrained(script.model_name_or_path),
            RosaliaProcessor.from_pretrained(script.model_name_or_path))


def main(argv: list[str] | None = None) -> dict:
    """Trains as the arguments say; returns ``{"before", "after", "train_seconds"}`` (validation figures before and
    after training, wall seconds of ``trainer.train``)."""
    from rosalia_hf.errors import RosaliaError
    from rosalia_hf.trainer import RosaliaTrainer
    from rosalia_hf.training_report import plot_loss_curve, render_adapter_card, render_model_card

    script, args = parse_arguments(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO if args.process_index == 0 else logging.WARNING)
    try:
        train, validate = load_splits(script)
    except RosaliaError as error:  # e.g. an --eval_split the folder does not have: one line, no traceback
        sys.exit(f"train_rosalia.py: {error}")
    model, processor = load_model(script)
    trainer = RosaliaTrainer(model, args, processor, train_dataset=train, eval_dataset=validate)

    before = {"step": 0, **_short(trainer.evaluate())}
    _emit(trainer, before)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    train_seconds = time.perf_counter() - started
    after = {"step": trainer.state.global_step, **_short(trainer.evaluate())}
    _emit(trainer, after)

    if trainer.is_world_process_zero():
        output = Path(args.output_dir)
        plot_loss_curve(trainer.state.log_history, output / "loss_curve.png")
        adapters = trainer.save_adapters(output / "adapters")
        peft_config = getattr(trainer.accelerator.unwrap_model(trainer.model), "peft_config", {}).get("default")
        render_adapter_card(adapters / "README.md", args=args, script=vars(script), after=after,
                            merged_path=output / "merged", lora_config=peft_config)  # in place of peft's template
        if script.save_merged:
            merged = trainer.save_merged(output / "merged")
            pairs = getattr(trainer.train_dataset, "num_pairs", len(trainer.train_dataset))  # conversations: turns
            render_model_card(merged / "README.md", args=args, model_config=model.config, script=vars(script),
                              before=before, after=after, num_train_pairs=pairs, num_eval_pairs=len(validate))
    return {"before": before, "after": after, "train_seconds": round(train_seconds, 1),
            "losses": [entry for entry in trainer.state.log_history if "loss" in entry]}


def _short(metrics: dict) -> dict:
    return {key.removeprefix("eval_"): round(value, 4) for key, value in metrics.items()}


def _emit(trainer, record: dict) -> None:
    if trainer.is_world_process_zero():
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
