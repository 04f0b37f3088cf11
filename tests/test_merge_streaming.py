"""The streaming merge (issue 18): the same bytes as the former in-memory merge, the same global negatives as
``choose_global_negatives``, bounded memory (never more than a study's rows), the manifest taking the recorded
sha256 of the PNGs, and progress of both passes."""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import weakref
from pathlib import Path

import pytest

from mimic_ils.files import FileRecord
from mimic_ils.orchestration import BuildConfig, build
from mimic_ils.orchestration.merge import MissingResults, merge, merge_in_memory
from mimic_ils.orchestration.output import MANIFEST, write_manifest
from mimic_ils.orchestration.workdir import WorkDir, read_checked_json, write_checked_json
from mimic_ils.orchestration.writer import SplitStream
from mimic_ils.pairs import GlobalNegativeChooser, choose_global_negatives
from mimic_ils.rows import PairRow, SplitCounter, StudyResult, split_counts
from mimic_ils.schema import LESION_TYPES, MimicIlsError, Study

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from _build_helpers import FakeStages, folder_bytes  # noqa: E402
from _cohort import make_cohort  # noqa: E402
from bench_merge import replicate  # noqa: E402

INFO = {"code_version": "test", "code_commit": "0" * 40}
N_REPLICATED = 2000



def studies_of(work: Path) -> list[Study]:
    return [Study("0", path.stem, "", "") for path in sorted((work / "studies").glob("*.json"))]


@pytest.fixture(scope="module")
def phantom_work(tmp_path_factory) -> Path:
    """The work folder of a real (phantom) build: basic negatives, so some are made global."""
    cohort = make_cohort(tmp_path_factory, n_studies=30, seed=0)
    root = tmp_path_factory.mktemp("phantom_merge")
    build(cohort, root / "out", config=BuildConfig(vision="phantom"), work=root / "work", progress=False)
    return root / "work"


@pytest.fixture(scope="module")
def replicated_work(phantom_work, tmp_path_factory) -> Path:
    """The phantom build's artifacts copied under new ids (the benchmark's replication) to a few thousand pairs."""
    work = tmp_path_factory.mktemp("replicated") / "work"
    assert replicate(phantom_work, work, N_REPLICATED) >= N_REPLICATED
    return work


@pytest.mark.parametrize("which", ["phantom_work", "replicated_work"])
def test_streaming_merge_writes_the_in_memory_merges_bytes(which, request, tmp_path):
    work = request.getfixturevalue(which)
    streamed = merge(WorkDir(work), studies_of(work), tmp_path / "stream", dict(INFO))
    reference = merge_in_memory(WorkDir(work), studies_of(work), tmp_path / "memory", dict(INFO))
    assert streamed == reference
    assert folder_bytes(tmp_path / "stream") == folder_bytes(tmp_path / "memory")
    assert sum(counts["pairs"] for counts in streamed["counts"].values()) > 50
    rows = [row for split in ("train", "validation", "test")
            for row in _parquet_rows(tmp_path / "stream" / split / "metadata.parquet")]
    assert {"global", "basic"} <= {row["question_type"] for row in rows if row["polarity"] == "negative"}


def _parquet_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist() if path.exists() else []


# --- global negatives in two passes ---

def _random_rows(rng: random.Random) -> list[list[dict]]:
    """Rows grouped by study: several images, repeated candidates of one (study, lesion), positives by target."""
    groups = []
    for index in range(rng.randint(1, 60)):
        study, rows = f"5{index:07d}", []
        for _ in range(rng.randint(0, 8)):
            lesion = rng.choice(LESION_TYPES)
            rows.append({"study_id": study, "dicom_id": f"d{rng.randint(0, 2)}", "lesion": lesion,
                         "target": rng.choice([lesion, lesion, "opacity"]),
                         "question_type": rng.choice(["basic", "basic", "global", "lesion_inference"]),
                         "polarity": rng.choice(["negative", "negative", "positive"]), "instruction": "x",
                         "answer": "y", "locations": ["left lung base"], "id": str(len(rows))})
        groups.append(rows)
    return groups


