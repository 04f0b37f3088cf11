"""``MimicIls``: the ``datasets`` builder class, for users who prefer the ``datasets`` cache.

``data_dir`` is either a folder made by ``mimic-ils build`` / ``mimic-ils import-release`` (read as is), or a
MIMIC-CXR root (then the builder first runs the build, resumably, into ``<cache_dir>/mimic_ils_builds/<key>``
with the ``build_config`` YAML and ``backends`` given to the builder). Both give the features of
:mod:`mimic_ils.features`::

    from mimic_ils.builder import MimicIls
    builder = MimicIls(config_name="pairs", data_dir="/data/mimic-ils")       # or a MIMIC-CXR root
    builder.download_and_prepare()
    pairs = builder.as_dataset()
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets.builder import Key

from mimic_ils.features import conversations_features, feature_name, images_features, pairs_features
from mimic_ils.orchestration.writer import CONVERSATIONS, IMAGES, METADATA, split_folders
from mimic_ils.rows import FILE, PAIRS, Column, ConversationRow, ImageRow, PairRow, columns, image_pair_columns
from mimic_ils.schema import MimicIlsError, canonical_split

_DESCRIPTION = (
    "MIMIC-ILS: instruction-guided lesion segmentation pairs for chest X-rays (arXiv 2511.15186), regenerated from "
    "a local MIMIC-CXR copy. Annotations are machine-generated; the source is MIMIC-CXR (extended)."
)
_CITATION = """@inproceedings{mimicils2026,
  title={Instruction-Guided Lesion Segmentation for Chest X-rays with Automatically Generated Large-Scale Dataset},
  booktitle={CVPR},
  year={2026}
}"""
_HOMEPAGE = "https://physionet.org/content/mimic-cxr/2.1.0/"


@dataclass
class MimicIlsConfig(datasets.BuilderConfig):
    """When ``data_dir`` is a MIMIC-CXR root: ``build_config`` (build YAML), ``backends`` (phantom | real | vision
    YAML), ``limit`` (first N studies)."""

    build_config: str | None = None
    backends: str | None = None
    limit: int | None = None


class MimicIls(datasets.GeneratorBasedBuilder):
    """MIMIC-ILS with three configurations: ``pairs`` (one row per pair), ``images`` (one row per image) and
    ``conversations`` (2 to 4 pairs of one image as turns)."""

    BUILDER_CONFIG_CLASS = MimicIlsConfig
    BUILDER_CONFIGS = [
        MimicIlsConfig(name="pairs", description="one row per instruction-answer pair"),
        MimicIlsConfig(name="images", description="one row per frontal image with the list of its pairs"),
        MimicIlsConfig(name="conversations", description="2 to 4 pairs of one image as the turns of a conversation"),
    ]
    DEFAULT_CONFIG_NAME = "pairs"

    @property
    def manual_download_instructions(self) -> str:
        return (
            "MIMIC-ILS is regenerated from MIMIC-CXR, which needs a credentialed PhysioNet account and the signed "
            "data use agreement. Download from https://physionet.org/content/mimic-cxr/2.1.0/ the report archive "
            "`mimic-cxr-reports.zip` (files/pXX/pSUBJECT/sSTUDY.txt), the DICOMs under `files/`, and from "
            "https://physionet.org/content/mimic-cxr-jpg/2.1.0/ `mimic-cxr-2.0.0-metadata.csv.gz` and "
            "`mimic-cxr-2.0.0-split.csv.gz`, into one root folder. Then pass `data_dir=<that root>` (the builder "
            "runs the build; vision backends need local weights, see `backends`) or first run `mimic-ils build "
            "--mimic-root <root> --out <folder>` and pass `data_dir=<folder>`. The authors' release "
            "(https://physionet.org/content/mimic-cxr-ext-ils/1.0.0/: mimic_ils_instruction_answer.json and "
            "lesion_mask/) can be converted with `mimic-ils import-release` and passed the same way."
        )

    def _info(self) -> datasets.DatasetInfo:
        features = {"images": images_features, "conversations": conversations_features}.get(
            self.config.name, pairs_features)()
        return datasets.DatasetInfo(
            description=_DESCRIPTION, features=features, homepage=_HOMEPAGE, citation=_CITATION,
            license="PhysioNet Credentialed Health Data License 1.5.0",
        )

    def _split_generators(self, dl_manager) -> list[datasets.SplitGenerator]:
        data_dir = dl_manager.manual_dir or self.config.data_dir
        if not data_dir or not os.path.isdir(data_dir):
            raise MimicIlsError(f"data_dir {data_dir!r} is not a folder.\n{self.manual_download_instructions}")
        folder = self._built_folder(Path(data_dir).expanduser().resolve())
        relative = {"images": f"{IMAGES}/{METADATA}", "conversations": f"{IMAGES}/{CONVERSATIONS}"}.get(
            self.config.name, METADATA)
        return [datasets.SplitGenerator(name=split, gen_kwargs={"files": [split_folder / relative]})
                for split, split_folder in split_folders(folder, relative).items()]

    def _built_folder(self, data_dir: Path) -> Path:
        if split_folders(data_dir):
            return data_dir
        from mimic_ils.orchestration import BuildConfig, build

        config = BuildConfig.from_yaml(self.config.build_config) if self.config.build_config else BuildConfig()
        config = config.with_backends(self.config.backends or ("real" if isinstance(config.vision, str) else None))
        key = json.dumps({"root": str(data_dir), "config": config.fingerprint(), "limit": self.config.limit},
                         sort_keys=True)
        out = Path(self._cache_dir_root) / "mimic_ils_builds" / hashlib.sha256(key.encode()).hexdigest()[:16]
        if not (out / "README.md").exists():
            build(data_dir, out, config=config, limit=self.config.limit)
        return out

    def _generate_examples(self, files: list[Path]):
        import pyarrow.parquet as pq

        row_columns = columns({"images": ImageRow, "conversations": ConversationRow}.get(self.config.name, PairRow))
        for shard, path in enumerate(files):
            for index, row in enumerate(pq.read_table(path).to_pylist()):
                yield Key(shard, index), _resolve(row, path.parent, row_columns)


def _resolve(row: dict, folder: Path, row_columns: tuple[Column, ...]) -> dict:
    """Metadata row → example: file columns become the ``image`` / ``mask`` paths (None stays None)."""
    out = {}
    for column in row_columns:
        value = row[column.name]
        if column.kind == FILE:
            out[feature_name(column)] = str(folder / value) if value else None
        elif column.kind == PAIRS:
            out[column.name] = [_resolve(pair, folder, image_pair_columns()) for pair in value]
        else:
            # a folder built before the split rename says validate
            out[column.name] = canonical_split(value) if column.name == "split" else value
    return out
