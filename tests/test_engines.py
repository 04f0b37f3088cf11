"""The build engines give the same bytes: ``local`` vs ``ray`` (a local Ray instance of 2 CPUs), a Ray worker killed
mid-build, and the README's ``torchrun`` form with 2 gloo ranks where rank 0 finishes first; bad engine input is
refused in one line before any work."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mimic_ils.orchestration import BuildConfig, build
from mimic_ils.orchestration.ray_engine import (
    RayPlan,
    RayUnavailable,
    check_address,
    check_resources,
    model_pools,
    parse_stage_numbers,
)
from mimic_ils.orchestration.shard import shard_of
from mimic_ils.schema import MimicIlsError

sys.path.insert(0, str(Path(__file__).parent))
from _build_helpers import folder_bytes  # noqa: E402
from _cohort import make_cohort  # noqa: E402

N_STUDIES = 10
CONFIG = BuildConfig(vision="phantom", batch_size=2)  # 2 studies per batch: five batches stream through Ray


@pytest.fixture(scope="module", autouse=True)
def fixed_commit():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MIMIC_ILS_CODE_COMMIT", "0" * 40)
        yield


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory, n_studies=N_STUDIES, seed=5)


@pytest.fixture(scope="module")
def local_build(cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    result = build(cohort, out, config=CONFIG, progress=False)
    assert result["processed"]["computed"] == N_STUDIES
    return out


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             object_store_memory=256 * 2**20)
    yield ray
    ray.shutdown()


def test_ray_engine_gives_the_bytes_of_the_local_engine(ray_instance, cohort, local_build, tmp_path):
    out = tmp_path / "out"
    result = build(cohort, out, config=CONFIG, engine="ray", progress=False)
    assert result["processed"] == {"cached": 0, "computed": N_STUDIES, "retry": 0}
    local = folder_bytes(local_build)
    assert [name for name in local if name.endswith(".parquet")] and folder_bytes(out) == local
    # the cache of the work folder is the local engine's: a rerun computes nothing and writes the same bytes
    again = build(cohort, out, config=CONFIG, engine="ray", progress=False)
    assert again["processed"] == {"cached": N_STUDIES, "computed": 0, "retry": 0}
    assert folder_bytes(out) == local
    assert not list((tmp_path / "out.work").glob(".ray-check-*"))  # the shared-folder probe cleans up


def _ray_workers(title: str) -> list[int]:
    """Pids of this machine's Ray worker processes whose title names ``title`` (``ray::MapWorker(...)``)."""
    import psutil

    pids = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        command = " ".join(process.info["cmdline"] or ())
        if command.startswith("ray::") and title in command:
            pids.append(process.info["pid"])
    return pids


def test_a_ray_worker_killed_mid_build_changes_no_byte(ray_instance, cohort, local_build, tmp_path):
    out, work = tmp_path / "out", tmp_path / "out.work"
    # different CPUs per actor: the model steps run in three pools of their own (not the one CPU pool)
    plan = RayPlan(cpus={"pseudo_normal": 0.3})
    assert model_pools(plan.stage_gpus(True), plan.stage_cpus(plan.stage_gpus(True))) == [
        ("lungs_heart",), ("pseudo_normal",), ("anatomy", "lesion_boxes")]
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = build(cohort, out, config=CONFIG, engine="ray", ray_plan=plan, progress=False)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    killed, done_at_kill = None, None
    deadline = time.monotonic() + 300
    while thread.is_alive() and killed is None and time.monotonic() < deadline:
        done = len(list((work / "studies").glob("*.json"))) if (work / "studies").is_dir() else 0
        workers = _ray_workers("MapBatches(_ModelStep)")
        if done >= 1 and workers:
            killed, done_at_kill = workers[0], done
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    thread.join(600)
    assert "error" not in outcome, outcome.get("error")
    assert killed is not None and done_at_kill < N_STUDIES  # a model worker died with studies still to do
    assert killed not in _ray_workers("MapBatches(_ModelStep)")  # (its pool restarted another)
    assert outcome["result"]["processed"]["computed"] == N_STUDIES
    assert folder_bytes(out) == folder_bytes(local_build)


def test_a_stage_asking_for_missing_gpus_is_refused_before_any_work(ray_instance, cohort, tmp_path):
    with pytest.raises(RayUnavailable, match=r"pseudo_normal stage asks for 1 GPU per actor.*--ray-gpus "
                                             r"pseudo_normal=0"):
        build(cohort, tmp_path / "out", config=CONFIG, engine="ray", ray_plan=RayPlan(gpus={"pseudo_normal": 1}),
              progress=False)
    assert not (tmp_path / "out.work" / "studies").exists() and not (tmp_path / "out").exists()


