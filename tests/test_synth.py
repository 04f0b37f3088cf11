"""The synthetic cohort: MIMIC layout, sidecar contract, report/phantom consistency, variant coverage, determinism."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re

import numpy as np
import pytest
from _cohort import make_cohort

from mimic_ils import cli, synth
from mimic_ils.dicom import read_dicom
from mimic_ils.schema import LESION_TYPES, LUNG_LABELS, CohortError
from mimic_ils.synth_phrases import HEDGE_CUES, LESION_WORDS

FOCAL = ("atelectasis", "pneumonia", "consolidation", "opacity")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory, n_studies=12, seed=1)


@pytest.fixture(scope="module")
def truth(cohort):
    return synth.load_truth(cohort)


def _csv(path):
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _section(report: str, name: str) -> str:
    """The chosen section's text, cut the way MIMIC-CXR's section parser does for our layouts."""
    if name == "findings":
        return report.split(" FINDINGS:", 1)[1].split(" IMPRESSION:", 1)[0]
    if name == "impression":
        return report.split(" IMPRESSION:", 1)[1]
    return report.split("\n \n")[-1]


def _squash(text: str) -> str:
    return " ".join(text.split())


def test_mimic_layout_and_csvs(cohort, truth):
    metadata, splits = _csv(cohort / synth.METADATA_NAME), _csv(cohort / synth.SPLIT_NAME)
    assert list(metadata[0]) == list(synth.METADATA_COLUMNS) and list(splits[0]) == list(synth.SPLIT_COLUMNS)
    assert len(truth) == 12 and len(metadata) == len(splits) == sum(len(r["images"]) for r in truth.values())
    for row in metadata:
        assert row["subject_id"].isdigit() and row["study_id"].isdigit() and len(row["dicom_id"].split("-")) == 5
        folder = cohort / "files" / f"p{row['subject_id'][:2]}" / f"p{row['subject_id']}"
        assert (folder / f"s{row['study_id']}" / f"{row['dicom_id']}.dcm").is_file()
        report = (folder / f"s{row['study_id']}.txt").read_text(encoding="ascii")
        assert report.startswith(" " * 33 + "FINAL REPORT\n EXAMINATION:")
        assert int(row["Rows"]) != int(row["Columns"])
    assert {row["split"] for row in splits} == {"train", "validate", "test"}
    assert list(truth) == sorted(truth)


def test_sidecar_arrays_match_the_contract_and_the_reader(cohort, truth):
    # seed 1 puts all seven lesion types, all three sections and all four views into the 12 studies
    assert {lesion["lesion_type"] for record in truth.values() for lesion in record["lesions"]} == set(LESION_TYPES)
    for record in truth.values():
        for image in record["images"]:
            path = cohort / "files" / f"p{record['subject_id'][:2]}" / f"p{record['subject_id']}" / \
                f"s{record['study_id']}" / f"{image['dicom_id']}.dcm"
            pixels = read_dicom(path)
            assert pixels.shape == (image["height"], image["width"])
            if image["view"] not in ("PA", "AP"):
                assert not (cohort / synth.SIDECAR_DIR / f"{image['dicom_id']}.npz").exists()
                continue
            gt = synth.load_image_truth(cohort, image["dicom_id"])
            shape = (image["height"], image["width"])
            assert gt.display.dtype == gt.normal.dtype == np.uint8 and gt.display.shape == shape
            assert gt.anatomy.shape == (15, *shape) and gt.anatomy.dtype == bool
            count = len(record["lesions"])
            assert gt.lesions.shape == (count, *shape) and gt.boxes.shape == (count, 4)
            assert np.abs(pixels.astype(int) - gt.display).max() <= 2
            lungs = gt.lung_right | gt.lung_left
            assert not (gt.lung_right & gt.lung_left).any() and not (lungs & gt.heart).any()
            assert gt.lung_right[:, : shape[1] // 2].sum() > 0.9 * gt.lung_right.sum()  # patient's right = image left
            np.testing.assert_array_equal(gt.anatomy[LUNG_LABELS.index("right lung")], gt.lung_right)
            _check_lesions(record, gt)


def _check_lesions(record, gt):
    anatomy = dict(zip(LUNG_LABELS, gt.anatomy, strict=True))
    difference = gt.display.astype(int) - gt.normal.astype(int)
    lungs = gt.lung_right | gt.lung_left
    lesion_union = np.zeros_like(lungs)
    for lesion, mask, box in zip(record["lesions"], gt.lesions, gt.boxes, strict=True):
        assert mask.any(), lesion
        rows, cols = np.nonzero(mask)
        np.testing.assert_array_equal(box, [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        lesion_union |= mask
        if lesion["lesion_type"] == "cardiomegaly":
            np.testing.assert_array_equal(mask, gt.heart)
            continue
        allowed = np.logical_or.reduce([anatomy[label] for label in lesion["locations"]])
        assert not (mask & ~allowed).any(), f"{lesion['lesion_type']} leaves its locations {lesion['locations']}"
        assert difference[mask].mean() >= 25.5, "lesions must clear the anomaly threshold 0.10 * 255"
        if lesion["lesion_type"] in FOCAL + ("effusion",):
            assert difference[mask].max() >= 60, "focal lesions are clearly brighter at their core"
    outside = ~lesion_union & ~gt.heart & lungs
    if not any(lesion["lesion_type"] == "cardiomegaly" for lesion in record["lesions"]):
        assert np.abs(difference[outside]).max() <= 26, "the pseudo-normal differs only at the lesions"


def test_reports_carry_each_lesion_consistently(cohort, truth):
    for record in truth.values():
        report = (cohort / "files" / f"p{record['subject_id'][:2]}" / f"p{record['subject_id']}" /
                  f"s{record['study_id']}.txt").read_text()
        section = _squash(_section(report, record["section"]))
        present = {lesion["lesion_type"] for lesion in record["lesions"]}
        assert not present & set(record["negated"])
        for lesion in record["lesions"]:
            phrase = lesion["phrase"]
            assert phrase in section, (phrase, section)
            lowered = phrase.lower()
            assert any(word in lowered for word in LESION_WORDS[lesion["lesion_type"]])
            assert any(cue in lowered for cue in HEDGE_CUES) == (lesion["certainty"] == "tentative"), phrase
            if lesion["side"] in ("right", "left"):
                assert re.search(rf"\b{lesion['side']}\b", lowered) or "retrocardiac" in lowered, phrase
            elif lesion["side"] == "bilateral":
                assert re.search(r"bilateral|both|bibasilar", lowered), phrase


def test_plans_cover_every_variant():
    plans = synth.plan_cohort(80, seed=0)
    images = [image for plan in plans for image in plan.images]
    assert {(i.photometric, i.bits_stored, i.voi) for i in images} == {
        (p, b, v) for p in ("MONOCHROME1", "MONOCHROME2") for b in (12, 16) for v in ("lut", "window", "none")}
    assert {i.view for i in images} == {"PA", "AP", "LATERAL", "LL"}
    assert any(sum(i.is_frontal for i in plan.images) == 2 for plan in plans)
    assert all(any(i.is_frontal for i in plan.images) for plan in plans)
    assert {lesion.lesion_type for plan in plans for lesion in plan.lesions} == set(LESION_TYPES)
    assert {plan.section for plan in plans} == {"findings", "impression", "last_paragraph"}
    assert {lesion.certainty for plan in plans for lesion in plan.lesions} == {"definitive", "tentative"}
    assert {lesion.side for plan in plans for lesion in plan.lesions} == {"right", "left", "bilateral", None}
    assert any(not plan.lesions for plan in plans) and any(plan.other_findings for plan in plans)
    assert [plan.study_id for plan in plans] == sorted(plan.study_id for plan in plans)
    assert sum(plan.split == "train" for plan in plans) > 0.6 * len(plans)


def test_anatomy_zones_and_lobes_partition_each_lung(cohort, truth):
    dicom_id = next(i["dicom_id"] for r in truth.values() for i in r["images"] if i["view"] in ("PA", "AP"))
    gt = synth.load_image_truth(cohort, dicom_id)
    for side, lung in (("right", gt.lung_right), ("left", gt.lung_left)):
        zones = [gt.anatomy[i] for i, label in enumerate(LUNG_LABELS) if label.startswith(side) and "zone" in label
                 or label == f"{side} lung base"]
        lobes = [gt.anatomy[i] for i, label in enumerate(LUNG_LABELS) if label.endswith(f"lobe {side}")]
        for parts in (zones, lobes):
            assert all(part.any() for part in parts)
            np.testing.assert_array_equal(np.sum(parts, axis=0), lung.astype(int))  # disjoint and covering


def _digest(root):
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    first = _digest(synth.generate_cohort(tmp_path / "a", 3, seed=5, workers=1))
    again = _digest(synth.generate_cohort(tmp_path / "b", 3, seed=5, workers=2))
    other = _digest(synth.generate_cohort(tmp_path / "c", 3, seed=6, workers=1))
    assert first == again
    assert set(first) != set(other)
    assert first[synth.METADATA_NAME] != other[synth.METADATA_NAME]


def test_refuses_a_non_empty_folder_and_a_missing_sidecar(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(CohortError, match="not empty"):
        synth.generate_cohort(tmp_path, 1, 0)
    with pytest.raises(CohortError, match="no phantom_truth sidecar"):
        synth.load_truth(tmp_path)
    with pytest.raises(CohortError, match="no phantom_truth sidecar"):
        synth.load_image_truth(tmp_path, "x")


def test_synth_command(tmp_path, capsys):
    assert cli.main(["synth", "--out", str(tmp_path / "c"), "--studies", "2", "--seed", "1", "--workers", "1"]) == 0
    assert "wrote 2 synthetic studies" in capsys.readouterr().out
    lines = (tmp_path / "c" / synth.SIDECAR_DIR / "truth.jsonl").read_text().splitlines()
    assert [json.loads(line)["study_id"] for line in lines] == sorted(json.loads(line)["study_id"] for line in lines)
    assert cli.main(["synth", "--out", str(tmp_path / "c"), "--studies", "2"]) == 1


_HEADER = re.compile(r"\n ([A-Z ()/,-]+):\s")  # the MIMIC-CXR section header pattern (MIT-LCP section parser)


def test_report_headers_follow_mimic_layout(cohort, truth):
    """The section the sidecar names is the one MIMIC-CXR's section rules pick: findings, else impression, else
    the paragraph after the last blank line (blank lines hold one space, as in MIMIC-CXR)."""
    for record in truth.values():
        report = (cohort / "files" / f"p{record['subject_id'][:2]}" / f"p{record['subject_id']}" /
                  f"s{record['study_id']}.txt").read_text()
        headers = [match.group(1) for match in _HEADER.finditer(report)]
        assert headers[0] == "EXAMINATION" and "COMPARISON" in headers
        assert headers[1] in ("INDICATION", "HISTORY", "REASON FOR EXAMINATION", "COMPARISON")
        expected = {"findings": ["FINDINGS", "IMPRESSION"], "impression": ["IMPRESSION"], "last_paragraph": []}
        assert [h for h in headers if h in ("FINDINGS", "IMPRESSION")] == expected[record["section"]]
        if record["section"] == "last_paragraph":
            last_section = report[list(_HEADER.finditer(report))[-1].end():]
            assert "\n \n" in last_section and all(_squash(lesion["phrase"]) in _squash(
                last_section.split("\n \n", 1)[1]) for lesion in record["lesions"])
