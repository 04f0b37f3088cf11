"""Adversarial scenarios of issue 15 for the build and the release import: each test fails without its fix.

S5 release paths confined and images decoded; S6 the output guard trusts only our own manifest; W0 a moved folder
loads (xfail: not fixable from the folder, see the test); W1 locks; W2 content-keyed caches and --force-stage;
W3/W4 transient failures and a full disk are never cached as outcomes; configs validated before any work.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mimic_ils.orchestration import BuildConfig, build
from mimic_ils.orchestration.output import MANIFEST, hold_lock, out_lock_path
from mimic_ils.release import import_release
from mimic_ils.schema import MimicIlsError, TransientError

sys.path.insert(0, str(Path(__file__).parent))
from _build_helpers import FakeStages, folder_bytes  # noqa: E402

N = 8


@pytest.fixture(autouse=True)
def fixed_commit(monkeypatch):
    monkeypatch.setenv("MIMIC_ILS_CODE_COMMIT", "0" * 40)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)



def ledger(out: Path) -> list[dict]:
    return pq.read_table(out / "ledger.parquet").to_pylist()


@pytest.fixture(scope="module")
def clean_build(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MIMIC_ILS_CODE_COMMIT", "0" * 40)
        out = tmp_path_factory.mktemp("clean") / "out"
        build(None, out, stages=FakeStages(N), progress=False)
    return out


# --- S5: import-release never reads outside its roots, and refuses files that are not images ---

def test_release_paths_outside_the_roots_and_undecodable_images_are_refused(tmp_path):
    images = tmp_path / "jpg" / "files"
    release = tmp_path / "release"
    (release / "lesion_mask").mkdir(parents=True)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:10, 4:10] = 255
    Image.fromarray(mask).save(release / "lesion_mask" / "m.png")
    good = "p10/p10000032/s50414267/aaa-111.jpg"
    (images / good).parent.mkdir(parents=True)
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(images / good)
    secret_dir = tmp_path / "outside" / "p10" / "p10000033" / "s50414268"
    secret_dir.mkdir(parents=True)
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(secret_dir / "evil.jpg")  # decodes: only the path is bad
    Image.fromarray(mask).save(tmp_path / "outside" / "secret_mask.png")
    bad = images / "p10/p10000034/s50414269/bbb-222.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"SECRET=hunter2\n")  # not an image (think /proc/self/environ)
    positive = {"instruction": "Segment the effusion in the right lung base.", "answer": "[SEG]",
                "target": "effusion", "seg_mask_path": "lesion_mask/m.png"}
    negative = {"instruction": "Segment the edema.", "answer": "[SEG] There is no edema.", "target": "edema"}

    def item(path, mask_path="lesion_mask/m.png"):
        return {"image_path": path, "instruction_answer_pairs": {
            "positive_pairs": [{**positive, "seg_mask_path": mask_path}], "negative_pairs": [negative]}}

    items = [
        item(good),
        item(good, "../outside/secret_mask.png"),
        item(good, str(tmp_path / "outside" / "secret_mask.png")),
        item("../../outside/p10/p10000033/s50414268/evil.jpg"),
        item(str(secret_dir / "evil.jpg")),
        item("p10/p10000034/s50414269/bbb-222.jpg"),
    ]
    (release / "mimic_ils_instruction_answer.json").write_text(json.dumps({"train": items}))
    out = tmp_path / "out"
    info = import_release(release, images, out)
    assert info["counts"]["train"]["images"] == 1
    written = b"".join(folder_bytes(out).values())
    assert b"hunter2" not in written
    assert not list(out.rglob("evil*")) and len(list(out.rglob("*.jpg"))) == 1
    reasons = [row["reason"] for row in ledger(out) if row["reason"]]
    assert sum("points outside" in reason and "image_path" in reason for reason in reasons) == 2
    assert sum("seg_mask_path" in reason and "points outside" in reason for reason in reasons) == 2
    assert any("does not decode as an image" in reason for reason in reasons)
    assert all("\n" not in reason for reason in reasons)


# --- S6: the output guard recognises only folders our build wrote, and deletes nothing else ---

def test_a_fake_build_info_does_not_make_a_folder_replaceable(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "build_info.json").write_text("{}")
    (home / "thesis.tex").write_text("do not delete")
    with pytest.raises(MimicIlsError, match="not a MIMIC-ILS folder"):
        build(None, home, stages=FakeStages(4), work=tmp_path / "work", progress=False)
    assert (home / "thesis.tex").read_text() == "do not delete"
    (home / MANIFEST).write_text(json.dumps({"tool": "mimic_ils", "format": 1, "files": {}}))  # a forged manifest
    with pytest.raises(MimicIlsError, match="holds (build_info.json|thesis.tex), which the build did not write"):
        build(None, home, stages=FakeStages(4), work=tmp_path / "work", progress=False)
    assert (home / "thesis.tex").read_text() == "do not delete"


def test_a_real_previous_output_is_replaced_but_not_one_holding_a_user_file(tmp_path, clean_build):
    out = tmp_path / "out"
    build(None, out, stages=FakeStages(N - 2), work=tmp_path / "w1", progress=False)
    build(None, out, stages=FakeStages(N), work=tmp_path / "w2", progress=False)  # a real output: replaced
    assert folder_bytes(out) == folder_bytes(clean_build)
    (out / "train" / "notes.txt").write_text("mine")
    with pytest.raises(MimicIlsError, match="holds train/notes.txt, which the build did not write"):
        build(None, out, stages=FakeStages(N), work=tmp_path / "w2", progress=False)
    assert (out / "train" / "notes.txt").read_text() == "mine"
    (out / "train" / "notes.txt").unlink()
    (out / "README.md").write_text("my edits")
    with pytest.raises(MimicIlsError, match="README.md was changed"):
        build(None, out, stages=FakeStages(N), work=tmp_path / "w2", progress=False)
    assert (out / "README.md").read_text() == "my edits"


# --- W0: a moved folder loads after a first load ---

@pytest.mark.xfail(strict=True, raises=FileNotFoundError, reason=(
    "datasets 5.x keys its cache of a local folder on the folder's base name, the README's configs and the packaged "
    "module only (no location), and the cached rows hold absolute image paths; a static folder cannot change that "
    "(it needs embedded image bytes or a loader change); see the report of issue 15"))
def test_a_moved_folder_loads_after_a_first_load(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    first = tmp_path / "a" / "mimic-ils"
    build(None, first, stages=FakeStages(N), work=tmp_path / "work", progress=False)
    assert datasets.load_dataset(str(first), "pairs", split="train")[0]["image"].size
    moved = tmp_path / "b" / "mimic-ils"
    moved.parent.mkdir()
    shutil.move(str(first), str(moved))
    assert datasets.load_dataset(str(moved), "pairs", split="train")[0]["image"].size


# --- W1: two builds into one work folder or one --out: the second refuses at once, naming the holder ---

def test_a_second_concurrent_build_refuses_naming_the_holder(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("WORLD_SIZE", None)
    helper = Path(__file__).parent / "_build_helpers.py"
    process = subprocess.Popen([sys.executable, str(helper), str(out), str(work), "8", "0.5"], env=env)
    try:
        lock = work / "build.lock"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (lock.exists() and lock.read_text().strip()):
            time.sleep(0.05)
        assert process.poll() is None
        with pytest.raises(MimicIlsError, match=rf"in use by another mimic-ils build \(pid {process.pid};"):
            build(None, out, stages=FakeStages(8), work=work, progress=False)
        with pytest.raises(MimicIlsError, match=rf"--out .* in use by another mimic-ils build \(pid {process.pid};"):
            build(None, out, stages=FakeStages(8), work=tmp_path / "other-work", progress=False)
    finally:
        process.kill()
        process.wait()
    result = build(None, out, stages=FakeStages(8), work=work, progress=False)  # the kernel dropped the lock
    assert result["info"] is not None


def test_two_concurrent_merges_one_refuses_clearly(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    for index in range(2):
        build(None, out, stages=FakeStages(N), work=work, shard=f"{index}/2", progress=False)
    with hold_lock(out_lock_path(out), "test"):  # another merge in progress (flock: per open file, even here)
        with pytest.raises(MimicIlsError, match=r"--out .* in use by another mimic-ils build \(pid \d+"):
            build(None, out, stages=FakeStages(N), work=work, process=False, progress=False)
    assert build(None, out, stages=FakeStages(N), work=work, process=False, progress=False)["info"]


# --- W2: cached stages are keyed on content; --force-stage ---

class _FileStages(FakeStages):
    """Fake stages over real report files: a report saying "No effusion." gives no positive pair."""

    def __init__(self, root: Path, n: int = N) -> None:
        super().__init__(n)
        self.root = root
        self.structured: list[str] = []
        for study in self.studies():
            path = root / study.report_path
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("Right pleural effusion.")

    def structure(self, study):
        self.structured.append(study.study_id)
        if "No effusion" in (self.root / study.report_path).read_text():
            from mimic_ils.schema import ReportError
            raise ReportError("no positive finding")
        return super().structure(study)

    def input_keys(self, study, work):
        from mimic_ils.files import sha256_bytes
        return {"report": sha256_bytes((self.root / study.report_path).read_bytes()), "images": {}}


def test_an_edited_report_is_recomputed_and_the_rest_comes_from_the_cache(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    stages = _FileStages(tmp_path / "root")
    build(None, out, stages=stages, work=work, progress=False)
    target = next(study for study in sorted(stages.studies(), key=lambda s: s.study_id)
                  if any(row["study_id"] == study.study_id
                         for row in pq.read_table(out / "train" / "metadata.parquet").to_pylist()))
    (tmp_path / "root" / target.report_path).write_text("No effusion.")
    stages.structured.clear()
    result = build(None, out, stages=stages, work=work, progress=False)
    assert result["processed"] == {"cached": N - 1, "computed": 1, "retry": 0}
    assert stages.structured == [target.study_id]
    rows = pq.read_table(out / "train" / "metadata.parquet").to_pylist()
    assert not any(row["study_id"] == target.study_id for row in rows)
    stages.structured.clear()
    result = build(None, out, stages=stages, work=work, progress=False, force_stages=("report",))
    assert result["processed"]["computed"] == N and sorted(stages.structured) == sorted(
        study.study_id for study in stages.studies())


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory) -> Path:
    from _cohort import copy_cohort, make_cohort

    return copy_cohort(make_cohort(tmp_path_factory, n_studies=6, seed=0), tmp_path_factory.mktemp("w2") / "mimic")


def test_real_stages_recompute_an_edited_report_and_an_emptied_dicom(small_cohort, tmp_path):
    from mimic_ils import ingest

    out, config = tmp_path / "out", BuildConfig(vision="phantom")
    build(small_cohort, out, config=config, progress=False)
    before = {row["id"]: row for path in sorted(out.glob("*/metadata.parquet"))
              for row in pq.read_table(path).to_pylist()}
    studies = sorted(ingest.iter_studies(small_cohort), key=lambda study: study.study_id)
    used = sorted({row["study_id"] for row in before.values() if row["polarity"] == "positive"})
    edited = next(study for study in studies if study.study_id == used[0])
    emptied = next(study for study in studies if study.study_id in used[1:] and study.frontal_images)
    report = small_cohort / edited.report_path
    text = report.read_text()
    header = text.split("FINDINGS:")[0]
    report.write_text(header + "FINDINGS:\n\n No acute cardiopulmonary process. No effusion. No opacity.\n\n"
                      " IMPRESSION:\n\n No acute cardiopulmonary process.\n")
    (small_cohort / emptied.frontal_images[0].path).write_bytes(b"")
    result = build(small_cohort, out, config=config, progress=False)
    assert result["processed"] == {"cached": len(studies) - 2, "computed": 2, "retry": 0}
    after = {row["id"]: row for path in sorted(out.glob("*/metadata.parquet"))
             for row in pq.read_table(path).to_pylist()}
    assert not any(row["study_id"] == edited.study_id and row["polarity"] == "positive" for row in after.values())
    assert not any(row["dicom_id"] == emptied.frontal_images[0].dicom_id for row in after.values())
    untouched = {key: row for key, row in before.items() if row["study_id"] not in (edited.study_id,
                                                                                      emptied.study_id)}
    assert untouched == {key: row for key, row in after.items() if key in untouched}


def test_force_stage_names_are_checked_before_any_work(tmp_path):
    with pytest.raises(MimicIlsError, match="--force-stage vison"):
        build(None, tmp_path / "out", stages=FakeStages(4), work=tmp_path / "work", progress=False,
              force_stages=("vison",))
    assert not (tmp_path / "work").exists()


# --- W3/W4: transient failures and a full disk are never cached as outcomes ---

class _FlakyStages(FakeStages):
    """The LLM server is down for one report, a service times out on one image; both work on the next run."""

    def __init__(self, n: int = N) -> None:
        super().__init__(n)
        self.failed: set[str] = set()

    def structure(self, study):
        if study.study_id == str(50000000 + 7919 * 1) and "report" not in self.failed:
            self.failed.add("report")
            raise TransientError("LLM server http://localhost:8000 refused the connection")
        return super().structure(study)

    def ground(self, report, cues, study, image):
        if image.dicom_id == "d002a" and "ground" not in self.failed:
            self.failed.add("ground")
            raise TransientError("timed out after 60 s")
        return super().ground(report, cues, study, image)


def test_transient_failures_are_retried_next_run(tmp_path, clean_build):
    out, work, stages = tmp_path / "out", tmp_path / "work", _FlakyStages()
    result = build(None, out, stages=stages, work=work, progress=False)
    assert result["processed"] == {"cached": 0, "computed": N - 2, "retry": 2}
    reasons = {row["study_id"]: row["reason"] for row in ledger(out) if row["kind"] == "study"}
    assert "LLM server" in reasons[str(50000000 + 7919)] and "retried next run" in reasons[str(50000000 + 7919)]
    image_reasons = {row["dicom_id"]: row["reason"] for row in ledger(out) if row["kind"] == "image"}
    assert "timed out" in image_reasons["d002a"] and "retried next run" in image_reasons["d002a"]
    result = build(None, out, stages=stages, work=work, progress=False)
    assert result["processed"] == {"cached": N - 2, "computed": 2, "retry": 0}
    assert folder_bytes(out) == folder_bytes(clean_build)


class _FullDiskStages(FakeStages):
    """The vision runner's status for one image is a full disk (as ``run_cues`` reports it)."""

    full = True

    def cues(self, images, vision_dir):
        from mimic_ils.orchestration.stages import vision_reason

        out = super().cues(images, vision_dir)
        if self.full and "d003a" in out:
            out["d003a"] = vision_reason("write failed: [Errno 28] No space left on device")
        return out


