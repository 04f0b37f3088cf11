"""The typed rows (``mimic_ils.rows``): JSON round trips, the schemas and features derived from them matching a built
folder, the pure ``decide_study`` and its ``persist``, and the one folder writer shared by the merge and the release
import."""

from __future__ import annotations

import ast
import sys
from dataclasses import replace
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest

from mimic_ils import files
from mimic_ils.features import feature_name, images_features, pairs_features
from mimic_ils.files import FileRecord
from mimic_ils.orchestration import build
from mimic_ils.orchestration.folder import DatasetFolder
from mimic_ils.orchestration.study import ImageOutcome, decide_study, load_study_result, persist
from mimic_ils.orchestration.workdir import WorkDir, mask_digest
from mimic_ils.orchestration.writer import IMAGES_SCHEMA, LEDGER_SCHEMA, PAIRS_SCHEMA, image_rows
from mimic_ils.rows import (
    COUNTED_COLUMNS,
    STUDY_ARTIFACT_VERSION,
    TALLIED_COLUMNS,
    DroppedFinding,
    Failure,
    ImageFate,
    ImageRow,
    LedgerRow,
    PairRow,
    StudyResult,
    columns,
    image_pair_columns,
    split_counts,
)
from mimic_ils.schema import (
    Finding,
    ImageRecord,
    MimicIlsError,
    Pair,
    Section,
    StructuredReport,
    Study,
)

sys.path.insert(0, str(Path(__file__).parent))
from _build_helpers import FakeStages  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def pair_row(dicom_id: str = "d1", index: int = 0, polarity: str = "positive", **changes) -> PairRow:
    positive = polarity == "positive"
    row = PairRow(
        id=f"{dicom_id}-{index:03d}", image_file_name=f"images/{dicom_id}.png",
        mask_file_name="masks/abc.png" if positive else None,
        instruction="Segment the effusion in the right lung base." if positive else "Segment the edema.",
        answer="[SEG]" if positive else "[SEG] There is no edema.", target="effusion" if positive else "edema",
        lesion="effusion" if positive else "edema", question_type="basic" if positive else "global",
        polarity=polarity, locations=("right lung base",) if positive else (), certainty=None, study_id="5001",
        dicom_id=dicom_id, split="train",
    )
    return replace(row, **changes)


# --- JSON round trips ---

@pytest.mark.parametrize("row", [
    pair_row(), pair_row(polarity="negative"), pair_row(certainty="tentative", locations=("left lung", "right lung")),
    LedgerRow("study", "5001", None, "train", "excluded", "report: report file is not valid UTF-8"),
    LedgerRow("image", "5001", "d1", "test", "used", None),
    ImageFate("d1", "PA", "used"), ImageFate("d2", "AP", "excluded", "vision: x (transient failure, …)", True),
    DroppedFinding("d1", "finding 2 (nodule)", "not one of the seven lesion types"),
    Failure("report", "no usable section"), Failure("vision", "timed out", transient=True),
], ids=lambda row: type(row).__name__)
def test_each_row_round_trips_through_json(row):
    assert type(row).from_json(row.to_json()) == row


def test_image_row_round_trips_and_holds_its_pairs_per_image_columns_only():
    pairs = (pair_row(index=0, mask_file_name="images/masks/abc.png"), pair_row(index=1, polarity="negative"))
    row = image_rows(pairs)[0]  # pairs-config rows: file names relative to the split folder
    assert isinstance(row, ImageRow) and row.image_file_name == "d1.png"
    assert row.pairs[0].mask_file_name == "masks/abc.png"  # relative to images/
    data = row.to_json()
    assert list(data["pairs"][0]) == [column.name for column in image_pair_columns()]
    assert "study_id" not in data["pairs"][0] and data["pairs"][1]["mask_file_name"] is None
    assert ImageRow.from_json(data) == row


