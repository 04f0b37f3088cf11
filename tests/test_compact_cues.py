"""The compact vision artifact folder (version 3): bit-packed masks, the pseudo-normal as a difference, checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _vision_helpers import cohort_with_truth

from mimic_ils.files import FileRecord, encode_png
from mimic_ils.orchestration import BuildConfig
from mimic_ils.orchestration.stages import ProjectStages
from mimic_ils.schema import BackendError, VisionCues
from mimic_ils.vision import base, runner
from mimic_ils.vision.runner import STATUS_EXISTS, STATUS_WRITTEN, VisionConfig, load_cues, run_cues


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    root, records = cohort_with_truth(tmp_path_factory)
    return root, records[:2]


@pytest.fixture(scope="module")
def direct(cohort) -> dict[str, VisionCues]:
    """The backends' own outputs, never written to disk."""
    root, records = cohort
    backends = runner.create_backends(VisionConfig.preset("phantom"), root)
    images = {record.dicom_id: runner._read_image(root, record) for record in records}
    computed = runner._compute_cues(images, backends, {})
    return {
        dicom_id: VisionCues(dicom_id, image, pseudo, lungs.lung_right, lungs.lung_left, lungs.heart, anatomy, boxes)
        for dicom_id, (image, lungs, pseudo, anatomy, boxes) in computed.items()
    }


def _written(cohort, folder: Path) -> Path:
    root, records = cohort
    statuses = run_cues(root, records, folder, VisionConfig.preset("phantom"))
    assert [status for _, status in statuses] == [STATUS_WRITTEN] * len(records)
    return folder


def _assert_same_cues(first: VisionCues, second: VisionCues) -> None:
    assert first.dicom_id == second.dicom_id and first.boxes == pytest.approx(second.boxes)
    for name in ("image", "pseudo_normal", "lung_right", "lung_left", "heart"):
        a, b = getattr(first, name), getattr(second, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert first.anatomy.keys() == second.anatomy.keys()
    assert all(np.array_equal(first.anatomy[label], second.anatomy[label]) for label in first.anatomy)


def write_version_2(folder: Path, cues: VisionCues) -> None:
    """The layout of MANIFEST_VERSION 2 (one PNG per mask, pseudo_normal.png), as the runner wrote it before."""
    files = {"image.png": cues.image, "pseudo_normal.png": cues.pseudo_normal, "lung_right.png": cues.lung_right,
             "lung_left.png": cues.lung_left, "heart.png": cues.heart}
    files.update({f"anatomy/{label.replace(' ', '_')}.png": mask for label, mask in cues.anatomy.items()})
    payloads = {name: encode_png(array) for name, array in files.items()}
    payloads["boxes.json"] = json.dumps([runner._box_dict(box) for box in cues.boxes], indent=1).encode()
    for name, data in payloads.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    manifest = {"version": 2, "dicom_id": cues.dicom_id, "height": cues.shape[0], "width": cues.shape[1],
                "backends": dict.fromkeys(base.STEPS, "phantom"),
                "files": {name: FileRecord.of_bytes(data).to_json() for name, data in payloads.items()}}
    (folder / runner.MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _folder_size(folder: Path) -> tuple[int, int]:
    files = [path for path in folder.rglob("*") if path.is_file()]
    return len(files), sum(path.stat().st_size for path in files)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (37, 53), (64, 40)])
def test_packed_masks_round_trip_at_odd_sizes_with_empty_full_and_strided_masks(shape) -> None:
    rng = np.random.default_rng(sum(shape))
    masks = {"empty": np.zeros(shape, bool), "full": np.ones(shape, bool), "noise": rng.random(shape) < 0.4}
    corner = np.zeros(shape, bool)
    corner[-1, -1] = True
    masks["corner"] = corner
    masks["strided"] = np.asfortranarray(rng.random(shape) < 0.6)
    masks["uint8 0/1"] = (rng.random(shape) < 0.5).astype(np.uint8)
    back = runner.unpack_masks(runner.pack_masks(masks, shape))
    assert list(back) == list(masks)
    for name, mask in masks.items():
        assert back[name].dtype == bool and back[name].shape == shape and back[name].flags.c_contiguous
        np.testing.assert_array_equal(back[name], mask.astype(bool), err_msg=name)


