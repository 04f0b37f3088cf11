"""Batched inference for ROSALIA: generate the answer (or teacher-force ``[SEG]``), then decode the masks.

:class:`RosaliaPredictor` wraps a model and its processor and owns no weights (as SAM's ``SamPredictor`` and the
``transformers`` pipelines): the model keeps ``forward`` and ``generate``, the processor the pre- and post-processing,
the predictor the loop between them. Device and dtype follow the model (``dtype`` casts it first).
As LISA's ``evaluate``: greedy generation (512 new tokens at most by default), then one mask per generated
``[SEG]``, from the hidden state that predicted it over the prompt and the generated answer.

The only departure from the reference's decoding: ``<image>`` is never generated. LISA has no such token (its image
placeholder is the id -200), so with it suppressed the next-token distribution is the reference's over its own
vocabulary; a generated ``<image>`` would otherwise be read as a second image. ``<im_start>``/``<im_end>`` are
ordinary trained tokens in LISA checkpoints and are not suppressed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from rosalia_hf.errors import NotAModelError, RosaliaError
from rosalia_hf.images import as_image_array

if TYPE_CHECKING:  # annotations only: the predictor works with any model and processor of this interface
    from PIL import Image

    from rosalia_hf.modeling_rosalia import RosaliaForSegmentation
    from rosalia_hf.processing_rosalia import RosaliaProcessor

DEFAULT_MAX_NEW_TOKENS = 512  # LISA chat.py


def run_predict(model: RosaliaForSegmentation, processor: RosaliaProcessor, images: Sequence,
                instructions: Sequence[str], *,
                image_index: Sequence[int] | None = None, segment_only: bool = False,
                max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                dtype: torch.dtype | None = None, generate_kwargs: dict | None = None,
                history: Sequence[Sequence[tuple[str, str]]] | None = None) -> list[dict]:
    """See :meth:`RosaliaPredictor.predict`; one result dict per instruction, in order."""
    if image_index is None and len(images) != len(instructions):
        raise ValueError(f"{len(instructions)} instructions for {len(images)} images: pass image_index")
    if dtype is not None:
        model = model.to(dtype)
    images = [as_image_array(image) for image in images]
    answers = [processor.seg_token] * len(instructions) if segment_only else None
    batch = processor(images, instructions, answers=answers, image_index=image_index, add_eos=False,
                      padding_side="left", history=history)
    batch.pop("labels", None)
    max_new_tokens = fit_to_context(model, batch["attention_mask"], max_new_tokens, segment_only)
    # a history's answers hold [SEG] tokens too: the masks of this turn are those after them
    earlier = (batch["input_ids"] == processor.seg_token_id).sum(dim=1).tolist()
    if segment_only:
        earlier = [count - 1 for count in earlier]
    return predict_batch(model, processor, batch, segment_only=segment_only, max_new_tokens=max_new_tokens,
                         generate_kwargs=generate_kwargs, skip_masks=earlier if history is not None else None)


def context_limit(model) -> int | None:
    """The language model's positions (prompt with the image tokens, plus the answer), or None when unbounded."""
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


def fit_to_context(model, attention_mask: torch.Tensor, max_new_tokens: int, segment_only: bool) -> int:
    """``max_new_tokens`` capped to the language model's positions; a prompt that does not fit is refused with the
    limit named (a 50,000-token instruction would otherwise run for minutes past what the model was trained on)."""
    limit = context_limit(model)
    if not limit:
        return max_new_tokens
    lengths = attention_mask.sum(dim=1).tolist()
    longest = int(max(lengths)) if lengths else 0
    room = limit - longest  # positions left for the answer
    if room < (0 if segment_only else 1):
        raise ValueError(f"instruction {lengths.index(longest)} is {longest} tokens with the image; the model takes "
                         f"at most {limit} positions: shorten it")
    return max_new_tokens if segment_only else min(max_new_tokens, room)


@torch.no_grad()
def predict_batch(model, processor, batch, *, segment_only: bool = False,
                  max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, generate_kwargs: dict | None = None,
                  skip_masks: Sequence[int] | None = None) -> list[dict]:
    """``run_predict`` from a ready processor batch (left-padded; its pixel values may come from elsewhere, e.g.
    a reference implementation's): the generation prompts, or with ``segment_only`` the ``[SEG]`` answers.
    ``skip_masks[i]``: the leading ``[SEG]`` masks of row ``i`` that belong to its history, not to its answer."""
    device = next(model.parameters()).device
    if segment_only:
        answers = [[processor.seg_token_id]] * batch["input_ids"].shape[0]
    else:
        batch, answers = _generate(model, processor, batch.to(device), max_new_tokens, generate_kwargs or {})
    batch = batch.to(device)
    out = model(**batch)
    return _collect(batch, out, answers, [processor.decode_answer(ids) for ids in answers], skip_masks)


