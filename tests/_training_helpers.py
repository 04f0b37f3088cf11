"""A tiny MIMIC-ILS-shaped dataset made in memory, with the documented features, for training tests.

Each image is dark noise with, for positives, one bright disc; the positive pair's mask is the disc. The task is
learnable by a tiny model in a few hundred steps, which is what the learning test needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import numpy as np
from PIL import Image

from mimic_ils.features import conversations_features, images_features, pairs_features

LESIONS = ("opacity", "effusion", "edema")


def _image_and_mask(rng: np.random.Generator, height: int, width: int, positive: bool):
    image = rng.normal(60, 12, (height, width)).clip(0, 255)
    mask = np.zeros((height, width), bool)
    if positive:
        radius = rng.uniform(0.15, 0.25) * min(height, width)
        # always in the patient's right lung (image left half): "in the left lung" is then learnably empty
        cy, cx = rng.uniform(radius, height - radius), rng.uniform(radius, width / 2)
        yy, xx = np.mgrid[:height, :width]
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        image[mask] += 140
    return Image.fromarray(image.clip(0, 255).astype(np.uint8)), mask


def pair_rows(num_images: int, seed: int = 0, split: str = "train", size: tuple[int, int] = (48, 64)) -> list[dict]:
    """Two pairs per image (a positive and a negative on positive images, two negatives otherwise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(num_images):
        positive = index % 2 == 0
        image, mask = _image_and_mask(rng, *size, positive)
        lesion = LESIONS[index % len(LESIONS)]
        dicom = f"{split}{seed}-{index:04d}"
        common = {"image": image, "study_id": f"s{index}", "dicom_id": dicom, "split": split}
        first = {"id": f"{dicom}-0", "target": lesion, "lesion": lesion, "question_type": "global",
                 "locations": ["right lung"] if positive else [], "certainty": "definitive" if positive else None,
                 "instruction": f"Segment the {lesion}.",
                 "answer": "[SEG] It is located in the right lung." if positive else f"[SEG] There is no {lesion}.",
                 "polarity": "positive" if positive else "negative",
                 "mask": Image.fromarray(mask.astype(np.uint8) * 255) if positive else None}
        other = LESIONS[(index + 1) % len(LESIONS)]
        second = {"id": f"{dicom}-1", "target": other, "lesion": other, "question_type": "basic",
                  "locations": ["left lung"], "certainty": None, "polarity": "negative", "mask": None,
                  "instruction": f"Segment the {other} in the left lung.",
                  "answer": f"[SEG] There is no {other} in the left lung."}
        rows += [{**common, **first}, {**common, **second}]
    return rows


def tiny_pairs_dataset(num_images: int, seed: int = 0, split: str = "train") -> datasets.Dataset:
    rows = pair_rows(num_images, seed, split)
    columns = {name: [row[name] for row in rows] for name in pairs_features()}
    return datasets.Dataset.from_dict(columns, features=pairs_features())


def tiny_images_dataset(num_images: int, seed: int = 0, split: str = "train") -> datasets.Dataset:
    rows = pair_rows(num_images, seed, split)
    grouped: dict[str, dict] = {}
    pair_keys = [k for k in images_features()["pairs"].feature]
    for row in rows:
        entry = grouped.setdefault(row["dicom_id"], {"dicom_id": row["dicom_id"], "image": row["image"],
                                                     "study_id": row["study_id"], "split": split, "pairs": []})
        entry["pairs"].append({k: row[k] for k in pair_keys})
    columns = {name: [g[name] for g in grouped.values()] for name in images_features()}
    return datasets.Dataset.from_dict(columns, features=images_features())


# a reasoning instruction describes its target, never names it (as mimic_ils.reasoning writes them)
DESCRIPTIONS = {"opacity": "an area of abnormal whiteness", "effusion": "fluid collecting in the pleural space",
                "edema": "fluid filling the lung tissue"}


def conversation_rows(num_images: int, seed: int = 0, split: str = "train",
                      turns_per_conversation: Sequence[int] = (3,)) -> list[dict]:
    """One conversation per image, of ``turns_per_conversation[i % len(...)]`` turns (2 to 4): the image's two pairs
    of :func:`pair_rows`; with 3 or 4 turns a reasoning turn about the first pair's lesion after the first pair
    ("... Segment the finding that could explain it." on positive images, "If there is <description> in the left
    lung, segment it." on the others); with 4 a last reasoning turn asking for the other lesion anywhere (absent).
    A positive turn opens the conversation, as the built folders have it."""
    rows = pair_rows(num_images, seed, split)
    turn_keys = list(conversations_features()["turns"].feature)
    out = []
    for index, (first, second) in enumerate(zip(rows[::2], rows[1::2], strict=True)):
        size = turns_per_conversation[index % len(turns_per_conversation)]
        if not 2 <= size <= 4:
            raise ValueError(f"a conversation has 2 to 4 turns, not {size}")
        lesion, other = first["lesion"], second["lesion"]
        if first["polarity"] == "positive":
            reasoning = {**first, "question_type": "reasoning",
                         "instruction": "The patient presents with fever. Segment the finding that could explain it.",
                         "answer": f"[SEG] It is consistent with {lesion}, located in the right lung. "
                                   f"{lesion.capitalize()} can explain fever."}
        else:
            reasoning = {**second, "question_type": "reasoning",
                         "instruction": f"If there is {DESCRIPTIONS[other]} in the left lung, segment it.",
                         "answer": f"[SEG] There is no such finding: no {other} is seen in the left lung."}
        anywhere = {**second, "question_type": "reasoning", "locations": [],
                    "instruction": f"If there is {DESCRIPTIONS[other]} anywhere in the chest, segment it.",
                    "answer": f"[SEG] There is no such finding: no {other} is seen."}
        turns = {2: (first, second), 3: (first, reasoning, second), 4: (first, reasoning, second, anywhere)}[size]
        turns = [{**{key: turn[key] for key in turn_keys}, "id": f"{first['dicom_id']}-{number}"}
                 for number, turn in enumerate(turns)]
        out.append({"id": f"{first['dicom_id']}-c00", "image": first["image"], "study_id": first["study_id"],
                    "dicom_id": first["dicom_id"], "split": split, "turns": turns})
    return out


def tiny_conversations_dataset(num_images: int, seed: int = 0, split: str = "train",
                               turns_per_conversation: Sequence[int] = (3,)) -> datasets.Dataset:
    rows = conversation_rows(num_images, seed, split, turns_per_conversation)
    columns = {name: [row[name] for row in rows] for name in conversations_features()}
    return datasets.Dataset.from_dict(columns, features=conversations_features())


def write_dataset_folder(root, num_train_images: int = 12, num_validate_images: int = 4) -> str:
    """A folder that ``datasets.load_dataset(root, "pairs"|"images"|"conversations", split=...)`` reads (Parquet +
    card YAML)."""
    from pathlib import Path

    root = Path(root)
    configs = []
    for config, factory in (("pairs", tiny_pairs_dataset), ("images", tiny_images_dataset),
                            ("conversations", tiny_conversations_dataset)):
        files = []
        for split, count, seed in (("train", num_train_images, 1), ("validate", num_validate_images, 7)):
            path = root / config / f"{split}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            factory(count, seed=seed, split=split).to_parquet(str(path))
            files.append(f"  - split: {split}\n    path: {config}/{split}.parquet")
        configs.append(f"- config_name: {config}\n  data_files:\n" + "\n".join(files))
    (root / "README.md").write_text("---\nconfigs:\n" + "\n".join(configs) + "\n---\n")
    return str(root)


def write_built_folder(root, num_train_images: int = 12, num_validation_images: int = 4,
                       turns_per_conversation: Sequence[int] = (3, 4, 2)) -> str:
    """A folder laid out as ``mimic-ils build`` writes one (``mimic_ils.orchestration.writer``), with the rows of
    :func:`pair_rows` and :func:`conversation_rows` (conversations of ``turns_per_conversation`` turns in turn):

        <split>/metadata.parquet               pairs (file names relative to <split>/)
        <split>/images/metadata.parquet        images (relative to images/)
        <split>/images/conversations.parquet   conversations (relative to images/; ``metadata_filenames``)
        <split>/images/<dicom_id>.png, <split>/images/masks/<pair id>.png

    in the build's Arrow schemas, and a card whose ``configs:`` and features are the build's
    (``card.configs_yaml``), so ``datasets.load_dataset(root, "conversations")`` reads it as it reads a build."""
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from mimic_ils.features import conversations_features, images_features, pairs_features
    from mimic_ils.orchestration import writer
    from mimic_ils.orchestration.card import configs_yaml, metadata_digest

    root = Path(root)
    for split, count, seed in (("train", num_train_images, 1), ("validation", num_validation_images, 7)):
        folder = root / split
        (folder / writer.MASKS).mkdir(parents=True, exist_ok=True)
        pairs = pair_rows(count, seed, split)
        for row in pairs:
            row["image"].save(folder / writer.IMAGES / f"{row['dicom_id']}.png")
            if row["mask"] is not None:
                row["mask"].save(folder / writer.MASKS / f"{row['id']}.png")
        pair_records = [_file_names(row, "images/") for row in pairs]
        grouped: dict[str, dict] = {}
        for row in pairs:  # the images config: the per-image columns once, the per-pair ones in the list
            entry = grouped.setdefault(row["dicom_id"], {**_file_names(row, ""), "pairs": []})
            entry["pairs"].append(_file_names(row, ""))
        conversations = []
        for conversation in conversation_rows(count, seed, split, turns_per_conversation):
            turns = []
            for turn in conversation["turns"]:
                if turn["mask"] is not None:
                    turn["mask"].save(folder / writer.MASKS / f"{turn['id']}.png")
                turns.append(_file_names(turn, ""))
            conversations.append({**_file_names(conversation, ""), "turns": turns})
        for records, schema, path in ((pair_records, writer.PAIRS_SCHEMA, folder / writer.METADATA),
                                      (list(grouped.values()), writer.IMAGES_SCHEMA,
                                       folder / writer.IMAGES / writer.METADATA),
                                      (conversations, writer.CONVERSATIONS_SCHEMA,
                                       folder / writer.IMAGES / writer.CONVERSATIONS)):
            pq.write_table(pa.Table.from_pylist(records, schema=schema), path)
    features = {"pairs": pairs_features(), "images": images_features(), "conversations": conversations_features()}
    card = {"configs": configs_yaml({"train": [".png"], "validation": [".png"]}, metadata_digest(root)),
            "dataset_info": [{"config_name": name, "features": value._to_yaml_list()}
                             for name, value in features.items()]}
    (root / "README.md").write_text("---\n" + yaml.safe_dump(card, sort_keys=False) + "---\n")
    return str(root)


def _file_names(row: dict, prefix: str) -> dict:
    """A row with ``image``/``mask`` given as ``image_file_name``/``mask_file_name`` under ``prefix`` (the masks as
    ``masks/<id>.png``; the image of a pair or conversation turn is its image row's, not its own)."""
    out = {key: value for key, value in row.items() if key not in ("image", "mask")}
    if "image" in row:
        out["image_file_name"] = f"{prefix}{row['dicom_id']}.png"
    if "mask" in row:
        out["mask_file_name"] = None if row["mask"] is None else f"{prefix}masks/{row['id']}.png"
    return out