def test_packed_masks_refuse_a_mask_outside_the_frame() -> None:
    with pytest.raises(ValueError, match="frame"):
        runner.pack_masks({"a": np.zeros((4, 5), bool)}, (5, 4))


def test_pseudo_normal_round_trip_is_exact_across_the_uint8_range() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (41, 29), dtype=np.uint8)
    pseudo = image.copy()
    pseudo[5:30, 3:20] = rng.integers(0, 256, (25, 17), dtype=np.uint8)  # lower and higher: wraps mod 256
    pseudo[7, 4], image[7, 4] = 0, 255
    pseudo[8, 4], image[8, 4] = 255, 0
    back = runner.unpack_pseudo_normal(runner.pack_pseudo_normal(pseudo, image), image)
    assert back.dtype == np.uint8 and np.array_equal(back, pseudo)
    assert np.array_equal(runner.unpack_pseudo_normal(runner.pack_pseudo_normal(image, image), image), image)
    data = runner.pack_pseudo_normal(pseudo, image)
    with pytest.raises(BackendError, match="frame"):
        runner.unpack_pseudo_normal(data, image[:-1])


@pytest.mark.parametrize("cut", [1, 40, 2000])
def test_truncated_or_altered_packed_bytes_are_refused(cut) -> None:
    rng = np.random.default_rng(1)
    data = runner.pack_masks({"a": rng.random((300, 200)) < 0.5, "b": np.ones((300, 200), bool)}, (300, 200))
    assert len(data) > cut
    with pytest.raises(BackendError, match="damaged"):
        runner.unpack_masks(data[:-cut])
    with pytest.raises(BackendError, match="damaged"):
        runner.unpack_masks(b"PNG" + data[3:])


def test_the_folder_loads_back_exactly_what_the_backends_gave(cohort, direct, tmp_path: Path) -> None:
    out = _written(cohort, tmp_path)
    for dicom_id, cues in direct.items():
        _assert_same_cues(load_cues(out / dicom_id), cues)
        names = {path.relative_to(out / dicom_id).as_posix() for path in (out / dicom_id).rglob("*")}
        assert names == {"image.png", runner.MASKS_FILE, runner.PSEUDO_NORMAL_FILE, "boxes.json", runner.MANIFEST}
        assert (out / dicom_id / "image.png").read_bytes() == encode_png(cues.image)  # the output folder's bytes


def test_grounding_on_loaded_cues_equals_grounding_on_the_backends_outputs_and_on_the_old_layout(
    cohort, direct, tmp_path: Path
) -> None:
    root, records = cohort
    out = _written(cohort, tmp_path / "new")
    stages = ProjectStages(root, BuildConfig(vision="phantom"))
    studies = {study.study_id: study for study in stages.studies()}
    grounded = 0
    for record in records:
        old = tmp_path / "old" / record.dicom_id
        write_version_2(old, direct[record.dicom_id])
        study = studies[record.study_id]
        report = stages.structure(study)
        results = [
            stages.ground(report, cues, study, record)
            for cues in (direct[record.dicom_id], load_cues(out / record.dicom_id), _load_version_2(old))
        ]
        for other in results[1:]:
            assert other.findings == results[0].findings and other.exclusions == results[0].exclusions
            assert (other.excluded, other.empty_locations, other.ctr) == (
                results[0].excluded, results[0].empty_locations, results[0].ctr)
            assert other.masks.keys() == results[0].masks.keys()
            assert all(np.array_equal(other.masks[key], results[0].masks[key]) for key in other.masks)
        grounded += len(results[0].masks)
    assert grounded  # the comparison covered lesion masks, not only empty results


def _load_version_2(folder: Path) -> VisionCues:
    """What load_cues of version 2 returned: PNGs decoded, masks > 127."""
    from PIL import Image

    def read(name: str) -> np.ndarray:
        with Image.open(folder / name) as picture:
            return np.asarray(picture.convert("L"))

    manifest = json.loads((folder / runner.MANIFEST).read_text())
    boxes = [runner.Box(*entry["xyxy"], entry["confidence"], entry["class_id"], entry["class_name"])
             for entry in json.loads((folder / "boxes.json").read_text())]
    anatomy = {label: read(f"anatomy/{label.replace(' ', '_')}.png") > 127 for label in runner.ANATOMY_NAMES}
    return VisionCues(manifest["dicom_id"], read("image.png"), read("pseudo_normal.png"),
                      read("lung_right.png") > 127, read("lung_left.png") > 127, read("heart.png") > 127, anatomy,
                      boxes)