def test_a_full_disk_in_the_vision_stage_stops_the_build_and_is_not_cached(tmp_path, clean_build):
    from mimic_ils.orchestration.stages import vision_reason

    out, work, stages = tmp_path / "out", tmp_path / "work", _FullDiskStages(N)
    with pytest.raises(MimicIlsError, match="disk full"):
        build(None, out, stages=stages, work=work, progress=False)
    stages.full = False
    build(None, out, stages=stages, work=work, progress=False)
    assert folder_bytes(out) == folder_bytes(clean_build)
    assert "retried next run" in vision_reason("write failed: [Errno 5] Input/output error").line
    assert vision_reason("read failed: not a DICOM file").line == "vision: read failed: not a DICOM file"


# --- configs: every key known, checked before any work ---

@pytest.mark.parametrize(("data", "named"), [
    ({"report": {"backend": "rules", "optons": {}}}, "report.optons"),
    ({"vision": {"preset": "phantom", "wieghts_dir": "/w"}}, "wieghts_dir"),
    ({"vision": {"steps": {"lungs_heart": {"name": "phantom", "option": {}}}}}, "steps.lungs_heart: option"),
    ({"vision": {"steps": {"lung_heart": "phantom"}}}, "lung_heart"),
])
def test_config_typos_are_refused_at_start_with_the_key_named(data, named, tmp_path):
    from mimic_ils.orchestration.stages import ProjectStages

    with pytest.raises(MimicIlsError, match=named):
        config = BuildConfig.from_dict(data)
        build(tmp_path / "mimic", tmp_path / "out", config=config, stages=ProjectStages(tmp_path / "mimic", config),
              work=tmp_path / "work", progress=False)
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(("anatomy", "named"), [
    ({"name": "cxas", "options": {"weights": "/nowhere/cxas.pth", "treshold": 0.5}},
     "steps.anatomy.options: unknown keys treshold for backend 'cxas'"),
    ("cxass", "steps.anatomy: no backend named 'cxass'"),
])
def test_unknown_vision_backends_and_options_are_refused_at_start(anatomy, named, tmp_path):
    from mimic_ils.orchestration.stages import ProjectStages

    steps = {step: "phantom" for step in ("lungs_heart", "pseudo_normal", "lesion_boxes")}
    config = BuildConfig(vision={"steps": {**steps, "anatomy": anatomy}}, device="cpu")
    with pytest.raises(MimicIlsError, match=named):
        build(tmp_path / "mimic", tmp_path / "out", config=config, stages=ProjectStages(tmp_path / "mimic", config),
              work=tmp_path / "work", progress=False)
    assert not (tmp_path / "work").exists()
