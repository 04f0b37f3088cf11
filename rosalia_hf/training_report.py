"""What a training run leaves for people: the loss curve PNG and the model card (``model_cards/rosalia.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "rosalia.md"


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
    results = [EvalResult(task_type="image-segmentation", dataset_type="mimic-ils", dataset_name="MIMIC-ILS",
                          dataset_split=script["eval_split"], metric_type=key, metric_value=after[key])
               for key in ("giou", "ciou", "n_acc") if key in after]
    data = ModelCardData(library_name="transformers", license="other", tags=["medical", "chest-x-ray", "rosalia",
                         "instruction-guided-segmentation", "lora"], datasets=["mimic-ils"], model_name=name,
                         eval_results=results or None, pipeline_tag="image-segmentation")
    card = ModelCard.from_template(
        data, template_path=str(TEMPLATE), model_name=name, model_path=str(path.parent), dataset=script["dataset"],
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
