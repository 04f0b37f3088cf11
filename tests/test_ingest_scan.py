"""MIMIC-CXR ingest and ``mimic-ils scan``: index, reports, bad roots, and a cohort with planted faults."""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil

import pydicom
import pytest
from _cohort import copy_cohort, make_cohort

from mimic_ils import cli, ingest
from mimic_ils.scan import scan_cohort
from mimic_ils.schema import SPLITS, CohortError, ReportError, canonical_split
from mimic_ils.synth import METADATA_NAME, SPLIT_NAME, load_truth


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory, n_studies=12, seed=1)


def _rows(path):
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _write_rows(path, rows):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_bytes(gzip.compress(text.getvalue().encode()))


def test_iter_studies_matches_the_truth(cohort):
    studies = list(ingest.iter_studies(cohort))
    truth = load_truth(cohort)
    assert [study.study_id for study in studies] == sorted(truth)
    for study in studies:
        record = truth[study.study_id]
        assert (study.subject_id, study.split) == (record["subject_id"], canonical_split(record["split"]))
        assert study.report_path == f"files/p{study.subject_id[:2]}/p{study.subject_id}/s{study.study_id}.txt"
        assert {image.dicom_id: image.view for image in study.images} == {
            image["dicom_id"]: image["view"] for image in record["images"]}
        assert {image.view for image in study.frontal_images} <= {"PA", "AP"}
        assert all((cohort / image.path).is_file() and image.rows > 0 for image in study.images)
        assert "FINAL REPORT" in ingest.read_report(cohort, study)


