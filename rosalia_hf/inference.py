"""Batched inference for ROSALIA: generate the answer (or teacher-force ``[SEG]``), then decode the mask.

Called through [`RosaliaForSegmentation.predict`]. Device and dtype follow the model (``dtype`` casts it first).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def run_predict(model, processor, images: Sequence, instructions: Sequence[str], *,
                image_index: Sequence[int] | None = None, segment_only: bool = False, max_new_tokens: int = 32,
                dtype: torch.dtype | None = None, generate_kwargs: dict | None = None) -> list[dict]:
    """See ``RosaliaForSegmentation.predict``; one result dict per instruction, in order."""
    if image_index is None and len(images) != len(instructions):
        raise ValueError(f"{len(instructions)} instructions for {len(images)} images: pass image_index")
    if dtype is not None:
        model = model.to(dtype)
    device = next(model.parameters()).device
    if segment_only:
        batch = processor(images, instructions, answers=[processor.seg_token] * len(instructions),
                          image_index=image_index, add_eos=False, padding_side="left")
        batch.pop("labels")
        texts = [processor.seg_token] * len(instructions)
    else:
        prompt = processor(images, instructions, image_index=image_index, padding_side="left")
        batch, texts = _generate(model, processor, prompt.to(device), max_new_tokens, generate_kwargs or {})
    batch = batch.to(device)
    out = model(**batch)
    return _collect(processor, batch, out, texts)


def _generate(model, processor, prompt, max_new_tokens: int, generate_kwargs: dict):
    """Greedy generation with LLaVA; returns the prompt+answer batch to re-encode, and the answer texts."""
    rows = prompt["image_index"]
    pixel = prompt["pixel_values"][rows].to(next(model.parameters()).dtype)
    tok = processor.tokenizer
    options = {"do_sample": False, "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
               **generate_kwargs}
    generated = model.llava.generate(input_ids=prompt["input_ids"], attention_mask=prompt["attention_mask"],
                                     pixel_values=pixel, max_new_tokens=max_new_tokens, **options)
    new = generated[:, prompt["input_ids"].shape[1]:]
    keep = _until_eos(new, tok.eos_token_id)
    texts = [tok.decode(ids[k].tolist(), skip_special_tokens=True).strip() for ids, k in zip(new, keep, strict=True)]
    batch = dict(prompt)
    batch["input_ids"] = torch.cat([prompt["input_ids"], torch.where(keep, new, tok.pad_token_id)], dim=1)
    batch["attention_mask"] = torch.cat([prompt["attention_mask"], keep.long()], dim=1)
    return type(prompt)(batch), texts


def _until_eos(new: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Bool mask of generated tokens up to and including the first eos of each row."""
    is_eos = (new == eos_id).long()
    before = is_eos.cumsum(1) - is_eos  # eos seen strictly before this position
    return before == 0


def _collect(processor, batch, out, texts: list[str]) -> list[dict]:
    sizes = batch["original_sizes"].tolist()
    image_index = batch["image_index"].tolist()
    first_mask = {}
    if out.pred_masks is not None:
        for k, row in enumerate(out.seg_row_index.tolist()):
            first_mask.setdefault(row, out.pred_masks[k])
    results = []
    for row, text in enumerate(texts):
        height, width = sizes[image_index[row]]
        logits = first_mask.get(row)
        if logits is None:
            mask = torch.zeros(height, width, dtype=torch.bool).numpy()
        else:
            mask = (logits > 0).cpu().numpy()
        results.append({"mask": mask, "text": text, "empty": not bool(mask.any())})
    return results


__all__ = ["run_predict"]
