"""Fixtures of the vision tests: the shared tiny synthetic cohort (``tests/_cohort.py``) and its frontal images,
and tiny random RadEdit components and YOLO checkpoints saved in their real on-disk formats."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

from mimic_ils.schema import ImageRecord
from mimic_ils.synth import METADATA_NAME


def frontal_records(root: Path) -> list[ImageRecord]:
    """Frontal image records of a cohort, sorted by dicom id, straight from its metadata CSV."""
    with gzip.open(root / METADATA_NAME, "rt", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    records = [
        ImageRecord(
            row["dicom_id"],
            row["subject_id"],
            row["study_id"],
            row["ViewPosition"],
            f"files/p{row['subject_id'][:2]}/p{row['subject_id']}/s{row['study_id']}/{row['dicom_id']}.dcm",
            int(row["Rows"]),
            int(row["Columns"]),
        )
        for row in rows
    ]
    return sorted((record for record in records if record.is_frontal), key=lambda record: record.dicom_id)


def cohort_with_truth(tmp_path_factory, n_studies: int = 6, seed: int = 0) -> tuple[Path, list[ImageRecord]]:
    """The session's shared synthetic cohort (read-only) and its frontal image records."""
    from _cohort import make_cohort

    root = make_cohort(tmp_path_factory, n_studies=n_studies, seed=seed)
    return root, frontal_records(root)


HIDDEN = 32
WORDS = ["no", "acute", "cardio", "##pulmonary", "process", "effusion", "normal"]


def save_tiny_radedit(root: Path) -> dict[str, str]:
    """Tiny random UNet (radedit snapshot layout, ``unet/``), VAE and BERT text encoder + offline tokenizer saved
    with ``save_pretrained`` under ``root``; returns the backend's folder options."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    unet.save_pretrained(root / "radedit" / "unet")
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=32,
    )
    vae.save_pretrained(root / "vae")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizer(str(vocab), model_max_length=128)
    text = BertModel(
        BertConfig(
            vocab_size=len(WORDS) + 5,
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=128,
        )
    )
    text.save_pretrained(root / "text")
    tokenizer.save_pretrained(root / "text")
    return {"unet": str(root / "radedit"), "vae": str(root / "vae"), "text_encoder": str(root / "text")}


def save_tiny_yolo(path: Path, n_classes: int = 14) -> Path:
    """A yolov8n-shaped ultralytics detector with random weights and ``n_classes`` classes, saved as a ``.pt``."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from mimic_ils.vision.yolo import VINBIG_CLASSES

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=n_classes, verbose=False)
    model.names = {i: (VINBIG_CLASSES[i] if i < 14 else f"c{i}") for i in range(n_classes)}
    torch.save({"model": model, "train_args": {"imgsz": 128}, "epoch": -1}, path)
    return path


def chest_outlines(seed: int = 0, size: int = 1024):
    """``(120, 2)`` float xy of realistic HybridGNet rings in a ``size`` px square: right lung (44 points, image
    left), left lung (50) and heart (26), each a randomly perturbed ellipse traced clockwise from its top, with
    sub-pixel vertex positions as a network predicts them."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rings = []
    # (centre x, centre y, half-width, half-height) as fractions of the side; lungs tall, heart wide and low
    for count, (cx, cy, rx, ry) in zip(
        (44, 50, 26), ((0.30, 0.47, 0.15, 0.30), (0.70, 0.47, 0.15, 0.30), (0.55, 0.62, 0.13, 0.11)), strict=True
    ):
        angle = np.linspace(-np.pi / 2, 3 * np.pi / 2, count, endpoint=False)
        harmonics = sum(rng.normal(0, 0.04) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
        radius = 1 + harmonics + rng.normal(0, 0.005, count)
        centre = np.array([cx, cy]) + rng.normal(0, 0.01, 2)
        ring = centre + np.stack([rx * radius * np.cos(angle), ry * radius * np.sin(angle)], axis=1)
        rings.append(ring * size)
    return np.concatenate(rings)
