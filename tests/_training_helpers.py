"""A tiny MIMIC-ILS-shaped dataset made in memory, with the documented features, for training tests.

Each image is dark noise with, for positives, one bright disc; the positive pair's mask is the disc. The task is
learnable by a tiny model in a few hundred steps, which is what the learning test needs.
"""

from __future__ import annotations

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


def conversation_rows(num_images: int, seed: int = 0, split: str = "train") -> list[dict]:
    """One conversation per image: its two pairs of :func:`pair_rows` and a reasoning turn about the first pair's
    lesion ("... Segment the finding that could explain it." on positive images, "If there is ..., segment it." on
    the others), the positive turn first as the built folders have it."""
    rows = pair_rows(num_images, seed, split)
    turn_keys = list(conversations_features()["turns"].feature)
    out = []
    for first, second in zip(rows[::2], rows[1::2], strict=True):
        lesion, positive = first["lesion"], first["polarity"] == "positive"
        if positive:
            reasoning = {**first, "id": first["id"][:-1] + "2", "question_type": "reasoning",
                         "instruction": "The patient presents with fever. Segment the finding that could explain it.",
                         "answer": f"[SEG] It is consistent with {lesion}, located in the right lung. "
                                   f"{lesion.capitalize()} can explain fever."}
        else:
            reasoning = {**second, "id": second["id"][:-1] + "2", "question_type": "reasoning",
                         "instruction": "If there is an area of abnormal whiteness in the left lung, segment it.",
                         "answer": f"[SEG] There is no such finding: no {second['lesion']} is seen in the left lung."}
        turns = [{key: turn[key] for key in turn_keys} for turn in (first, reasoning, second)]
        out.append({"id": f"{first['dicom_id']}-c00", "image": first["image"], "study_id": first["study_id"],
                    "dicom_id": first["dicom_id"], "split": split, "turns": turns})
    return out


def tiny_conversations_dataset(num_images: int, seed: int = 0, split: str = "train") -> datasets.Dataset:
    rows = conversation_rows(num_images, seed, split)
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
