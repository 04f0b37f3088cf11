"""What a training run leaves for people: the loss curve PNG, the merged model's card and the adapters' card.

The cards are filled from code (``rosalia_hf/cards/*.md``, shipped with the package): the model started from
(``base_model`` when it has a Hub id), intended and out-of-scope use, the MIMIC-CXR data use agreement, and the
validation figures. No ``pipeline_tag``: there is no ``transformers.pipeline`` task behind this model, and the
Hub would offer a widget that cannot run it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CARDS = Path(__file__).resolve().parent / "cards"
TEMPLATE = CARDS / "rosalia.md"
ADAPTER_TEMPLATE = CARDS / "adapters.md"
LICENSE = {"license": "other", "license_name": "physionet-credentialed-health-data-license-1.5.0",
           "license_link": "https://physionet.org/content/mimic-cxr/view-license/2.1.0/"}
TAGS = ["medical", "chest-x-ray", "rosalia", "lisa", "instruction-guided-segmentation", "image-segmentation"]


def starting_point(model_name_or_path: str | None) -> tuple[str | None, str]:
    """``(base_model, description)`` of the model a run started from: a Hub id is its own ``base_model``; a local
    folder passes on the ``base_model`` of its own card, if it has one; None is the tiny random test model."""
    if model_name_or_path is None:
        return None, "a tiny random ROSALIA (`rosalia_hf.testing.tiny_rosalia`): a smoke-test model, not a model"
    folder = Path(model_name_or_path)
    if not folder.exists():
        return str(model_name_or_path), f"`{model_name_or_path}`"
    inherited = None
    if (folder / "README.md").is_file():
        from huggingface_hub import ModelCard

        try:
            inherited = ModelCard.load(folder / "README.md").data.base_model
        except (ValueError, OSError):
            inherited = None
    if isinstance(inherited, list):
        inherited = inherited[0] if inherited else None
    return inherited, f"the local model `{folder}`" + (f" (itself from `{inherited}`)" if inherited else "")


def plot_loss_curve(log_history: list[dict[str, Any]], path: str | Path) -> Path:
    """Total loss and its three parts against the optimiser step, from ``Trainer.state.log_history``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [entry for entry in log_history if "loss" in entry and "step" in entry]
    figure, axis = plt.subplots(figsize=(7, 4), dpi=120)
    for key, style in (("loss", "k-"), ("ce_loss", "C0--"), ("mask_bce_loss", "C1--"), ("mask_dice_loss", "C2--")):
        points = [(entry["step"], entry[key]) for entry in entries if key in entry]
        if points:
            axis.plot(*zip(*points, strict=True), style, label=key, linewidth=1.2)
    evals = [(e["step"], e["eval_giou"]) for e in log_history if "eval_giou" in e]
    if evals:
        twin = axis.twinx()
        twin.plot(*zip(*evals, strict=True), "C3o-", label="validation gIoU")
        twin.set_ylabel("validation gIoU")
        twin.set_ylim(0, 1)
        twin.legend(loc="upper center")
    axis.set_xlabel("optimiser step")
    axis.set_ylabel("weighted loss")
    axis.set_title("ROSALIA training loss")
    if axis.get_legend_handles_labels()[0]:  # a run too short to log a loss has nothing to label
        axis.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def render_model_card(path: str | Path, *, args, model_config, script: dict[str, Any], before: dict, after: dict,
                      num_train_pairs: int, num_eval_pairs: int) -> Path:
    """Writes the model card of a trained model from the template, the training arguments and the metrics."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    path = Path(path)
    name = f"ROSALIA ({Path(script['model_name_or_path'] or 'tiny-random').name})"
    base_model, base_description = starting_point(script.get("model_name_or_path"))
    results = [EvalResult(task_type="image-segmentation", dataset_type="mimic-ils", dataset_name="MIMIC-ILS",
                          dataset_split=script["eval_split"], metric_type=key, metric_value=after[key])
               for key in ("giou", "ciou", "n_acc") if isinstance(after.get(key), (int, float))]
    data = ModelCardData(library_name="transformers", tags=[*TAGS, "lora"], datasets=["mimic-ils"], model_name=name,
                         eval_results=results or None, base_model=base_model, **LICENSE)
    card = ModelCard.from_template(
        data, template_path=str(TEMPLATE), model_name=name, model_path=str(path.parent), dataset=script["dataset"],
        base_description=base_description,
        num_train_pairs=num_train_pairs, num_eval_pairs=num_eval_pairs, before=before, after=after,
        ce_weight=model_config.ce_loss_weight, bce_weight=model_config.bce_loss_weight,
        dice_weight=model_config.dice_loss_weight, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout, learning_rate=args.learning_rate, adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        scheduler=str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        max_grad_norm=args.max_grad_norm, steps=after.get("step"), per_device_batch=args.per_device_train_batch_size,
        accumulation=args.gradient_accumulation_steps,
    )
    card.save(str(path))
    return path


def render_adapter_card(path: str | Path, *, args, script: dict[str, Any], after: dict, merged_path: str | Path,
                        lora_config=None) -> Path:
    """The adapters folder's card (in place of peft's empty template): what the adapters apply to, how to load
    them, the validation figures, the DUA."""
    from huggingface_hub import ModelCard, ModelCardData

    path = Path(path)
    name = f"ROSALIA ({Path(script['model_name_or_path'] or 'tiny-random').name})"
    base_model, base_description = starting_point(script.get("model_name_or_path"))
    targets = sorted(getattr(lora_config, "target_modules", None) or []) or ["attention and MLP projections"]
    saved = sorted(getattr(lora_config, "modules_to_save", None) or []) or ["none"]
    data = ModelCardData(library_name="peft", tags=[*TAGS, "lora"], datasets=["mimic-ils"], model_name=name,
                         base_model=base_model, **LICENSE)
    card = ModelCard.from_template(
        data, template_path=str(ADAPTER_TEMPLATE), model_name=name, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        target_modules=", ".join(f"`{m}`" for m in targets) if isinstance(targets, list) else f"`{targets}`",
        modules_to_save=", ".join(f"`{m}`" for m in saved), base_description=base_description,
        base_path=script.get("model_name_or_path") or "<the tiny model's folder>", adapters_path=str(path.parent),
        merged_path=str(merged_path), after=after, dataset=script["dataset"])
    card.save(str(path))
    return path