@pytest.mark.parametrize("seed", range(40))
def test_two_pass_chooser_equals_choose_global_negatives(seed):
    rng = random.Random(seed)
    groups = _random_rows(rng)
    shares = {lesion: rng.choice([0.0, 0.1, 0.3, 0.5, 1.0]) for lesion in LESION_TYPES if rng.random() < 0.9}
    chooser = GlobalNegativeChooser(shares)
    for rows in groups:
        chooser.observe(rows)
    chooser.decide()
    streamed = [row for rows in groups for row in chooser.apply(rows)]
    expected = choose_global_negatives([row for rows in groups for row in rows], shares)
    assert streamed == expected


def test_chooser_keeps_the_row_order_on_ties_and_refuses_misuse():
    row = {"study_id": "s1", "dicom_id": "d", "lesion": "edema", "target": "edema", "question_type": "basic",
           "polarity": "negative", "instruction": "x", "answer": "y", "locations": ["left lung base"]}
    rows = [{**row, "id": str(index)} for index in range(3)]  # one (study, lesion), three candidates: two chosen
    chooser = GlobalNegativeChooser({"edema": 2 / 3})
    with pytest.raises(ValueError, match="before decide"):
        chooser.apply(rows)
    chooser.observe(rows)
    chooser.decide()
    out = chooser.apply(rows)
    assert [item["question_type"] for item in out] == ["global", "global", "basic"]
    assert out == choose_global_negatives(rows, {"edema": 2 / 3}) and rows[0]["question_type"] == "basic"
    with pytest.raises(ValueError, match="after decide"):
        chooser.observe(rows)


# --- bounded memory ---

def test_the_merge_never_holds_more_than_a_few_studies_rows(replicated_work, tmp_path, monkeypatch):
    """Live PairRow objects, counted as they are made and freed: the streaming merge holds a bounded number (a few
    copies of one study's rows and one image's), the in-memory merge all of them."""
    live, peak = [0], [0]

    def freed() -> None:
        live[0] -= 1

    def counted(self) -> None:
        original(self)
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        weakref.finalize(self, freed)

    original = PairRow.__post_init__
    monkeypatch.setattr(PairRow, "__post_init__", counted)
    results = [StudyResult.from_json(read_checked_json(path)) for path in (replicated_work / "studies").glob("*")]
    largest, total = max(len(result.pairs) for result in results), sum(len(result.pairs) for result in results)
    del results
    live[0] = peak[0] = 0
    merge(WorkDir(replicated_work), studies_of(replicated_work), tmp_path / "stream", dict(INFO))
    streaming_peak = peak[0]
    live[0] = peak[0] = 0
    merge_in_memory(WorkDir(replicated_work), studies_of(replicated_work), tmp_path / "memory", dict(INFO))
    assert total >= N_REPLICATED and streaming_peak <= 5 * largest < total <= peak[0]


def test_split_stream_refuses_rows_out_of_order_and_counts_as_split_counts(replicated_work, tmp_path):
    results = [StudyResult.from_json(read_checked_json(path))
               for path in sorted((replicated_work / "studies").glob("*"))[:40]]
    rows = [row for result in results if result.split == "train" for row in result.pairs]
    counter = SplitCounter()
    for row in rows:
        counter.add(row)
    values = {name: [getattr(row, name) for row in rows] for name in ("polarity", "dicom_id", "study_id",
                                                                      "mask_file_name")}
    assert counter.counts() == split_counts(values) and counter.counts()["pairs"] == len(rows) > 0
    stream = SplitStream(tmp_path / "train")
    stream.add(rows[1])
    with pytest.raises(MimicIlsError, match="must arrive sorted"):
        stream.add(rows[0])


# --- recorded checksums ---

@pytest.fixture
def fake_work(tmp_path) -> WorkDir:
    work = WorkDir(tmp_path / "work")
    build(None, tmp_path / "first", stages=FakeStages(8), work=work.root, progress=False)
    return work


def test_the_manifest_lists_recorded_digests_without_hashing_pngs(fake_work, tmp_path, monkeypatch):
    hashed = []
    of_file = FileRecord.of_file.__func__
    monkeypatch.setattr(FileRecord, "of_file", classmethod(lambda cls, path: hashed.append(Path(path).name)
                                                           or of_file(cls, path)))
    merge(fake_work, studies_of(fake_work.root), tmp_path / "out", dict(INFO))
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())["files"]
    pngs = [name for name in manifest if name.endswith(".png")]
    assert pngs and not [name for name in hashed if name.endswith(".png")]
    assert sorted(hashed) == sorted(Path(name).name for name in manifest if not name.endswith(".png"))
    monkeypatch.undo()
    assert all(manifest[name] == FileRecord.of_file(tmp_path / "out" / name).to_json() for name in manifest)