def test_uncompressed_csvs_and_prefixed_ids_are_accepted(cohort, tmp_path):
    root = copy_cohort(cohort, tmp_path / "plain")
    for name in (METADATA_NAME, SPLIT_NAME):
        rows = _rows(root / name)
        for row in rows:
            row["subject_id"], row["study_id"] = f"p{row['subject_id']}", f"s{row['study_id']}"
        (root / name).unlink()
        with open(root / name[: -len(".gz")], "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    assert list(ingest.iter_studies(root)) == list(ingest.iter_studies(cohort))


@pytest.mark.parametrize("damage", ["no_metadata", "no_split", "no_files", "not_a_dir", "bad_columns"])
def test_not_a_mimic_root(cohort, tmp_path, damage, capsys):
    root = tmp_path / "root"
    if damage == "not_a_dir":
        root.write_text("x")
    else:
        copy_cohort(cohort, root)
        if damage == "no_metadata":
            (root / METADATA_NAME).unlink()
        elif damage == "no_split":
            (root / SPLIT_NAME).unlink()
        elif damage == "no_files":
            shutil.rmtree(root / "files")
        else:
            (root / METADATA_NAME).write_bytes(gzip.compress(b"a,b\n1,2\n"))
    with pytest.raises(CohortError):
        ingest.load_index(root)
    assert cli.main(["scan", str(root)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("mimic-ils scan:") and "\n" not in error and "Traceback" not in error


def test_read_report_errors(cohort, tmp_path):
    root = copy_cohort(cohort, tmp_path / "r")
    study = next(ingest.iter_studies(root))
    (root / study.report_path).write_bytes("Opacit\xe9 basale droite.".encode("latin-1"))
    with pytest.raises(ReportError, match="not UTF-8"):
        ingest.read_report(root, study)
    (root / study.report_path).unlink()
    with pytest.raises(ReportError, match="missing report"):
        ingest.read_report(root, study)


def _plant_faults(root):
    """Damage a copy of the cohort; return {path: reason fragment} of every fault planted."""
    studies = list(ingest.iter_studies(root))
    images = [image for study in studies for image in study.images]
    expected = {}
    (root / studies[0].report_path).unlink()
    expected[studies[0].report_path] = "missing report"
    (root / studies[1].report_path).write_bytes(b"FINDINGS: opacit\xe9 in the right lung base.\n")
    expected[studies[1].report_path] = "not UTF-8"
    (root / images[2].path).unlink()
    expected[images[2].path] = "missing DICOM: metadata row without file"
    data = (root / images[3].path).read_bytes()
    (root / images[3].path).write_bytes(data[: len(data) // 2])
    expected[images[3].path] = "unreadable DICOM"
    (root / images[4].path).write_bytes(b"\x00" * 128 + b"NOT A DICOM" * 10)
    expected[images[4].path] = "unreadable DICOM: not a DICOM file"
    ds = pydicom.dcmread(root / images[5].path)
    del ds.PixelData
    ds.save_as(root / images[5].path)
    expected[images[5].path] = "unreadable DICOM: no pixel data"
    ds = pydicom.dcmread(root / images[6].path)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.save_as(root / images[6].path)
    expected[images[6].path] = "unreadable DICOM: unsupported photometric interpretation"
    lateral_only = studies[-1]
    rows = _rows(root / METADATA_NAME)
    for row in rows:
        if row["study_id"] == lateral_only.study_id:
            row["ViewPosition"] = "LATERAL"
    ghost = dict(rows[0], dicom_id="ffffffff-00000000-00000000-00000000-00000000")
    _write_rows(root / METADATA_NAME, [*rows, ghost, dict(rows[1])])
    expected[f"{METADATA_NAME}:{len(rows) + 3}"] = "duplicate metadata row"
    expected[lateral_only.report_path[: -len(".txt")]] = "study without frontal image"
    ghost_path = f"{ingest.study_folder(ghost['subject_id'], ghost['study_id'])}/{ghost['dicom_id']}.dcm"
    expected[ghost_path] = "missing DICOM"  # metadata row without file, and without a split entry
    orphan = f"{ingest.study_folder(studies[7].subject_id, studies[7].study_id)}/orphan.dcm"
    shutil.copy(root / images[0].path, root / orphan)
    expected[orphan] = "DICOM file without metadata row"
    return expected, len(images) + 1, len(studies)


def test_scan_reports_every_planted_fault_and_counts_the_rest(cohort, tmp_path):
    clean = scan_cohort(cohort)
    assert clean.problems == [] and clean.studies == 12 and clean.readable_images == clean.images
    root = copy_cohort(cohort, tmp_path / "faulty")
    expected, n_images, n_studies = _plant_faults(root)
    summary = scan_cohort(root)
    reasons: dict[str, list[str]] = {}
    for problem in summary.problems:
        assert "\n" not in problem.reason and "Traceback" not in problem.reason
        reasons.setdefault(problem.path, []).append(problem.reason)
    for path, fragment in expected.items():
        assert any(fragment in reason for reason in reasons.get(path, [])), (path, fragment, reasons.get(path))
    extra = {path: reasons[path] for path in set(reasons) - set(expected)}
    assert all(found == ["study without readable frontal image"] for found in extra.values()), extra
    damaged = {path.rsplit("/", 1)[0] for path, fragment in expected.items() if "DICOM" in fragment}
    assert set(extra) <= damaged, "a study loses its frontal image only through a planted DICOM fault"
    assert summary.studies == n_studies and summary.images == n_images
    assert summary.readable_images == n_images - 6  # the ghost row, missing, truncated, corrupt, no pixels, palette
    assert sum(summary.splits.values()) == n_studies == clean.studies


def test_scan_command_json_and_text(cohort, capsys):
    assert cli.main(["scan", str(cohort), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"studies", "images", "frontal_images", "splits", "problems"} <= set(report)
    assert report["studies"] == 12 and report["problems"] == [] and set(report["splits"]) == set(SPLITS)
    assert report["frontal_images"] == sum(len(s.frontal_images) for s in ingest.iter_studies(cohort))
    assert cli.main(["scan", str(cohort)]) == 0
    text = capsys.readouterr().out
    assert "studies: 12" in text and "problems: 0" in text