def test_check_resources_names_the_stage_and_the_best_node():
    nodes = [{"Resources": {"CPU": 8.0, "GPU": 1.0}}, {"Resources": {"CPU": 16.0}}]
    check_resources(nodes, {"pseudo_normal": 1.0}, {"prepare": 16.0})
    with pytest.raises(RayUnavailable, match=r"anatomy stage asks for 2 GPU .*the most on one node: 1\)"):
        check_resources(nodes, {"pseudo_normal": 1.0, "anatomy": 2.0}, {})
    with pytest.raises(RayUnavailable, match=r"finish stage asks for 32 CPU"):
        check_resources(nodes, {}, {"finish": 32.0})


def test_a_node_that_does_not_share_the_work_folder_is_named(ray_instance, tmp_path):
    from mimic_ils.orchestration import ray_engine

    ray = ray_instance
    nodes = [node for node in ray.nodes() if node["Alive"]]
    mimic = tmp_path / "mimic"
    (mimic / "files").mkdir(parents=True)
    (mimic / "files" / "s1.txt").write_text("report")
    ray_engine.check_shared_folders(ray, nodes, tmp_path / "work", mimic, "files/s1.txt")  # one machine: shared
    assert not list((tmp_path / "work").glob(".ray-check-*"))
    with pytest.raises(RayUnavailable, match=r"does not see .*missing\.txt.*file system every node shares"):
        ray_engine.check_shared_folders(ray, nodes, tmp_path / "work", mimic, "files/missing.txt")
    assert ray_engine._node_sees(str(tmp_path / "elsewhere" / ".ray-check-x"), "x", str(mimic)).startswith(
        "does not see the work folder")
    token = tmp_path / "token"
    token.write_text("other")
    assert ray_engine._node_sees(str(token), "mine", str(mimic)).startswith("reads another file")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_ray_address_is_one_line_before_any_work(cohort, tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    with pytest.raises(RayUnavailable, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:\d+ .*ray start --head"):
        check_address(address, timeout_s=2)
    with pytest.raises(RayUnavailable, match="expected host:port"):
        check_address("head-node")
    command = [sys.executable, "-m", "mimic_ils", "build", "--mimic-root", str(cohort), "--out", str(tmp_path / "o"),
               "--backends", "phantom", "--engine", "ray", "--ray-address", address]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and time.monotonic() - started < 60
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot reach the Ray cluster" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "o.work" / "studies").exists()


@pytest.mark.parametrize("flags, named", [
    (["--engine", "ray", "--shard", "0/2"], "drop --shard"),
    (["--ray-gpus", "pseudo_normal=1"], "only apply with --engine ray"),
    (["--engine", "ray", "--ray-gpus", "radedit=1"], "--ray-gpus radedit"),
    (["--engine", "ray", "--ray-gpus", "pseudo_normal"], "expected STAGE=NUMBER"),
    (["--engine", "ray", "--ray-cpus", "finish=-1"], "expected a number of 0 to 64"),
])
def test_bad_engine_flags_are_refused_in_one_line(flags, named, cohort, tmp_path, capsys):
    from mimic_ils.cli import main

    code = main(["build", "--mimic-root", str(cohort), "--out", str(tmp_path / "o"), "--backends", "phantom",
                 *flags])
    err = capsys.readouterr().err
    assert code != 0 and named in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.work" / "studies").exists()


def test_without_ray_the_engine_says_how_to_install_it(cohort, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RayUnavailable, match=r"pip install 'mimic-ils\[ray\]'"):
        build(cohort, tmp_path / "out", config=CONFIG, engine="ray", progress=False)


def test_stage_numbers_and_pools():
    assert parse_stage_numbers(["pseudo_normal=2", "anatomy=0.5"], "--ray-gpus") == {"pseudo_normal": 2.0,
                                                                                     "anatomy": 0.5}
    real = RayPlan()
    gpus = real.stage_gpus(on_cpu=False)
    assert gpus == {"lungs_heart": 0.25, "pseudo_normal": 1.0, "anatomy": 0.5, "lesion_boxes": 0.25}
    assert model_pools(gpus, real.stage_cpus(gpus)) == [("lungs_heart",), ("pseudo_normal",), ("anatomy",),
                                                        ("lesion_boxes",)]
    cpu = real.stage_gpus(on_cpu=True)
    assert set(cpu.values()) == {0.0} and model_pools(cpu, real.stage_cpus(cpu)) == [
        ("lungs_heart", "pseudo_normal", "anatomy", "lesion_boxes")]
    with pytest.raises(MimicIlsError, match="--ray-max-actors"):
        RayPlan(max_actors=0)


def test_readme_torchrun_form_with_rank_0_finishing_first(cohort, tmp_path):
    """``torchrun --standalone --nproc-per-node 2 -m mimic_ils build ...`` (2 gloo ranks on the CPU): rank 0's
    shard is the lighter one, so it waits at the barrier; rank 0 then merges the bytes of a one-process build."""
    from mimic_ils import ingest

    studies = sorted(ingest.iter_studies(cohort), key=lambda study: study.study_id)

    def imbalance(limit: int) -> int:  # rank 1's frontal images minus rank 0's, among the first ``limit`` studies
        return sum((1 if shard_of(study.study_id, 2) else -1) * len(study.frontal_images) for study in studies[:limit])

    limit = max(range(1, len(studies) + 1), key=lambda k: (imbalance(k), -k))
    assert imbalance(limit) >= 1  # (the cohort is fixed: this picks the same limit every run)
    seconds = 4.0  # per image, as a slow model: rank 1 ends at least 4 s after rank 0
    config = tmp_path / "build.yaml"
    config.write_text(
        "batch_size: 2\nvision:\n  steps:\n"
        f"    lungs_heart: {{name: phantom, options: {{seconds_per_image: {seconds}}}}}\n"
        "    pseudo_normal: phantom\n    anatomy: phantom\n    lesion_boxes: phantom\n")
    reference = tmp_path / "reference"
    build(cohort, reference, config=BuildConfig.from_yaml(config), limit=limit, progress=False)
    out = tmp_path / "out"
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node", "2", "-m",
               "mimic_ils", "build", "--mimic-root", str(cohort), "--out", str(out), "--config", str(config),
               "--limit", str(limit), "--no-progress"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    shards = tmp_path / "out.work" / "shards"
    finished = {index: (shards / f"{index}-of-2.done").stat().st_mtime for index in (0, 1)}
    assert finished[0] + 2.0 < finished[1]  # rank 0 finished its shard first, and waited
    assert "rank 0 of 2: shard done" in result.stderr and "shard done; rank 0 merges" in result.stdout
    assert folder_bytes(out) == folder_bytes(reference)


def test_a_launch_without_a_rendezvous_is_refused_in_one_line(monkeypatch):
    from mimic_ils.orchestration.launcher import launcher_group
    from mimic_ils.orchestration.shard import Shard

    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("MASTER_PORT", "29500")
    with pytest.raises(MimicIlsError, match=r"WORLD_SIZE is set but MASTER_ADDR is not.*--shard i/N"):
        with launcher_group(Shard(0, 2)):
            pass
    with pytest.raises(MimicIlsError, match="--barrier-timeout must be positive"):
        with launcher_group(Shard(0, 2), timeout_s=0):
            pass


def test_items_travel_with_their_masks_bit_packed_and_come_back_exact():
    import numpy as np

    from mimic_ils.orchestration.ray_engine import _Item, pack_item, unpack_item
    from mimic_ils.schema import ImageRecord, Study
    from mimic_ils.vision.base import LungsHeart

    rng = np.random.default_rng(0)
    masks = [rng.random((37, 53)) > 0.5 for _ in range(4)]
    image = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    study = Study("1", "2", "train", "files/s2.txt", (ImageRecord("d", "1", "2", "PA", "files/d.dcm"),))
    state = {"image": image, "lungs_heart": LungsHeart(masks[0], masks[1], masks[2]),
             "anatomy": {"heart": masks[3]}, "pseudo_normal": image[::-1].copy()}
    blob = pack_item(_Item(study, pending={"d": state}))
    assert len(blob) < sum(mask.size for mask in masks)  # a bit per mask pixel, not a byte
    back = unpack_item(blob).pending["d"]
    assert np.array_equal(back["image"], image) and np.array_equal(back["pseudo_normal"], image[::-1])
    lungs = back["lungs_heart"]
    assert all(np.array_equal(got, want) and got.dtype == bool
               for got, want in zip((lungs.lung_right, lungs.lung_left, lungs.heart, back["anatomy"]["heart"]),
                                    masks, strict=True))
    assert unpack_item(pack_item(_Item(study))).study == study