def _corrupt_a_mask(work: WorkDir) -> tuple[Path, Path, str]:
    """Flip a byte of a mask (same size); the mask, the artifact of a study naming it, and its recorded sha256."""
    for artifact in sorted((work.root / "studies").glob("*.json")):
        files = read_checked_json(artifact)["files"]
        name = next((name for name in sorted(files) if name.startswith("masks/")), None)
        if name:
            data = bytearray((work.root / name).read_bytes())
            data[len(data) // 2] ^= 0xFF
            (work.root / name).write_bytes(bytes(data))
            return work.root / name, artifact, files[name]["sha256"]
    raise AssertionError("no study names a mask")


def test_a_png_changed_after_its_artifact_is_hashed_and_its_study_recomputed(fake_work, tmp_path):
    mask, artifact, _ = _corrupt_a_mask(fake_work)  # written now: newer than the artifact that records it
    with pytest.raises(MissingResults, match="no valid result"):
        merge(fake_work, studies_of(fake_work.root), tmp_path / "out", dict(INFO))
    assert not artifact.exists() and not (tmp_path / "out").exists()


def test_a_png_unchanged_in_size_and_time_keeps_its_record_unless_full_check(fake_work, tmp_path):
    """Deliberate: the default merge trusts the record of a PNG that is older than its artifact and of the recorded
    size (only hashing the PNGs changed since), so the manifest lists the recorded sha256 and a later check of the
    folder against its manifest flags the file; ``full_check`` hashes every PNG and has the study recomputed."""
    mask, artifact, recorded = _corrupt_a_mask(fake_work)
    written = artifact.stat().st_mtime_ns
    os.utime(mask, ns=(written - 10**9, written - 10**9))
    merge(fake_work, studies_of(fake_work.root), tmp_path / "out", dict(INFO))
    name = f"{read_checked_json(artifact)['split']}/images/{mask.parent.name}/{mask.name}"
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())["files"]
    assert manifest[name]["sha256"] == recorded != FileRecord.of_file(tmp_path / "out" / name).sha256
    with pytest.raises(MissingResults, match="no valid result"):
        merge(fake_work, studies_of(fake_work.root), tmp_path / "out", dict(INFO), full_check=True)
    assert not artifact.exists()


def test_write_manifest_hashes_a_known_file_whose_size_differs(tmp_path):
    (tmp_path / "a.png").write_bytes(b"abc")
    (tmp_path / "b.png").write_bytes(b"defg")
    write_manifest(tmp_path, {"a.png": FileRecord("1" * 64, 3), "b.png": FileRecord("2" * 64, 99)})
    files = json.loads((tmp_path / MANIFEST).read_text())["files"]
    assert files == {"a.png": {"sha256": "1" * 64, "size": 3},
                     "b.png": FileRecord.of_file(tmp_path / "b.png").to_json()}


def test_an_artifact_rewritten_between_the_passes_is_refused(fake_work, tmp_path, monkeypatch):
    from mimic_ils.orchestration import merge as merge_module

    original = merge_module.scan_results

    def scan_then_break(work, studies, *args, **kwargs):
        plan = original(work, studies, *args, **kwargs)
        write_checked_json(work.study_path(studies[-1].study_id), {"version": -1})
        return plan

    monkeypatch.setattr(merge_module, "scan_results", scan_then_break)
    with pytest.raises(MissingResults, match="changed during the merge"):
        merge(fake_work, studies_of(fake_work.root), tmp_path / "out", dict(INFO))
    assert not (tmp_path / "out").exists()


# --- progress ---

def test_both_passes_and_the_files_report_progress(fake_work, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mimic_ils.progress")
    merge(fake_work, studies_of(fake_work.root), tmp_path / "out", dict(INFO), show_progress=True)
    lines = [record.getMessage() for record in caplog.records if record.name == "mimic_ils.progress"]
    for prefix in ("merge: 8/8 studies checked", "merge write: 8/8 studies written", "merge files: "):
        assert any(line.startswith(prefix) for line in lines), (prefix, lines)
    placed = next(line for line in lines if line.startswith("merge files: "))
    done, total = placed.split(": ")[1].split(" ")[0].split("/")
    assert done == total and int(total) > 0
