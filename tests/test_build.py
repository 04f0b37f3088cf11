"""The build machinery (fake stages: resume, shards, determinism, corruption, ledger) and the real pipeline on a
synthetic cohort with phantom backends (both configs load with the documented features; every pair obeys Table 2
and Appendix C)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest

from mimic_ils.features import conversations_features, images_features, pairs_features
from mimic_ils.orchestration import BuildConfig, build
from mimic_ils.orchestration.shard import Shard, parse_shard, resolve_shard, shard_of
from mimic_ils.orchestration.workdir import WorkDir, read_checked, write_checked
from mimic_ils.schema import MimicIlsError

sys.path.insert(0, str(Path(__file__).parent))
from _build_helpers import FakeStages, folder_bytes  # noqa: E402

N_FAKE = 12


@pytest.fixture(scope="module", autouse=True)
def fixed_commit():
    """Other commits land while the suite runs; the card records the commit, so pin it for byte comparisons."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MIMIC_ILS_CODE_COMMIT", "0" * 40)
        yield



@pytest.fixture(scope="module")
def fake_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fake") / "out"
    build(None, out, stages=FakeStages(N_FAKE), progress=False)
    return out


def test_both_configs_load_with_documented_features_after_moving(fake_build, tmp_path, monkeypatch):
    moved = tmp_path / "elsewhere" / "mimic-ils"
    shutil.copytree(fake_build, moved)
    monkeypatch.chdir(tmp_path)
    pairs = datasets.load_dataset(str(moved), "pairs")
    images = datasets.load_dataset(str(moved), "images")
    assert set(pairs) == {"train", "validation", "test"}
    assert pairs["train"].features == pairs_features()
    assert images["train"].features == images_features()
    row = pairs["train"][0]
    assert row["image"].size == (56, 48) and row["split"] == "train"
    negatives = [r for r in pairs["train"] if r["polarity"] == "negative"]
    assert negatives and all(r["mask"] is None for r in negatives)
    image_row = images["train"][0]
    assert len(image_row["pairs"]) == 3 and image_row["pairs"][0]["mask"].size == (56, 48)
    assert sum(len(r["pairs"]) for r in images["train"]) == pairs["train"].num_rows


def test_images_and_masks_stored_once(fake_build):
    for split in ("train", "validation", "test"):
        table = pq.read_table(fake_build / split / "metadata.parquet").to_pylist()
        assert len({r["image_file_name"] for r in table}) == len(list((fake_build / split / "images").glob("*.png")))
        masks = {r["mask_file_name"] for r in table if r["mask_file_name"]}
        assert len(masks) == len(list((fake_build / split / "images" / "masks").iterdir())) < len(table)


def test_ledger_accounts_for_every_study(fake_build):
    ledger = pq.read_table(fake_build / "ledger.parquet").to_pylist()
    studies = [row for row in ledger if row["kind"] == "study"]
    assert len(studies) == N_FAKE == len({row["study_id"] for row in studies})
    excluded = {row["study_id"]: row["reason"] for row in studies if row["fate"] == "excluded"}
    assert excluded["50000000"].startswith("report: ")
    assert excluded[str(50000000 + 7919 * 11)] == "ingest: study has no valid split (none)"
    assert "vision: lungs_heart backend failed" in excluded[str(50000000 + 7919 * 4)]
    images = [row for row in ledger if row["kind"] == "image"]
    assert any(row["reason"] == "qc: view LATERAL is not frontal (PA/AP)" for row in images)
    assert all((row["fate"] == "used") == (row["reason"] is None) for row in studies + images)


def test_one_vs_three_shards_byte_identical(fake_build, tmp_path):
    work = tmp_path / "work"
    for index in range(3):
        result = build(None, tmp_path / "sharded", stages=FakeStages(N_FAKE), work=work, shard=f"{index}/3",
                       progress=False)
        assert result["info"] is None
    with pytest.raises(MimicIlsError, match="have no valid result"):
        build(None, tmp_path / "partial", stages=FakeStages(N_FAKE + 4), work=work, process=False)
    build(None, tmp_path / "sharded", stages=FakeStages(N_FAKE), work=work, process=False)
    assert folder_bytes(tmp_path / "sharded") == folder_bytes(fake_build)


