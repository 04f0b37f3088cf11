"""The dataset card of a built folder: YAML (``configs:``, license and access gating) + layout, counts, provenance.

Each config lists, per split, its ``metadata.parquet`` and the split's images (``images/*.png``). ``datasets``
then picks the ``imagefolder`` loader, which turns the ``*_file_name`` columns into ``Image`` features resolved
relative to the metadata file, so the folder is relocatable and needs no project code.

The card's layout table is made from the writer's names (``writer.METADATA``, ``IMAGES``, ``MASKS``, ...), so what
it says is where the files are. MIMIC-CXR is credentialed data: the YAML names its licence and, for a folder pushed
to a gated Hub repository, asks for PhysioNet credentialing and the data use agreement (``extra_gated_*``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mimic_ils.orchestration.output import MANIFEST
from mimic_ils.orchestration.writer import BUILD_INFO, CARD, CONVERSATIONS, IMAGES, LEDGER, MASKS, METADATA
from mimic_ils.schema import FRONTAL_VIEWS, LESION_TYPES, QUESTION_TYPES, SPLITS

# mimic_ils/data/dataset_card_template.md links to builders/mimic_ils/README.md (a real file in an installed wheel)
TEMPLATE = Path(__file__).resolve().parents[1] / "data" / "dataset_card_template.md"
CONFIGS = {"pairs": f"{{split}}/{METADATA}", "images": f"{{split}}/{IMAGES}/{METADATA}",
           "conversations": f"{{split}}/{IMAGES}/{CONVERSATIONS}"}

LICENSE_NAME = "physionet-credentialed-health-data-license-1.5.0"
LICENSE_LINK = "https://physionet.org/content/mimic-cxr/view-license/2.1.0/"
DUA_LINK = "https://physionet.org/content/mimic-cxr/view-dua/2.1.0/"
GATING = {
    "extra_gated_heading": "MIMIC-ILS is derived from MIMIC-CXR: PhysioNet credentialed access only",
    "extra_gated_prompt": (
        "MIMIC-ILS holds chest X-rays of MIMIC-CXR (PhysioNet, credentialed access) and annotations derived from "
        "their reports. You may access it only as a credentialed PhysioNet user who has completed the required "
        "human-subjects training and signed the MIMIC-CXR data use agreement (PhysioNet Credentialed Health Data "
        f"Use Agreement 1.5.0, {DUA_LINK}); the data is under the PhysioNet Credentialed Health Data License 1.5.0 "
        f"({LICENSE_LINK}). Do not share it with anyone who is not credentialed, do not try to identify any "
        "individual, and do not send it to online services that keep or review what they are sent."
    ),
    "extra_gated_fields": {
        "PhysioNet username": "text",
        "I am a credentialed PhysioNet user with access to MIMIC-CXR": "checkbox",
        "I have signed the MIMIC-CXR data use agreement (PhysioNet Credentialed Health Data Use Agreement 1.5.0) "
        "and will follow it": "checkbox",
        "I will not share this data with anyone who is not credentialed, nor try to re-identify anyone": "checkbox",
    },
    "extra_gated_button_content": "I agree: request access",
}

def metadata_digest(folder: str | Path) -> str:
    """SHA-256 over every metadata Parquet of a built folder (names and bytes): the content of the build."""
    digest = hashlib.sha256()
    paths = [*Path(folder).glob(f"*/**/{METADATA}"), *Path(folder).glob(f"*/**/{CONVERSATIONS}")]
    for path in sorted(paths):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def configs_yaml(image_suffixes: dict[str, list[str]], digest: str = "") -> list[dict[str, Any]]:
    """``configs:`` entries from ``{split: [image suffixes]}`` (splits without rows are absent).

    Each entry carries the build's content digest in its ``description``: ``datasets`` keys its cache of a local
    folder on the folder's base name and the builder configs only, so without it a rebuilt folder (or another build
    in a folder of the same name) would load the previous build's rows from the cache.
    """
    entries = []
    for config, metadata in CONFIGS.items():
        data_files = [
            {"split": split, "path": [metadata.format(split=split)] + [f"{split}/{IMAGES}/*{ext}" for ext in exts]}
            for split in SPLITS if split in image_suffixes for exts in [image_suffixes[split]]
        ]
        entry = {"config_name": config, "data_files": data_files, "drop_labels": True,
                 "description": f"MIMIC-ILS {config}, build content sha256 {digest}"}
        if not metadata.endswith(METADATA):  # imagefolder finds a metadata file by its name
            entry["metadata_filenames"] = [Path(metadata).name]
        if config == "pairs":
            entry["default"] = True
        entries.append(entry)
    return entries


def layout_markdown(image_suffixes: dict[str, list[str]]) -> str:
    """The card's table of the folder's files, from the names the writer uses (``<split>`` stands for each split)."""
    exts = sorted({ext for exts in image_suffixes.values() for ext in exts}) or [".png"]
    rows = [(CARD, "this card")]
    rows.append((f"<split>/{METADATA}", "`pairs` config: one row per instruction-answer pair; file names relative to "
                 "`<split>/`"))
    rows.append((f"<split>/{IMAGES}/{METADATA}", f"`images` config: one row per image with its pairs; file names "
                 f"relative to `<split>/{IMAGES}/`"))
    rows.append((f"<split>/{IMAGES}/{CONVERSATIONS}", f"`conversations` config: 2 to 4 pairs of one image as the "
                 f"turns of a conversation; file names relative to `<split>/{IMAGES}/`"))
    rows += [(f"<split>/{IMAGES}/<dicom_id>{ext}", "each image once, 8-bit greyscale, original DICOM frame"
              if ext == ".png" else "each image once, as the source file") for ext in exts]
    rows.append((f"<split>/{MASKS}/<digest>.png", "each unique mask once, 0/255, the image's frame; named by the "
                 "digest of its pixels"))
    rows.append((LEDGER, "every study, image and dropped finding of the source with its fate and reason"))
    rows.append((BUILD_INFO, "the build config, provenance, counts and ledger summary"))
    rows.append((MANIFEST, "size and sha256 of every file (what `mimic-ils build` may replace)"))
    return "\n".join(["| path | what it holds |", "|---|---|", *(f"| `{path}` | {what} |" for path, what in rows)])


def counts_markdown(counts: dict[str, dict[str, Any]]) -> str:
    """The card's counts: pairs, polarity, images, masks and studies per split; then pairs per question type and the
    ``conversations`` config's rows (when the counts carry them; an imported release has neither)."""
    header = "| split | pairs | positive | negative | images | unique masks | studies |\n|---|---|---|---|---|---|---|"
    lines = [header]
    for split, row in counts.items():
        lines.append(
            f"| {split} | {row['pairs']:,} | {row['positive']:,} | {row['negative']:,} | {row['images']:,} | "
            f"{row['masks']:,} | {row['studies']:,} |"
        )
    if all("question_types" in row for row in counts.values()) and counts:
        types = [name for name in QUESTION_TYPES if any(name in row["question_types"] for row in counts.values())]
        lines += ["", "| split | " + " | ".join(f"{name} pairs" for name in types) + " | conversations |",
                  "|---" * (len(types) + 2) + "|"]
        for split, row in counts.items():
            cells = [f"{row['question_types'].get(name, 0):,}" for name in types]
            lines.append(f"| {split} | " + " | ".join(cells) + f" | {row.get('conversations', 0):,} |")
    return "\n".join(lines)