def test_study_result_round_trips_the_artifact():
    result = StudyResult(
        "5001", "100", "train", "used", None,
        images=(ImageFate("d1", "PA", "used"), ImageFate("d2", "LATERAL", "excluded", "qc: view LATERAL …")),
        pairs=(pair_row(), pair_row(index=1, polarity="negative")),
        findings=(DroppedFinding("d1", "finding 2 (nodule)", "not one of the seven lesion types"),),
        files={"masks/abc.png": FileRecord("00" * 32, 12), "images/d1.png": FileRecord("ff" * 32, 34)},
        inputs={"report": "ab" * 32, "images": {"d1": "cd" * 32}}, transient=True,
    )
    data = result.to_json()
    assert data["version"] == STUDY_ARTIFACT_VERSION and list(data["files"]) == ["images/d1.png", "masks/abc.png"]
    assert StudyResult.from_json(data) == result
    assert StudyResult.from_json({**data, "version": STUDY_ARTIFACT_VERSION - 1}) is None  # an older work folder
    assert StudyResult.from_json({**data, "files": {"images/d1.png": "ab" * 32}}) is None  # not a FileRecord
    assert StudyResult.from_json(None) is None


def test_failure_line_is_the_ledger_reason():
    assert Failure("vision", "no cues produced").line == "vision: no cues produced"
    assert str(Failure("report", "LLM down", transient=True)) == (
        "report: LLM down (transient failure, retried next run)")


def test_split_counts_are_defined_on_the_counted_columns():
    rows = [pair_row("d1", 0), pair_row("d1", 1, "negative"), pair_row("d2", 0, mask_file_name="masks/x.png"),
            pair_row("d3", 0, study_id="5002", mask_file_name="masks/x.png")]
    values = {name: [getattr(row, name) for row in rows] for name in COUNTED_COLUMNS}
    assert split_counts(values) == {"pairs": 4, "positive": 3, "negative": 1, "images": 3, "masks": 2, "studies": 2}
    names = {column.name for column in columns(PairRow)}
    assert set(COUNTED_COLUMNS) <= names and set(TALLIED_COLUMNS) <= names


# --- the schemas and features derived from the rows are what a built folder has ---

@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MIMIC_ILS_CODE_COMMIT", "0" * 40)
        patch.delenv("WORLD_SIZE", raising=False)
        out = tmp_path_factory.mktemp("rows") / "out"
        build(None, out, stages=FakeStages(8), progress=False)
    return out


def test_arrow_schemas_derived_from_the_rows_match_the_built_folder(built):
    pairs = pq.read_schema(built / "train" / "metadata.parquet")
    assert pairs.equals(PAIRS_SCHEMA) and pairs.names == [column.name for column in columns(PairRow)]
    assert pq.read_schema(built / "train" / "images" / "metadata.parquet").equals(IMAGES_SCHEMA)
    assert pq.read_schema(built / "ledger.parquet").equals(LEDGER_SCHEMA)
    assert LEDGER_SCHEMA.names == [column.name for column in columns(LedgerRow)]
    rows = pq.read_table(built / "train" / "metadata.parquet").to_pylist()
    assert rows and [PairRow.from_json(row).to_json() for row in rows] == rows
    images = pq.read_table(built / "train" / "images" / "metadata.parquet").to_pylist()
    assert [ImageRow.from_json(row).to_json() for row in images] == images


def test_features_derived_from_the_rows_are_what_load_dataset_gives(built):
    pairs = datasets.load_dataset(str(built), "pairs", split="train")
    images = datasets.load_dataset(str(built), "images", split="train")
    assert pairs.features == pairs_features() and images.features == images_features()
    assert list(pairs.features) == [feature_name(column) for column in columns(PairRow)]
    assert list(pairs.features)[:3] == ["id", "image", "mask"]
    assert list(images.features["pairs"].feature) == [feature_name(column) for column in image_pair_columns()]


# --- decide_study is pure; persist writes what it names ---

def _study(*images: tuple[str, str]) -> Study:
    records = tuple(ImageRecord(dicom_id, "100", "5001", view, f"files/{dicom_id}.dcm") for dicom_id, view in images)
    return Study("100", "5001", "train", "files/s5001.txt", records)


REPORT = StructuredReport(Section("findings", "Right pleural effusion. No edema."), (
    Finding("effusion", 1, "positive", "definitive", "right base", "effusion", "effusion", ("right lung base",)),
))