def test_resume_after_kill_is_byte_identical(fake_build, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    helper = Path(__file__).parent / "_build_helpers.py"
    command = [sys.executable, str(helper), str(out), str(work), str(N_FAKE), "0.15"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    process = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 60
    while len(list((work / "studies").glob("*.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait()
    done_before = len(list((work / "studies").glob("*.json")))
    assert 3 <= done_before < N_FAKE and not out.exists()
    stages = FakeStages(N_FAKE)
    result = build(None, out, stages=stages, work=work, progress=False)
    assert result["processed"]["cached"] >= done_before
    assert folder_bytes(out) == folder_bytes(fake_build)


def test_corrupted_cache_is_detected_and_recomputed(fake_build, tmp_path):
    out, work = tmp_path / "out", WorkDir(tmp_path / "work")
    build(None, out, stages=FakeStages(N_FAKE), work=work.root, progress=False)
    study_file = sorted((work.root / "studies").glob("*.json"))[3]
    study_file.write_bytes(study_file.read_bytes()[:-5] + b"XXXXX")
    masks = sorted((work.root / "masks").glob("*.png"))
    masks[0].write_bytes(b"not a png")
    same_size = bytearray(masks[1].read_bytes())
    same_size[len(same_size) // 2] ^= 0xFF  # caught by the merge's sha256 check, not by the size check of resuming
    masks[1].write_bytes(bytes(same_size))
    result = build(None, out, stages=FakeStages(N_FAKE), work=work.root, progress=False)
    assert result["processed"]["computed"] >= 2
    assert folder_bytes(out) == folder_bytes(fake_build)


def test_checked_artifact_roundtrip_and_truncation(tmp_path):
    path = tmp_path / "a.bin"
    write_checked(path, b"payload")
    assert read_checked(path) == b"payload"
    path.write_bytes(path.read_bytes()[:-1])
    assert read_checked(path) is None
    assert read_checked(tmp_path / "missing") is None


def test_work_folder_refuses_another_config(tmp_path):
    build(None, tmp_path / "out", stages=FakeStages(4), work=tmp_path / "work", progress=False)
    other = BuildConfig(seed=1)
    with pytest.raises(MimicIlsError, match="another build config"):
        build(None, tmp_path / "out", config=other, stages=FakeStages(4), work=tmp_path / "work", progress=False)


def test_shards_partition_studies_and_read_launcher_env():
    ids = [str(50000000 + k) for k in range(300)]
    owners = [[Shard(i, 4).owns(study_id) for i in range(4)] for study_id in ids]
    assert all(sum(row) == 1 for row in owners)
    assert all(40 < sum(row[i] for row in owners) < 110 for i in range(4))
    assert shard_of("50414267", 1) == 0
    assert parse_shard("2/5") == Shard(2, 5)
    assert resolve_shard(None, {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == Shard(3, 8)
    assert resolve_shard("1/2", {"RANK": "3", "WORLD_SIZE": "8"}) == Shard(1, 2)
    assert resolve_shard(None, {}) == Shard(0, 1)
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(MimicIlsError):
            parse_shard(bad)


def test_build_config_yaml_and_backends(tmp_path):
    path = tmp_path / "build.yaml"
    path.write_text("seed: 3\nreport:\n  backend: rules\nvision: phantom\ngrounding: {tau_ano: 0.2}\nbatch_size: 2\n")
    config = BuildConfig.from_yaml(path)
    assert (config.seed, config.report_backend, config.batch_size) == (3, "rules", 2)
    assert config.grounding == {"tau_ano": 0.2}
    assert config.with_backends("real").vision == "real" and config.vision == "phantom"
    assert "batch_size" not in config.fingerprint()
    from mimic_ils.report import rules

    before = config.fingerprint()
    assert before["report"]["rules_version"] == rules.RULES_VERSION
    rules.RULES_VERSION += 1  # newer rules: a work folder of the older ones is not reused
    try:
        assert config.fingerprint() != before
    finally:
        rules.RULES_VERSION -= 1
    path.write_text("sed: 3\n")
    with pytest.raises(MimicIlsError, match="unknown build config keys: sed"):
        BuildConfig.from_yaml(path)


# --- the real stages on a synthetic cohort with phantom vision backends and the rules report backend ---

N_COHORT = 30


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from _cohort import make_cohort

    return make_cohort(tmp_path_factory, n_studies=N_COHORT, seed=0)


@pytest.fixture(scope="module")
def phantom_build(cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "out"
    build(cohort, out, config=BuildConfig(vision="phantom"), progress=False)
    return out


def test_phantom_build_loads_with_documented_features(phantom_build, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(phantom_build, moved)
    pairs = datasets.load_dataset(str(moved), "pairs")
    images = datasets.load_dataset(str(moved), "images")
    assert pairs["train"].features == pairs_features() and images["train"].features == images_features()
    total = sum(split.num_rows for split in pairs.values())
    assert total == sum(sum(len(row) for row in split["pairs"]) for split in images.values()) > N_COHORT
    positive = next(row for row in pairs["train"] if row["polarity"] == "positive")
    assert positive["mask"].size == positive["image"].size and positive["image"].mode == "L"


def test_every_pair_obeys_table2_and_appendix_c(phantom_build):
    from PIL import Image

    from mimic_ils.orchestration.templates import appendix_c_problems

    rows = []
    for path in sorted(phantom_build.glob("*/metadata.parquet")):
        rows += [{**row, "_folder": path.parent} for row in pq.read_table(path).to_pylist()]
    assert {row["question_type"] for row in rows} >= {"basic", "global"}
    assert appendix_c_problems(rows) == []
    for row in rows:
        if row["mask_file_name"]:
            mask = np.asarray(Image.open(row["_folder"] / row["mask_file_name"]))
            image = Image.open(row["_folder"] / row["image_file_name"])
            assert mask.shape == image.size[::-1] and mask.any() and set(np.unique(mask)) <= {0, 255}


def test_phantom_ledger_accounts_for_every_metadata_study(cohort, phantom_build):
    from mimic_ils import ingest

    metadata_studies = {study.study_id for study in ingest.iter_studies(cohort)}
    ledger = pq.read_table(phantom_build / "ledger.parquet").to_pylist()
    fates = {row["study_id"]: row["fate"] for row in ledger if row["kind"] == "study"}
    assert set(fates) == metadata_studies and set(fates.values()) <= {"used", "excluded"}
    metadata_images = {image.dicom_id for study in ingest.iter_studies(cohort) for image in study.images}
    assert {row["dicom_id"] for row in ledger if row["kind"] == "image"} == metadata_images


def test_phantom_kill_resume_equals_three_shards(cohort, tmp_path):
    """A CLI build killed mid-way and rerun gives the bytes of a fresh 3-shard build (first 8 studies)."""
    limit, config = 8, tmp_path / "build.yaml"
    config.write_text("vision: phantom\nbatch_size: 2\n")
    work = tmp_path / "work3"
    for index in range(3):
        build(cohort, tmp_path / "sharded", config=BuildConfig.from_yaml(config), work=work, shard=f"{index}/3",
              limit=limit, progress=False)
    build(cohort, tmp_path / "sharded", config=BuildConfig.from_yaml(config), work=work, process=False, limit=limit)
    out, work = tmp_path / "resumed", tmp_path / "work1"
    command = [sys.executable, "-m", "mimic_ils", "build", "--mimic-root", str(cohort), "--out", str(out),
               "--config", str(config), "--limit", str(limit), "--work", str(work), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("WORLD_SIZE", None)
    process = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 120
    while not list((work / "studies").glob("*.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.kill()
    process.wait()
    assert not out.exists() and list((work / "studies").glob("*.json"))
    assert subprocess.run(command, env=env).returncode == 0
    resumed, sharded = folder_bytes(out), folder_bytes(tmp_path / "sharded")
    assert [name for name in resumed if name.endswith(".parquet")] and resumed == sharded


class _CrashingStages(FakeStages):
    """A bug (not a MimicIlsError) in grounding one image and in structuring one report."""

    def structure(self, study):
        if study.study_id == str(50000000 + 7919 * 5):
            raise KeyError("sentence_index")
        return super().structure(study)

    def ground(self, report, cues, study, image):
        if image.dicom_id == "d006a":
            raise ZeroDivisionError("division by zero")
        return super().ground(report, cues, study, image)


def test_a_crashing_stage_excludes_its_study_and_the_build_goes_on(tmp_path):
    info = build(None, tmp_path / "out", stages=_CrashingStages(N_FAKE), progress=False)["info"]
    ledger = pq.read_table(tmp_path / "out" / "ledger.parquet").to_pylist()
    reasons = {row["study_id"]: row["reason"] for row in ledger if row["kind"] == "study"}
    assert reasons[str(50000000 + 7919 * 5)] == "report: internal error (KeyError: 'sentence_index')"
    assert "grounding: internal error (ZeroDivisionError" in reasons[str(50000000 + 7919 * 6)]
    assert info["ledger"]["fates"]["study:used"] + info["ledger"]["fates"]["study:excluded"] == N_FAKE


def test_full_disk_stops_with_a_clear_message_and_resumes(fake_build, tmp_path, monkeypatch):
    import errno

    from mimic_ils import files

    real_write, calls = files.atomic_write_bytes, []

    def failing_write(path, data):
        calls.append(path)
        if len(calls) > 40:  # after the first chunk of studies is committed
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    monkeypatch.setattr(files, "atomic_write_bytes", failing_write)
    with pytest.raises(MimicIlsError, match="disk full while writing .*; free space and rerun"):
        build(None, tmp_path / "out", stages=FakeStages(N_FAKE), work=tmp_path / "work", progress=False)
    monkeypatch.setattr(files, "atomic_write_bytes", real_write)
    result = build(None, tmp_path / "out", stages=FakeStages(N_FAKE), work=tmp_path / "work", progress=False)
    assert result["processed"]["cached"] >= 1
    assert folder_bytes(tmp_path / "out") == folder_bytes(fake_build)


def test_dataset_card_yaml_counts_and_provenance(fake_build):
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(fake_build / "README.md")
    assert card.data.annotations_creators == ["machine-generated"]
    assert card.data.source_datasets == ["extended|mimic-cxr"]
    assert [entry["config_name"] for entry in card.data.configs] == ["pairs", "images", "conversations"]
    assert card.data.configs[1]["data_files"][0]["path"][0] == "train/images/metadata.parquet"
    assert card.data.configs[2]["data_files"][0]["path"][0] == "train/images/conversations.parquet"
    assert card.data.configs[2]["metadata_filenames"] == ["conversations.parquet"]
    assert "| train | 12 | 8 | 4 | 4 | 4 | 4 |" in card.text
    assert "| split | basic pairs | global pairs | conversations |" in card.text  # FakeStages: 3 pairs per image
    assert "| train | 4 | 8 | 4 |" in card.text
    assert '"report_backend": "fake"' in card.text and "study:excluded 3" in card.text


@pytest.mark.parametrize("config_name", ["pairs", "images", "conversations"])
def test_builder_class_reads_a_built_folder(fake_build, tmp_path, config_name):
    from mimic_ils.builder import MimicIls

    builder = MimicIls(config_name=config_name, data_dir=str(fake_build), cache_dir=str(tmp_path / "cache"))
    builder.download_and_prepare()
    dataset = builder.as_dataset()
    expected = {"pairs": pairs_features, "images": images_features,
                "conversations": conversations_features}[config_name]()
    assert dataset["validation"].features == expected
    reference = datasets.load_dataset(str(fake_build), config_name, split="validation")
    assert dataset["validation"]["dicom_id"] == reference["dicom_id"]
    row = dataset["validation"][0]
    assert row["image"].size == (56, 48)
    assert "mimic-cxr-reports.zip" in builder.manual_download_instructions


def test_builder_class_builds_from_a_mimic_root(cohort, tmp_path):
    from mimic_ils.builder import MimicIls

    builder = MimicIls(config_name="images", data_dir=str(cohort), cache_dir=str(tmp_path / "cache"),
                       backends="phantom", limit=4)
    builder.download_and_prepare()
    dataset = builder.as_dataset()
    assert dataset["train"].features == images_features()
    assert len({row["study_id"] for split in dataset.values() for row in split}) <= 4
    assert all(len(row["pairs"]) > 0 for row in dataset["train"])


def test_vision_config_from_build_config(tmp_path, monkeypatch):
    from mimic_ils.orchestration.stages import make_vision_config
    from mimic_ils.schema import BackendError
    from mimic_ils.vision.runner import VisionConfig

    phantom = make_vision_config(VisionConfig, BuildConfig(vision="phantom", batch_size=3), tmp_path)
    assert {spec.name for spec in phantom.steps.values()} == {"phantom"} and phantom.batch_size == 3
    assert phantom.device == "cpu"
    path = tmp_path / "vision.yaml"
    path.write_text("steps: {lungs_heart: phantom, pseudo_normal: phantom, anatomy: phantom, lesion_boxes: phantom}\n")
    custom = make_vision_config(VisionConfig, BuildConfig(device="cpu").with_backends(str(path)), tmp_path)
    assert custom.steps["anatomy"].name == "phantom"
    real = BuildConfig(vision={"preset": "real", "weights_dir": str(tmp_path / "w")}, device="cpu")
    assert make_vision_config(VisionConfig, real, tmp_path).steps["pseudo_normal"].name == "radedit"
    with pytest.raises(MimicIlsError, match="neither a preset nor a readable YAML"):
        BuildConfig().with_backends(str(tmp_path / "missing.yaml"))
    monkeypatch.delenv("MIMIC_ILS_WEIGHTS", raising=False)
    with pytest.raises(BackendError, match="needs a weights folder"):
        make_vision_config(VisionConfig, BuildConfig(vision="real", device="cpu"), tmp_path)


def test_refuses_to_replace_a_folder_that_is_not_a_build(tmp_path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(MimicIlsError, match="is not a MIMIC-ILS folder"):
        build(None, precious, stages=FakeStages(4), work=tmp_path / "work", progress=False)
    assert (precious / "thesis.tex").read_text() == "do not delete"


def test_two_builds_in_folders_of_the_same_name_never_share_the_datasets_cache(tmp_path):
    # datasets keys its cache of a local folder on the base name and the builder configs: the content digest in
    # each config's description is what keeps the second build from loading the first one's rows
    sizes = {}
    for parent, n_studies in (("first", N_FAKE), ("second", N_FAKE - 4)):
        out = tmp_path / parent / "mimic-ils"
        build(None, out, stages=FakeStages(n_studies), progress=False)
        expected = pq.read_table(out / "train" / "metadata.parquet").num_rows
        sizes[parent] = datasets.load_dataset(str(out), "pairs", split="train").num_rows
        assert sizes[parent] == expected
    assert sizes["first"] != sizes["second"]


@pytest.mark.parametrize(("shares", "named"), [
    ({"pneumonia": 1.5, "atelectasis": 0.1, "opacity": 0.0, "consolidation": 0.0, "edema": 0.0, "effusion": 0.2},
     "negative_global_share.pneumonia must be a number in [0, 1]"),
    ({"pneumonia": 0.1}, "missing ['atelectasis', 'consolidation', 'edema', 'effusion', 'opacity']"),
    ({"pneumonia": 0.1, "atelectasis": 0.1, "opacity": 0.0, "consolidation": 0.0, "edema": 0.0, "effusion": 0.2,
      "cardiomegaly": 0.5}, "unknown ['cardiomegaly']"),
])
def test_bad_negative_shares_are_refused_before_any_work(shares, named, tmp_path):
    config = BuildConfig(grounding={"negative_global_share": shares})
    with pytest.raises(MimicIlsError, match=r"build config grounding: .*" + re.escape(named)):
        build(None, tmp_path / "out", config=config, stages=FakeStages(4), work=tmp_path / "work", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_full_check_finds_a_same_size_old_dated_corruption_and_recomputes_it(tmp_path):
    """A flipped byte that keeps the size and an older mtime passes the default merge's cheap checks; ``full_check``
    (``--full-check``) hashes every PNG, recomputes the study, and the output is the clean build's bytes again."""
    out, work = tmp_path / "out", tmp_path / "work"
    build(None, out, stages=FakeStages(N_FAKE), work=work, progress=False)
    clean = folder_bytes(out)
    mask = sorted((work / "masks").glob("*.png"))[0]
    stamp = mask.stat().st_mtime_ns - 86_400 * 10**9
    with open(mask, "r+b") as handle:  # in place: the output's hard link of it sees the damage too
        handle.seek(-13, os.SEEK_END)
        byte = handle.read(1)
        handle.seek(-13, os.SEEK_END)
        handle.write(bytes([byte[0] ^ 1]))
    os.utime(mask, ns=(stamp, stamp))
    assert folder_bytes(out) != clean
    build(None, out, stages=FakeStages(N_FAKE), work=work, progress=False, full_check=True)
    assert folder_bytes(out) == clean