def render_card(files: dict[str, list[str]], counts: dict[str, dict[str, int]], info: dict[str, Any],
                folder: str | Path) -> str:
    """The README.md text of the built folder ``folder`` (its metadata files already written)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    total = sum(row["pairs"] for row in counts.values())
    card_data = DatasetCardData(
        pretty_name="MIMIC-ILS",
        license="other",
        license_name=LICENSE_NAME,
        license_link=LICENSE_LINK,
        language=["en"],
        annotations_creators=["machine-generated"],
        language_creators=["expert-generated"],
        source_datasets=["extended|mimic-cxr"],
        task_categories=["image-segmentation"],
        size_categories=[_size_category(total)],
        tags=["medical", "chest-x-ray", "instruction-guided-segmentation", "mimic-cxr"],
        configs=configs_yaml(files, metadata_digest(folder)),
        dataset_info=_features_yaml(),
        **GATING,
    )
    template = TEMPLATE if TEMPLATE.exists() else None
    card = DatasetCard.from_template(
        card_data, template_path=str(template) if template else None, folder_hint="path/to/this/folder",
        counts_table=counts_markdown(counts), provenance=_provenance_markdown(info),
        layout=layout_markdown(files), splits=", ".join(split for split in SPLITS if split in files),
        lesion_types=", ".join(LESION_TYPES), views=" and ".join(FRONTAL_VIEWS), license_link=LICENSE_LINK,
        dua_link=DUA_LINK,
    )
    return str(card)


def _features_yaml() -> list[dict[str, Any]]:
    """``dataset_info`` entries documenting both configs' features (the loader derives the same ones)."""
    from mimic_ils.features import conversations_features, images_features, pairs_features

    return [{"config_name": "pairs", "features": pairs_features()._to_yaml_list()},
            {"config_name": "images", "features": images_features()._to_yaml_list()},
            {"config_name": "conversations", "features": conversations_features()._to_yaml_list()}]


def _provenance_markdown(info: dict[str, Any]) -> str:
    body = json.dumps({key: info[key] for key in sorted(info) if key not in ("counts", "ledger")}, indent=2,
                      sort_keys=True)
    fates = ", ".join(f"{key} {value:,}" for key, value in (info.get("ledger") or {}).get("fates", {}).items())
    return (f"Built by `mimic_ils` {info.get('code_version', '?')} (commit {info.get('code_commit') or 'unknown'}). "
            f"Ledger: {fates or 'n/a'} (reasons in `build_info.json`, rows in `ledger.parquet`).\n\n"
            f"```json\n{body}\n```")


def _size_category(count: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if count < limit:
            return name
    return "1M<n<10M"