def test_an_old_version_folder_is_recomputed_not_misread(cohort, direct, tmp_path: Path) -> None:
    root, records = cohort
    record = records[0]
    old = tmp_path / record.dicom_id
    write_version_2(old, direct[record.dicom_id])
    assert not runner.artifact_complete(old)
    with pytest.raises(BackendError, match="incomplete"):
        load_cues(old)
    assert dict(run_cues(root, [record], tmp_path, VisionConfig.preset("phantom")))[record.dicom_id] == STATUS_WRITTEN
    assert not (old / "pseudo_normal.png").exists() and not (old / "anatomy").exists()
    _assert_same_cues(load_cues(old), direct[record.dicom_id])


def test_the_work_folder_per_image_is_smaller_and_has_fewer_files(cohort, direct, tmp_path: Path) -> None:
    out = _written(cohort, tmp_path / "new")
    for dicom_id, cues in direct.items():
        write_version_2(tmp_path / "old" / dicom_id, cues)
        old_files, old_bytes = _folder_size(tmp_path / "old" / dicom_id)
        new_files, new_bytes = _folder_size(out / dicom_id)
        assert (old_files, new_files) == (23, 5)
        image = (out / dicom_id / "image.png").stat().st_size
        assert new_bytes - image < 0.6 * (old_bytes - image)  # the intermediates beside the output's image PNG


def test_a_truncated_masks_file_is_recomputed_by_the_next_run(cohort, direct, tmp_path: Path) -> None:
    root, records = cohort
    out = _written(cohort, tmp_path)
    damaged = out / records[0].dicom_id / runner.MASKS_FILE
    damaged.write_bytes(damaged.read_bytes()[:-7])
    with pytest.raises(BackendError, match="incomplete"):
        load_cues(damaged.parent)
    statuses = dict(run_cues(root, records, out, VisionConfig.preset("phantom")))
    assert statuses == {records[0].dicom_id: STATUS_WRITTEN, records[1].dicom_id: STATUS_EXISTS}
    _assert_same_cues(load_cues(damaged.parent), direct[records[0].dicom_id])


@pytest.mark.parametrize("name", [runner.MASKS_FILE, runner.PSEUDO_NORMAL_FILE, "image.png"])
def test_an_altered_byte_is_caught_on_load_and_the_build_stage_recomputes_it(
    cohort, direct, tmp_path: Path, name: str
) -> None:
    root, records = cohort
    stages = ProjectStages(root, BuildConfig(vision="phantom"))
    vision_dir = tmp_path / "work" / "vision"
    stages.cues(records, vision_dir)
    damaged = vision_dir / records[0].dicom_id / name
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum sees it
    damaged.write_bytes(bytes(data))
    assert runner.artifact_complete(damaged.parent)
    with pytest.raises(BackendError, match=f"mismatched.*{name}"):
        load_cues(damaged.parent)
    loaders = stages.cues(records, vision_dir)  # the resume's size check passes, the load's checksum does not
    _assert_same_cues(loaders[records[0].dicom_id](), direct[records[0].dicom_id])
    _assert_same_cues(load_cues(damaged.parent), direct[records[0].dicom_id])


def test_a_damaged_packed_file_with_a_matching_manifest_is_refused_clearly(cohort, tmp_path: Path) -> None:
    out = _written(cohort, tmp_path)
    folder = out / next(iter(p.name for p in out.iterdir() if not p.name.startswith(".")))
    damaged = (folder / runner.MASKS_FILE).read_bytes()[:-5]
    (folder / runner.MASKS_FILE).write_bytes(damaged)
    manifest = json.loads((folder / runner.MANIFEST).read_text())
    manifest["files"][runner.MASKS_FILE] = FileRecord.of_bytes(damaged).to_json()  # a writer bug, not a bad disk
    (folder / runner.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BackendError, match=f"{runner.MASKS_FILE}: damaged"):
        load_cues(folder)
