"""The built dataset's split is ``validation`` (the Hugging Face name); ``validate`` (MIMIC-CXR's split CSV, folders
and work folders built before the rename) and ``val`` (the authors' release) are still read as that split."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard

from mimic_ils.builder import MimicIls
from mimic_ils.orchestration import build
from mimic_ils.orchestration.workdir import WorkDir, read_checked_json, write_checked_json
from mimic_ils.orchestration.writer import read_split_pairs
from mimic_ils.release import import_release
from mimic_ils.schema import SPLITS, Study, canonical_split
from mimic_ils.stats import compute_stats

sys.path.insert(0, str(Path(__file__).parent))
from _build_helpers import FakeStages  # noqa: E402
from test_release_import import release  # noqa: E402, F401  (the release fixture)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("splits") / "out"
    build(None, out, stages=FakeStages(12), progress=False)
    return out


def test_names_and_aliases():
    assert SPLITS == ("train", "validation", "test")
    assert [canonical_split(name) for name in ("validate", "val", "validation", "train", "")] == [
        "validation", "validation", "validation", "train", ""]
    assert Study("1", "2", "validate", "r.txt").split == "validation"


def test_a_build_writes_validation_everywhere(built):
    assert sorted(path.name for path in built.iterdir() if path.is_dir()) == ["test", "train", "validation"]
    card = DatasetCard.load(built / "README.md")
    assert {files["split"] for entry in card.data.configs for files in entry["data_files"]} == set(SPLITS)
    assert set(json.loads((built / "build_info.json").read_text())["counts"]) == set(SPLITS)
    parquets = [*built.glob("*/metadata.parquet"), *built.glob("*/images/metadata.parquet"), built / "ledger.parquet"]
    for path in parquets:
        assert "validate" not in set(pq.read_table(path, columns=["split"]).column("split").to_pylist()), path
    assert set(datasets.load_dataset(str(built), "pairs")) == set(SPLITS)


def _as_old_folder(built: Path, old: Path) -> Path:
    """A copy of ``built`` as a build from before the rename wrote it (``validate/``, its card and rows)."""
    shutil.copytree(built, old)
    (old / "validation").rename(old / "validate")
    for path in [*old.glob("validate/metadata.parquet"), *old.glob("validate/images/metadata.parquet")]:
        table = pq.read_table(path)
        index = table.schema.get_field_index("split")
        pq.write_table(table.set_column(index, "split", [["validate"] * table.num_rows]), path)
    card = (old / "README.md").read_text()
    (old / "README.md").write_text(card.replace("split: validation", "split: validate")
                                   .replace("validation/", "validate/"))
    return old


def test_a_folder_built_before_the_rename_still_loads(built, tmp_path):
    old = _as_old_folder(built, tmp_path / "old")
    assert set(datasets.load_dataset(str(old), "pairs")) == {"train", "validate", "test"}  # its own card
    builder = MimicIls(config_name="pairs", data_dir=str(old), cache_dir=str(tmp_path / "cache"))
    builder.download_and_prepare()
    dataset = builder.as_dataset()
    assert set(dataset) == set(SPLITS) and set(dataset["validation"]["split"]) == {"validation"}
    new = datasets.load_dataset(str(built), "pairs", split="validation")
    assert dataset["validation"]["id"] == new["id"]
    assert compute_stats(old)["counts"] == compute_stats(built)["counts"]
    (folder, rows), = read_split_pairs(old, "validate")
    assert folder.name == "validate" and rows == read_split_pairs(old, "validation")[0][1]
    assert {row.split for row in rows} == {"validation"}
    assert [(f.name, r) for f, r in read_split_pairs(built, "validate")] == [
        (f.name, r) for f, r in read_split_pairs(built, "validation")]


def test_a_work_folder_from_before_the_rename_is_reused(tmp_path):
    work = WorkDir(tmp_path / "work")
    first = build(None, tmp_path / "first", stages=FakeStages(12), work=work.root, progress=False)["info"]
    renamed = 0
    for path in sorted(work.root.glob("studies/*.json")):
        text = json.dumps(read_checked_json(path))
        if '"validation"' in text:
            write_checked_json(path, json.loads(text.replace('"validation"', '"validate"')))
            renamed += 1
    assert renamed
    result = build(None, tmp_path / "second", stages=FakeStages(12), work=work.root, progress=False)
    assert result["processed"]["computed"] == 0 and result["info"]["counts"] == first["counts"]
    assert (tmp_path / "second" / "validation" / "metadata.parquet").is_file()


@pytest.mark.parametrize("key", ["val", "validate", "validation"])
def test_the_release_val_split_imports_as_validation(key, release, tmp_path):  # noqa: F811
    release_dir, images_root, data = release
    data = {"train": data["train"], key: data["test"]}
    (release_dir / "mimic_ils_instruction_answer.json").write_text(json.dumps(data))
    info = import_release(release_dir, images_root, tmp_path / "out")
    assert set(info["counts"]) == {"train", "validation"}
    assert (tmp_path / "out" / "validation" / "images" / "bbb-222.jpg").is_file()
