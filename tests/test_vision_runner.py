"""The vision runner and the ``mimic-ils cues`` command on a tiny synthetic cohort with the phantom backends."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _vision_helpers import cohort_with_truth

from mimic_ils import cli
from mimic_ils.schema import HEART_LABEL, LUNG_LABELS, BackendError, ImageRecord
from mimic_ils.vision import base, runner
from mimic_ils.vision.runner import STATUS_EXISTS, STATUS_WRITTEN, VisionConfig, load_cues, run_cues


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ImageRecord]]:
    root, records = cohort_with_truth(tmp_path_factory)
    return root, records[:3]


@pytest.fixture(scope="module")
def first_run(cohort, tmp_path_factory: pytest.TempPathFactory):
    root, records = cohort
    out = tmp_path_factory.mktemp("cues")
    return out, run_cues(root, records, out, VisionConfig.preset("phantom", batch_size=2))


def test_writes_every_artifact_and_loads_back_what_the_backends_gave(cohort, first_run) -> None:
    root, records = cohort
    out, statuses = first_run
    assert statuses == [(record.dicom_id, STATUS_WRITTEN) for record in records]
    record = records[0]
    cues = load_cues(out / record.dicom_id)
    backends = runner.create_backends(VisionConfig.preset("phantom"), root)
    lungs = backends["lungs_heart"].segment([cues.image], [record.dicom_id])[0]
    np.testing.assert_array_equal(cues.lung_right, lungs.lung_right)
    np.testing.assert_array_equal(cues.heart, lungs.heart)
    edit_mask = lungs.lung_right | lungs.lung_left | lungs.heart
    pseudo = backends["pseudo_normal"].edit([cues.image], [edit_mask], [record.dicom_id])[0]
    np.testing.assert_array_equal(cues.pseudo_normal, pseudo)
    anatomy = backends["anatomy"].segment([pseudo], [record.dicom_id])[0]
    assert set(cues.anatomy) == {*LUNG_LABELS, HEART_LABEL}
    assert all(np.array_equal(cues.anatomy[label], anatomy[label]) for label in anatomy)
    assert cues.boxes == pytest.approx(backends["lesion_boxes"].detect([cues.image], [record.dicom_id])[0])
    assert cues.shape == (record.rows, record.columns)
    manifest = json.loads((out / record.dicom_id / "cues.json").read_text())
    assert manifest["backends"] == dict.fromkeys(base.STEPS, "phantom")
    assert set(manifest["files"]) == {"image.png", runner.MASKS_FILE, runner.PSEUDO_NORMAL_FILE, "boxes.json"}
    assert not list(out.glob(".*"))  # no staging folder left behind


def test_second_run_skips_complete_artifacts_and_redoes_a_damaged_one(cohort, first_run) -> None:
    root, records = cohort
    out, _ = first_run
    stamps = {record.dicom_id: (out / record.dicom_id / "cues.json").stat().st_mtime_ns for record in records}
    assert run_cues(root, records, out, VisionConfig.preset("phantom")) == [
        (r.dicom_id, STATUS_EXISTS) for r in records
    ]
    damaged = out / records[1].dicom_id / runner.MASKS_FILE
    damaged.write_bytes(damaged.read_bytes()[:-10])
    statuses = dict(run_cues(root, records, out, VisionConfig.preset("phantom")))
    assert statuses[records[1].dicom_id] == STATUS_WRITTEN
    assert statuses[records[0].dicom_id] == statuses[records[2].dicom_id] == STATUS_EXISTS
    assert (out / records[0].dicom_id / "cues.json").stat().st_mtime_ns == stamps[records[0].dicom_id]
    load_cues(out / records[1].dicom_id)  # complete again


def test_corrupt_dicom_and_lateral_view_are_isolated(cohort, tmp_path: Path) -> None:
    root, records = cohort
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / records[0].path).write_bytes(b"DICM but not really")
    lateral = ImageRecord("lat", records[1].subject_id, records[1].study_id, "LATERAL", records[1].path)
    statuses = dict(run_cues(copy, [*records, lateral], tmp_path / "out", VisionConfig.preset("phantom")))
    assert statuses[records[0].dicom_id].startswith("read failed")
    assert statuses[records[1].dicom_id] == statuses[records[2].dicom_id] == STATUS_WRITTEN
    assert "frontal" in statuses["lat"]
    assert not (tmp_path / "out" / records[0].dicom_id).exists()


@base.register("lesion_boxes", "test_crashes_on_one")
class _CrashesOnOne:
    name = "test_crashes_on_one"

    def __init__(self, victim: str) -> None:
        self.victim = victim

    def detect(self, images, dicom_ids):
        if self.victim in dicom_ids:
            raise RuntimeError("CUDA error: device-side assert")
        return [[] for _ in images]


def test_backend_crash_on_one_image_spares_the_rest_of_the_batch(cohort, tmp_path: Path) -> None:
    root, records = cohort
    steps = {step: "phantom" for step in base.STEPS}
    steps["lesion_boxes"] = {"name": "test_crashes_on_one", "options": {"victim": records[1].dicom_id}}
    config = VisionConfig.from_dict({"steps": steps, "batch_size": 3})
    statuses = dict(run_cues(root, records, tmp_path, config))
    assert "lesion_boxes" in statuses[records[1].dicom_id] and "RuntimeError" in statuses[records[1].dicom_id]
    assert statuses[records[0].dicom_id] == statuses[records[2].dicom_id] == STATUS_WRITTEN


def test_config_from_dict_yaml_and_presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "vision.yaml"
    path.write_text(
        "device: cuda:1\nbatch_size: 8\nsteps:\n  lungs_heart: chexmask\n  pseudo_normal:\n"
        "    name: radedit\n    options: {num_inference_steps: 50}\n  anatomy: cxas\n  lesion_boxes: yolo\n"
    )
    config = VisionConfig.from_yaml(path)
    assert (config.device, config.batch_size, config.steps["lungs_heart"].name) == ("cuda:1", 8, "chexmask")
    assert config.steps["pseudo_normal"].options == {"num_inference_steps": 50}
    assert VisionConfig.from_dict(config.to_dict()) == config
    with pytest.raises(BackendError, match="each of"):
        VisionConfig.from_dict({"steps": {"lungs_heart": "phantom"}})
    monkeypatch.delenv("MIMIC_ILS_WEIGHTS", raising=False)
    with pytest.raises(BackendError, match="weights"):
        VisionConfig.preset("real")
    real = VisionConfig.preset("real", weights_dir=tmp_path, device="cpu")
    assert real.steps["lesion_boxes"].options["weights"] == str(tmp_path / "yolo" / "vinbigdata.pt")
    assert [real.steps[step].name for step in base.STEPS] == ["hybridgnet", "radedit", "cxas", "yolo"]


def test_missing_real_weights_stop_the_run_with_a_clear_error(cohort, tmp_path: Path) -> None:
    root, records = cohort
    steps = {step: "phantom" for step in base.STEPS}
    steps["lesion_boxes"] = {"name": "yolo", "options": {"weights": str(tmp_path / "absent.pt")}}
    with pytest.raises(BackendError, match="absent.pt"):
        run_cues(root, records[:1], tmp_path / "out", VisionConfig.from_dict({"steps": steps}))


def test_load_cues_refuses_an_incomplete_or_altered_folder(cohort, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(BackendError, match="incomplete"):
        load_cues(tmp_path / "x")
    root, records = cohort
    run_cues(root, records[:1], tmp_path, VisionConfig.preset("phantom"))
    boxes = tmp_path / records[0].dicom_id / "boxes.json"
    text = boxes.read_text()
    boxes.write_text(text.replace("1", "2", 1))  # same size, other content: only the checksum sees it
    assert runner.artifact_complete(boxes.parent) and not runner.artifact_complete(boxes.parent, checksums=True)
    with pytest.raises(BackendError, match="mismatched"):
        load_cues(boxes.parent)


def test_cues_command_writes_overlays_and_resumes(cohort, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, _ = cohort
    arguments = ["cues", "--mimic-root", str(root), "--out", str(tmp_path), "--backends", "phantom", "--limit", "2"]
    assert cli.main(arguments) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("2 of 2 frontal images") and "written + overlay" in lines[0]
    overlays = sorted(tmp_path.glob("*/overlay.png"))
    assert len(overlays) == 2
    from PIL import Image

    with Image.open(overlays[0]) as picture:
        assert picture.size[0] > picture.size[1] > 200  # two panels side by side
        assert len(set(picture.convert("RGB").getdata())) > 50  # an actual picture, not a blank canvas
    assert cli.main(arguments) == 0
    assert all(line.endswith("exists") for line in capsys.readouterr().out.strip().splitlines()[:-1])
    assert cli.main([*arguments[:-2], "--backends", str(tmp_path / "nope.yaml")]) == 1


def test_real_backends_run_through_the_registry_from_a_yaml_config(cohort, tmp_path: Path) -> None:
    """RadEdit and YOLO (tiny random weights, real loading code) inside the runner, with phantom lungs and anatomy."""
    import yaml
    from _vision_helpers import save_tiny_radedit, save_tiny_yolo

    root, records = cohort
    radedit = {**save_tiny_radedit(tmp_path / "radedit"), "num_inference_steps": 2, "resolution": 64}
    yolo = {"weights": str(save_tiny_yolo(tmp_path / "vinbig.pt")), "imgsz": 128, "conf": 1e-6}
    steps = {
        "lungs_heart": "phantom",
        "anatomy": "phantom",
        "pseudo_normal": {"name": "radedit", "options": radedit},
        "lesion_boxes": {"name": "yolo", "options": yolo},
    }
    (tmp_path / "vision.yaml").write_text(yaml.safe_dump({"device": "cpu", "batch_size": 2, "steps": steps}))
    config = VisionConfig.from_yaml(tmp_path / "vision.yaml")
    statuses = run_cues(root, records[:2], tmp_path / "out", config)
    assert [status for _, status in statuses] == [STATUS_WRITTEN, STATUS_WRITTEN]
    cues = load_cues(tmp_path / "out" / records[0].dicom_id)
    edit_mask = cues.lung_right | cues.lung_left | cues.heart
    np.testing.assert_array_equal(cues.pseudo_normal[~edit_mask], cues.image[~edit_mask])
    assert not np.array_equal(cues.pseudo_normal[edit_mask], cues.image[edit_mask])
    assert cues.boxes and all(box.class_id not in (0, 9, 12) for box in cues.boxes)
    manifest = json.loads((tmp_path / "out" / records[0].dicom_id / "cues.json").read_text())
    assert manifest["backends"]["pseudo_normal"] == "radedit" and manifest["backends"]["lesion_boxes"] == "yolo"


def test_the_real_preset_trusts_remote_code_only_when_asked(tmp_path):
    from mimic_ils.orchestration import BuildConfig
    from mimic_ils.orchestration.stages import make_vision_config
    from mimic_ils.schema import MimicIlsError
    from mimic_ils.vision.runner import VisionConfig

    def radedit_options(vision):
        config = make_vision_config(VisionConfig, BuildConfig(vision=vision, device="cpu"), tmp_path)
        return config.to_dict()["steps"]["pseudo_normal"]["options"]

    assert radedit_options({"preset": "real", "weights_dir": str(tmp_path)})["trust_remote_code"] is False
    assert radedit_options({"preset": "real", "weights_dir": str(tmp_path),
                            "trust_remote_code": True})["trust_remote_code"] is True
    with pytest.raises(MimicIlsError, match="trust_remote_code must be true or false"):
        radedit_options({"preset": "real", "weights_dir": str(tmp_path), "trust_remote_code": "yes"})