def _outcome(dicom_id: str, *, positive: bool) -> ImageOutcome:
    common = {"study_id": "5001", "dicom_id": dicom_id}
    negative = Pair("Segment the edema.", "[SEG] There is no edema.", "edema", "edema", "global", "negative", (),
                    None, None, **common)
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    if not positive:
        return ImageOutcome(dicom_id, (negative,), {}, (), b"png of " + dicom_id.encode())
    positive_pair = Pair("Segment the effusion in the right lung base.", "[SEG]", "effusion", "effusion", "basic",
                         "positive", ("right lung base",), None, "m0", **common)
    dropped = (DroppedFinding(dicom_id, "finding 2 (nodule)", "not one of the seven lesion types"),)
    return ImageOutcome(dicom_id, (positive_pair, negative), {"m0": mask}, dropped, b"png of " + dicom_id.encode())


@pytest.fixture
def no_writes(monkeypatch, tmp_path):
    """Any file write through mimic_ils.files (the one writer) fails the test; the folder must stay empty."""
    def refuse(path, data):
        raise AssertionError(f"decide_study wrote {path}")

    monkeypatch.setattr(files, "atomic_write_bytes", refuse)
    monkeypatch.chdir(tmp_path)
    yield
    assert list(tmp_path.iterdir()) == []


def test_decide_study_with_a_lateral_image(no_writes):
    study = _study(("d2", "LATERAL"), ("d1", "PA"))
    result = decide_study(study, REPORT, {"d1": _outcome("d1", positive=True)}, inputs={"report": "k"})
    assert (result.fate, result.reason, result.transient, result.inputs) == ("used", None, False, {"report": "k"})
    assert result.images == (ImageFate("d1", "PA", "used"),
                             ImageFate("d2", "LATERAL", "excluded", "qc: view LATERAL is not frontal (PA/AP)"))
    assert [row.id for row in result.pairs] == ["d1-000", "d1-001"] and result.files == {}
    mask_file = f"masks/{mask_digest(_outcome('d1', positive=True).masks['m0'])}.png"
    assert result.pairs[0].file_names == ("images/d1.png", mask_file) and result.pairs[1].mask_file_name is None
    assert {row.split for row in result.pairs} == {"train"} and len(result.findings) == 1


def test_decide_study_with_a_report_failure(no_writes):
    study = _study(("d1", "PA"), ("d2", "LATERAL"))
    failure = Failure("report", "LLM server refused the connection", transient=True)
    result = decide_study(study, failure, {})
    assert (result.fate, result.reason) == ("excluded", failure.line) and result.transient
    assert result.images[0] == ImageFate("d1", "PA", "excluded", "study excluded (report failed)")
    assert result.pairs == () and result.findings == ()


def test_decide_study_moves_the_negatives_to_another_image(no_writes):
    study = _study(("d1", "PA"), ("d2", "AP"), ("d3", "PA"))
    outcomes = {"d1": _outcome("d1", positive=False), "d2": _outcome("d2", positive=True),
                "d3": Failure("vision", "timed out", transient=True)}
    result = decide_study(study, REPORT, outcomes)
    assert [row.id for row in result.pairs] == ["d1-000", "d2-000"]  # one edema negative in the study: d1's
    assert result.images[1] == ImageFate("d2", "AP", "used")
    assert result.images[0] == ImageFate("d1", "PA", "used")
    assert result.images[2] == ImageFate("d3", "PA", "excluded", "vision: timed out (transient failure, retried next "
                                                                 "run)", True)
    assert result.fate == "used" and result.transient
    swapped = {"d1": _outcome("d1", positive=True), "d2": _outcome("d2", positive=False)}
    moved = decide_study(_study(("d1", "PA"), ("d2", "PA")), REPORT, swapped)
    assert moved.images[1] == ImageFate("d2", "PA", "excluded",
                                        "pairs: its negatives are given by another image of the study")
    assert {row.dicom_id for row in moved.pairs} == {"d1"}


def test_decide_study_without_any_usable_image(no_writes):
    result = decide_study(_study(("d1", "PA"), ("d2", "LATERAL")), REPORT, {})
    assert (result.fate, result.reason) == ("excluded", "no usable frontal image (vision: no cues produced)")
    empty = decide_study(_study(), REPORT, {})
    assert (empty.fate, empty.reason) == ("excluded", "ingest: study has no image")


