"""Training data for ROSALIA: pair-level access to a built MIMIC-ILS folder and the batch collator.

A built folder has two configurations (``mimic_ils/features.py``): ``pairs`` (one row per pair) and ``images``
(one row per image with its list of pairs). :class:`RosaliaPairs` indexes *pairs* over either of them; with the
``images`` configuration an image row (the image and all its masks) is decoded once and reused by every pair of
that image while it stays in a small cache, which is what the image-grouping sampler arranges.

:class:`RosaliaCollator` groups the pairs of a batch by image, so CLIP and SAM run once per unique image
(``image_index`` maps each instruction to its image row). :class:`RosaliaConversations` indexes the ``conversations``
configuration (2 to 4 turns per row); the same collator makes one multi-turn row of each, one mask per ``[SEG]``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset

from rosalia_hf.processing_rosalia import RosaliaProcessor


class RosaliaPairs(Dataset):
    """Pair-level view of a ``pairs`` or ``images`` split (a ``datasets.Dataset`` with the MIMIC-ILS features).

    Items are dicts: ``image_key`` (dicom id), ``image`` (``HxW uint8``), ``instruction``, ``answer``, ``mask``
    (``HxW bool``, all False for negatives), ``positive`` (bool), ``lesion`` and ``question_type``.
    ``positive`` and ``image_keys`` are read from the Arrow columns without decoding any image.

    Debugging aid: with the environment variable ``ROSALIA_BATCH_LOG`` set to a folder, every batch fetched
    through ``__getitems__`` (how a ``DataLoader`` fetches a batch) appends ``{"rank": r, "indices": [...]}`` to
    ``FOLDER/batches-rank{r}.jsonl``, ``r`` being the ``RANK`` environment variable (0 when unset).
    """

    def __init__(self, dataset, cache_size: int = 16) -> None:
        self.dataset = dataset
        self.grouped = "pairs" in dataset.column_names
        table = dataset.with_format("arrow")[:]
        if self.grouped:
            pairs = table.column("pairs")
            lengths = pc.list_value_length(pairs).to_numpy(zero_copy_only=False)
            self._row = np.repeat(np.arange(len(lengths)), lengths)
            self._slot = np.concatenate([np.arange(n) for n in lengths]) if len(lengths) else np.zeros(0, int)
            polarity = pc.struct_field(pc.list_flatten(pairs), "polarity")
            self.image_keys = np.repeat(np.asarray(table.column("dicom_id").to_pylist()), lengths).tolist()
        else:
            self._row = np.arange(table.num_rows)
            self._slot = np.zeros(table.num_rows, dtype=int)
            polarity = table.column("polarity")
            self.image_keys = table.column("dicom_id").to_pylist()
        self.positive = [value == "positive" for value in polarity.to_pylist()]
        self._cache: OrderedDict[int, dict] = OrderedDict()
        self._cache_size = cache_size

    def __len__(self) -> int:
        return len(self._row)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self._decoded_row(int(self._row[index]))
        pair = row["pairs"][int(self._slot[index])] if self.grouped else row
        image = _gray_uint8(row["image"])
        mask = np.zeros(image.shape, bool) if pair["mask"] is None else _gray_uint8(pair["mask"]) > 127
        if mask.shape != image.shape:
            raise ValueError(f"pair {pair['id']}: mask is {mask.shape}, image is {image.shape}")
        return {
            "image_key": row["dicom_id"], "image": image, "instruction": pair["instruction"],
            "answer": pair["answer"], "mask": mask, "positive": self.positive[index],
            "lesion": pair["lesion"], "question_type": pair["question_type"],
        }

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        items = [self[index] for index in indices]
        log_folder = os.environ.get("ROSALIA_BATCH_LOG")
        if log_folder:
            _log_batch(log_folder, [int(index) for index in indices])
        return items

    def _decoded_row(self, row: int) -> dict:
        if row in self._cache:
            self._cache.move_to_end(row)
            return self._cache[row]
        decoded = self.dataset[row]
        self._cache[row] = decoded
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return decoded


class RosaliaConversations(Dataset):
    """Conversation-level view of a ``conversations`` split (``mimic_ils``: 2 to 4 pairs of one image as turns).

    Items are dicts: ``image_key`` (dicom id), ``image`` (``HxW uint8``), ``turns`` (each ``{"instruction",
    "answer", "lesion", "question_type", "polarity"}``, in order), ``masks`` (``(k, H, W)`` bool, one per turn, all
    False for a negative turn), ``positives`` (one bool per turn) and ``positive`` (the conversation has a positive
    turn: the sampler balances conversations on it). ``positive`` and ``image_keys`` are read from the Arrow
    columns without decoding any image.
    """

    def __init__(self, dataset) -> None:
        if "turns" not in dataset.column_names:
            raise ValueError("RosaliaConversations needs a `conversations` split (a `turns` column)")
        self.dataset = dataset
        table = dataset.with_format("arrow")[:]
        turns = table.column("turns")
        lengths = pc.list_value_length(turns).to_numpy(zero_copy_only=False)
        polarity = np.asarray(pc.struct_field(pc.list_flatten(turns), "polarity").to_pylist()) == "positive"
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
        self.turn_positive = [polarity[a:b].tolist() for a, b in zip(starts[:-1], starts[1:], strict=True)]
        self.positive = [any(flags) for flags in self.turn_positive]
        self.image_keys = table.column("dicom_id").to_pylist()

    def __len__(self) -> int:
        return len(self.positive)

    @property
    def num_pairs(self) -> int:
        """The turns of all conversations: each is a pair of the ``pairs`` config."""
        return sum(len(flags) for flags in self.turn_positive)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.dataset[int(index)]
        image = _gray_uint8(row["image"])
        masks = []
        for turn in row["turns"]:
            if isinstance(turn["mask"], str | dict):  # datasets decodes a list's images after a first one only
                raise ValueError(f"conversation {row['id']}, pair {turn['id']}: mask not decoded ({turn['mask']!r}); "
                                 f"a conversation with a positive turn must open with one (mimic_ils.conversations)")
            mask = np.zeros(image.shape, bool) if turn["mask"] is None else _gray_uint8(turn["mask"]) > 127
            if mask.shape != image.shape:
                raise ValueError(f"conversation {row['id']}, pair {turn['id']}: mask is {mask.shape}, image is "
                                 f"{image.shape}")
            masks.append(mask)
        turns = [{name: turn[name] for name in ("instruction", "answer", "lesion", "question_type", "polarity")}
                 for turn in row["turns"]]
        return {"image_key": row["dicom_id"], "conversation_id": row["id"], "image": image, "turns": turns,
                "masks": np.stack(masks), "positives": list(self.turn_positive[int(index)]),
                "positive": self.positive[int(index)]}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self[index] for index in indices]


def dataset_view(dataset) -> RosaliaPairs | RosaliaConversations:
    """The training view of a split: conversations for a ``conversations`` split, pairs for the other two."""
    return RosaliaConversations(dataset) if "turns" in dataset.column_names else RosaliaPairs(dataset)


@dataclass
class RosaliaCollator:
    """Collates pair items into a :class:`~rosalia_hf.RosaliaForSegmentation` batch, one image row per image.

    Histogram equalisation (probability ``histogram_equalization_prob``, training only) is drawn per image from a
    generator seeded by ``seed`` and the batch's pair keys, so a batch is reproducible whatever the worker.

    >>> from rosalia_hf.testing import tiny_processor
    >>> collate = RosaliaCollator(tiny_processor())
    >>> image = np.zeros((40, 60), np.uint8)
    >>> item = lambda key, pos: {"image_key": key, "image": image, "instruction": "Segment the edema.",
    ...                          "answer": "[SEG]", "mask": np.full((40, 60), pos), "positive": pos}
    >>> batch = collate([item("a", True), item("b", False), item("a", False)])
    >>> batch["image_index"].tolist(), batch["mask_positive"].tolist(), tuple(batch["sam_pixel_values"].shape)
    ([0, 1, 0], [True, False, False], (2, 3, 64, 64))
    >>> batch["original_sizes"].tolist(), [tuple(m.shape) for m in batch["masks"]]
    ([[40, 60], [40, 60]], [(40, 60), (40, 60), (40, 60)])
    """

    processor: RosaliaProcessor
    histogram_equalization_prob: float = 0.0
    group_by_image: bool = True
    seed: int = 0
    max_length: int | None = None

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor | list]:
        """A batch of pair items (:class:`RosaliaPairs`) or conversation items (:class:`RosaliaConversations`):
        a conversation is one row of several turns, its ``masks`` ``(k, H, W)`` and ``mask_positive`` one flag per
        ``[SEG]`` in row-major order, so that the paper's loss applies to every turn (CE on every answer, BCE on
        every mask, Dice on the positive ones)."""
        keys = [item["image_key"] if self.group_by_image else f"{i}:{item['image_key']}" for i, item in
                enumerate(items)]
        unique = list(dict.fromkeys(keys))
        first = {key: keys.index(key) for key in unique}
        conversations = ["turns" in item for item in items]
        if any(conversations) and not all(conversations):
            raise ValueError("a batch mixes pairs and conversations")
        if all(conversations):
            last = [item["turns"][-1] for item in items]
            instructions, answers = [turn["instruction"] for turn in last], [turn["answer"] for turn in last]
            history = [[(turn["instruction"], turn["answer"]) for turn in item["turns"][:-1]] for item in items]
            texts = [" ".join(turn["instruction"] for turn in item["turns"]) for item in items]
        else:
            instructions, answers = [item["instruction"] for item in items], [item["answer"] for item in items]
            history, texts = None, instructions
        rng = np.random.default_rng(_stable_seed(self.seed, keys, texts))
        images = [items[first[key]]["image"] for key in unique]
        batch = dict(self.processor(  # the processor equalises (its one path), with this collator's draws
            images, instructions, answers, image_index=[unique.index(key) for key in keys], rng=rng,
            equalize_probability=self.histogram_equalization_prob, history=history,
        ))
        self._check_length(batch["attention_mask"], items)
        if history is None:
            batch["masks"] = [torch.from_numpy(np.ascontiguousarray(item["mask"])) for item in items]
            batch["mask_positive"] = torch.tensor([bool(item["positive"]) for item in items])
        else:
            batch["masks"] = [torch.from_numpy(np.ascontiguousarray(item["masks"])) for item in items]
            batch["mask_positive"] = torch.tensor([bool(flag) for item in items for flag in item["positives"]])
        return batch

    def _check_length(self, attention_mask: torch.Tensor, items: Sequence[dict[str, Any]]) -> None:
        """``max_length`` (``model_max_length``) bounds prompt + image tokens + answer: a longer pair is refused with
        its length named, never silently cut (a truncated answer would lose its ``[SEG]`` and its mask)."""
        if self.max_length is None:
            return
        lengths = attention_mask.sum(dim=1).tolist()
        for item, length in zip(items, lengths, strict=True):
            if length <= self.max_length:
                continue
            if "turns" in item:
                raise ValueError(f"conversation {item.get('conversation_id', item['image_key'])!r} "
                                 f"({len(item['turns'])} turns) is {int(length)} tokens with the image; "
                                 f"model_max_length is {self.max_length}")
            raise ValueError(f"pair {item['image_key']!r} ({item['instruction'][:60]!r}) is {int(length)} tokens "
                             f"with the image; model_max_length is {self.max_length}")


def _log_batch(folder: str, indices: list[int]) -> None:
    rank = int(os.environ.get("RANK", 0))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"batches-rank{rank}.jsonl"), "a") as log:
        log.write(json.dumps({"rank": rank, "indices": indices}) + "\n")


def _gray_uint8(image) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 3:
        array = np.round(array[..., :3].astype(np.float32).mean(axis=2)).astype(np.uint8)
    return array.astype(np.uint8, copy=False)


def _stable_seed(seed: int, keys: Sequence[str], texts: Sequence[str]) -> list[int]:
    digest = hashlib.sha256("\x00".join([*keys, *texts]).encode()).digest()
    return [seed, int.from_bytes(digest[:8], "little")]