def _generate(model, processor, prompt, max_new_tokens: int, generate_kwargs: dict):
    """Greedy generation with LLaVA; returns the prompt+answer batch to re-encode, and each row's new ids (up to
    and including ``</s>``)."""
    rows = prompt["image_index"]
    pixel = prompt["pixel_values"][rows].to(next(model.parameters()).dtype)
    tok = processor.tokenizer
    options = {"do_sample": False, "num_beams": 1, "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
               "suppress_tokens": [processor.image_token_id], **generate_kwargs}
    generated = model.llava.generate(input_ids=prompt["input_ids"], attention_mask=prompt["attention_mask"],
                                     pixel_values=pixel, max_new_tokens=max_new_tokens, **options)
    new = generated[:, prompt["input_ids"].shape[1]:]
    keep = _until_eos(new, tok.eos_token_id)
    answers = [ids[k].tolist() for ids, k in zip(new, keep, strict=True)]
    batch = dict(prompt)
    batch["input_ids"] = torch.cat([prompt["input_ids"], torch.where(keep, new, tok.pad_token_id)], dim=1)
    batch["attention_mask"] = torch.cat([prompt["attention_mask"], keep.long()], dim=1)
    return type(prompt)(batch), answers


def _until_eos(new: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Bool mask of generated tokens up to and including the first eos of each row."""
    is_eos = (new == eos_id).long()
    before = is_eos.cumsum(1) - is_eos  # eos seen strictly before this position
    return before == 0


def _collect(batch, out, answers: list[list[int]], texts: list[str], skip_masks=None) -> list[dict]:
    """Per row: ``masks`` (one ``HxW`` bool per ``[SEG]``, in answer order), ``mask_logits`` (their float maps),
    ``mask`` (the first, or all False), ``text``, ``answer_ids`` (the generated ids) and ``empty``."""
    sizes = batch["original_sizes"].tolist()
    image_index = batch["image_index"].tolist()
    logits_of_row: dict[int, list] = {}
    if out.pred_masks is not None:
        for k, row in enumerate(out.seg_row_index.tolist()):
            logits_of_row.setdefault(row, []).append(out.pred_masks[k].detach().float().cpu())
    results = []
    for row, (ids, text) in enumerate(zip(answers, texts, strict=True)):
        height, width = sizes[image_index[row]]
        logits = logits_of_row.get(row, [])[skip_masks[row] if skip_masks else 0:]
        masks = [(m > 0).numpy() for m in logits]
        mask = masks[0] if masks else np.zeros((height, width), dtype=bool)
        results.append({"mask": mask, "masks": masks, "mask_logits": [m.numpy() for m in logits], "text": text,
                        "answer_ids": ids,
                        "empty": not bool(mask.any())})
    return results


def check_model_folder(path: str | Path) -> None:
    """One :class:`NotAModelError` line unless ``path`` is a folder holding a saved ROSALIA model (its
    ``config.json`` says ``"model_type": "rosalia"`` and a weight file is beside it)."""
    folder = Path(path)
    if not folder.is_dir():
        raise NotAModelError(f"{folder}: no such folder")
    config = folder / "config.json"
    if not config.is_file():
        raise NotAModelError(f"{folder}: not a ROSALIA model folder (no config.json)")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError, UnicodeDecodeError):
        raise NotAModelError(f"{config}: not a JSON model config") from None
    if model_type != "rosalia":
        hint = " (a LISA/ROSALIA training checkpoint converts with python -m rosalia_hf.convert_lisa)" \
            if model_type in ("llava", "llama", "LISA") else ""
        raise NotAModelError(f"{folder}: a {model_type or 'untyped'} model, not ROSALIA{hint}")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise NotAModelError(f"{folder}: ROSALIA config but no weights (*.safetensors)")


def load_model_and_processor(model_path: str | Path, processor_path: str | Path | None = None,
                             device: str | None = None, dtype: str | torch.dtype = "float32"):
    """``(model, processor)`` from local folders, on ``device`` (default cuda when there is one), in eval mode.
    A folder that is not a ROSALIA model, or that cannot be loaded, is one :class:`RosaliaError` line."""
    from rosalia_hf.modeling_rosalia import RosaliaForSegmentation
    from rosalia_hf.processing_rosalia import RosaliaProcessor

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if Path(model_path).exists():
        check_model_folder(model_path)
    source = model_path
    try:
        model = RosaliaForSegmentation.from_pretrained(model_path, dtype=dtype).to(device).eval()
        source = processor_path or model_path
        processor = RosaliaProcessor.from_pretrained(source)
    except OSError as error:  # a folder without the files, or (downloads allowed) a hub id that cannot be fetched
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RosaliaError(f"cannot load {source}: {reason}") from None
    return model, processor


class RosaliaPredictor:
    """``predict`` over a ``RosaliaForSegmentation`` and its ``RosaliaProcessor``; holds references, no weights."""

    def __init__(self, model: RosaliaForSegmentation, processor: RosaliaProcessor) -> None:
        self.model = model
        self.processor = processor

    @classmethod
    def from_pretrained(cls, model_path: str | Path, processor_path: str | Path | None = None, *,
                        device: str | None = None, dtype: str | torch.dtype = "float32") -> RosaliaPredictor:
        """A predictor over :func:`load_model_and_processor` (local folders; ``device`` default cuda if any)."""
        return cls(*load_model_and_processor(model_path, processor_path, device, dtype))

    def check_instructions(self, instructions: Sequence[str], segment_only: bool = False
                           ) -> tuple[list[tuple[int, str]], list[str]]:
        """The instructions that can run, as ``(number, text)`` (1-based, whitespace runs folded), and one
        ``"instruction N: reason"`` line for each that cannot (:meth:`instruction_problem`)."""
        runnable, problems = [], []
        for number, text in enumerate(instructions, start=1):
            reason = self.instruction_problem(text, segment_only)
            if reason:
                problems.append(f"instruction {number}: {reason}")
            else:
                runnable.append((number, " ".join(text.split())))
        return runnable, problems

    def instruction_problem(self, instruction: str, segment_only: bool = False) -> str | None:
        """Why ``instruction`` cannot be run (empty, or too long for the model's context with the image and an
        answer), as one line; None when it can."""
        if not isinstance(instruction, str) or not instruction.strip():
            return "empty instruction"
        limit = context_limit(self.model)
        if not limit:
            return None
        answer = self.processor.seg_token if segment_only else None
        length = len(self.processor.encode_conversation(instruction, answer, add_eos=False)[0])
        if length > limit - (0 if segment_only else 1):  # with segment_only the [SEG] answer is in it
            return (f"instruction of {len(instruction)} characters is {length} tokens with the image; the model "
                    f"takes at most {limit}: shorten it")
        return None

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray | Image.Image], instructions: Sequence[str], *,
                image_index: Sequence[int] | None = None,
                segment_only: bool = False, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                dtype: torch.dtype | None = None, generate_kwargs: dict | None = None,
                history: Sequence[Sequence[tuple[str, str]]] | None = None) -> list[dict]:
        """Segments ``images[image_index[i]]`` according to ``instructions[i]``.

        ``images``: ``HxW`` or ``HxWx3`` arrays of any integer or float dtype (wide ones min-max scaled), PIL images
        of any mode, or file paths (DICOM, PNG/JPEG/TIFF: :func:`rosalia_hf.images.read_image`); one per
        instruction, or unique images with
        ``image_index`` naming each instruction's image (the image towers then run once per image). Returns, per
        instruction, ``{"mask": HxW bool, "masks": [HxW bool, ...], "mask_logits": [HxW float, ...], "text": str,
        "answer_ids": [int, ...], "empty": bool}``, masks in the original frame. ``masks`` holds one mask per
        ``[SEG]`` of the answer, in order (as LISA's ``evaluate``); ``mask`` is the first one, or all False for an
        answer without ``[SEG]``; ``empty`` means no pixel of ``mask`` is positive (the paper's N-Acc criterion).
        Generation is greedy with at most ``max_new_tokens`` (512, as LISA's chat). ``segment_only``
        teacher-forces ``"[SEG]"`` as the answer and skips text generation. ``dtype`` casts the model in place
        first (e.g. ``torch.bfloat16``); ``generate_kwargs`` go to ``generate``. ``history[i]``: the earlier
        ``(instruction, answer)`` turns of instruction ``i``'s conversation (multi-turn; the masks returned are those
        of this turn's answer only).
        """
        return run_predict(self.model, self.processor, images, instructions, image_index=image_index,
                           segment_only=segment_only, max_new_tokens=max_new_tokens, dtype=dtype,
                           generate_kwargs=generate_kwargs, history=history)


__all__ = ["RosaliaPredictor", "run_predict", "predict_batch", "load_model_and_processor", "check_model_folder",
           "DEFAULT_MAX_NEW_TOKENS"]