def test_an_outcome_naming_a_mask_grounding_did_not_give_is_refused():
    pair = replace(_outcome("d1", positive=True).pairs[0], mask_key="m9")
    with pytest.raises(MimicIlsError, match="names mask 'm9' that grounding did not give"):
        ImageOutcome("d1", (pair,), {}, (), b"png")


def test_persist_writes_what_the_result_names_and_loads_back(tmp_path):
    work = WorkDir(tmp_path / "work")
    study = _study(("d1", "PA"), ("d2", "PA"))
    outcomes = {"d1": _outcome("d1", positive=True), "d2": _outcome("d2", positive=False)}
    result = decide_study(study, REPORT, outcomes)
    records = persist(work, result, outcomes)
    mask_file = result.pairs[0].mask_file_name
    assert sorted(records) == ["images/d1.png", mask_file]  # d2's negative went: its image is not written
    assert not (work.root / "images" / "d2.png").exists()
    assert (work.root / "images" / "d1.png").read_bytes() == b"png of d1"
    assert records[mask_file] == FileRecord.of_file(work.root / mask_file)
    assert load_study_result(work, "5001", full_check=True) == replace(result, files=records)
    (work.root / mask_file).write_bytes(b"x")
    assert load_study_result(work, "5001") is None and not work.study_path("5001").exists()


# --- one folder writer, used by the merge and the release import ---

def _imports(module: Path) -> list[ast.ImportFrom]:
    return [node for node in ast.walk(ast.parse(module.read_text(encoding="utf-8")))
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("mimic_ils", "rosalia_hf"))]


def test_no_module_imports_a_private_name_of_another():
    private = [f"{path.relative_to(ROOT)}: from {node.module} import {alias.name}"
               for package in ("mimic_ils", "rosalia_hf") for path in sorted((ROOT / package).rglob("*.py"))
               for node in _imports(path) for alias in node.names
               if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert private == []


@pytest.mark.parametrize("module", ["mimic_ils/orchestration/merge.py", "mimic_ils/release.py"])
def test_merge_and_release_write_their_folder_through_the_dataset_folder(module):
    imported = {alias.name for node in _imports(ROOT / module) for alias in node.names}
    assert "DatasetFolder" in imported
    assert not imported & {"write_parquet", "write_split", "finish_output", "new_partial", "render_card",
                           "atomic_write_bytes", "place_file", "summarize_ledger"}
    assert "mimic_ils.orchestration.merge" not in {node.module for node in _imports(ROOT / "mimic_ils/release.py")}


def test_dataset_folder_writes_a_loadable_folder_and_needs_a_ledger(tmp_path):
    from PIL import Image

    source = tmp_path / "d1.png"
    Image.fromarray(np.full((8, 8), 90, np.uint8)).save(source)
    mask = np.zeros((8, 8), bool)
    mask[1:4, 1:4] = True
    rows = [pair_row(mask_file_name=f"masks/{mask_digest(mask)}.png"), pair_row(index=1, polarity="negative")]
    unfinished = DatasetFolder.begin(tmp_path / "unfinished")
    unfinished.add_split("train", rows[1:], files={"images/d1.png": source})
    with pytest.raises(MimicIlsError, match="needs at least one split and a ledger"):
        unfinished.finish({})
    folder = DatasetFolder.begin(tmp_path / "out")
    folder.write_png("train", rows[0].mask_file_name, mask)
    folder.add_split("train", rows, files={"images/d1.png": source})
    folder.add_ledger([LedgerRow("study", "5001", None, "train", "used", None)])
    info = folder.finish({"code_version": "test"})
    assert info["counts"] == {"train": {"pairs": 2, "positive": 1, "negative": 1, "images": 1, "masks": 1,
                                        "studies": 1, "conversations": 1, "question_types": {"basic": 1, "global": 1}}}
    assert info["ledger"]["fates"] == {"study:used": 1}
    loaded = datasets.load_dataset(str(tmp_path / "out"), "pairs", split="train")
    assert loaded.features == pairs_features() and loaded.num_rows == 2
    assert np.array_equal(np.asarray(loaded[0]["mask"]) > 0, mask)
    assert not (tmp_path / ".out.partial").exists() and (tmp_path / "out" / "mimic_ils_manifest.json").is_file()
