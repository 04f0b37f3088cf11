"""Slow training checks: 2-process torchrun on CPU (gloo), DeepSpeed ZeRO-2 on CPU, and the learning run.

Each runs ``examples/train_rosalia.py`` (or the trainer) through its real code path on a dataset folder with the
documented features (``_training_helpers.write_dataset_folder``).
Run with ``.venv/bin/python -m pytest -m slow tests/test_training_slow.py``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from _training_helpers import write_built_folder, write_dataset_folder

from rosalia_hf.data import RosaliaPairs
from rosalia_hf.sampler import BalancedPolarityBatchSampler

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
TINY_CPU = ROOT / "examples/configs/tiny_cpu.yaml"

pytestmark = pytest.mark.slow

# The learning run's bars. N-Acc chance is 0.5 (empty or not at random); an always-empty model scores N-Acc 1 but
# gIoU 0, so the two bars only pass together for a model that segments positives and leaves negatives empty.
GIOU_REACHED = 0.3
N_ACC_REACHED = 0.6
LEARNING_STEPS = 150


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun(script_args: list[str], env_extra: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **env_extra}
    command = [str(TORCHRUN), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
               str(_free_port()), str(ROOT / "examples/train_rosalia.py"), *script_args]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def _metric_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"step"')]


def _read_batch_log(folder: Path, rank: int) -> list[list[int]]:
    lines = (folder / f"batches-rank{rank}.jsonl").read_text().splitlines()
    return [json.loads(line)["indices"] for line in lines]


def test_torchrun_two_processes_train_disjoint_balanced_batches_over_two_epochs(tmp_path):
    folder = write_dataset_folder(tmp_path / "ils", num_train_images=24, num_validate_images=4)
    out, batch_log = tmp_path / "run", tmp_path / "batches"
    result = _torchrun(
        ["--config", str(TINY_CPU), "--dataset", folder, "--output_dir", str(out), "--max_steps", "-1",
         "--num_train_epochs", "2", "--per_device_train_batch_size", "4", "--global_train_batch_size", "8",
         "--eval_strategy", "no", "--eval_max_samples", "8", "--logging_steps", "1", "--save_merged", "false"],
        {"ROSALIA_BATCH_LOG": str(batch_log)}, timeout=300,
    )
    # rank 0 alone prints the metric lines: before training and after 2 epochs of 3 steps (6 batches / 2 ranks)
    lines = _metric_lines(result.stdout)
    assert [line["step"] for line in lines] == [0, 6], result.stdout[-2000:]
    assert set(lines[1]) == {"step", "giou", "ciou", "n_acc"}
    assert (out / "adapters" / "adapter_model.safetensors").is_file()
    assert (out / "loss_curve.png").is_file()

    train = RosaliaPairs(datasets.load_dataset(folder, "images", split="train"))
    seen = {rank: _read_batch_log(batch_log, rank) for rank in (0, 1)}
    for rank in (0, 1):
        expected = []
        for epoch in (0, 1):
            # the same sampler the trainer builds, sharded by itself instead of by accelerate
            sampler = BalancedPolarityBatchSampler(train.positive, 4, image_ids=train.image_keys, num_replicas=2,
                                                   rank=rank, seed=0)
            sampler.set_epoch(epoch)
            expected += list(sampler)
        assert seen[rank] == expected, f"rank {rank} got other batches than the sampler deals it"
        assert all(sum(train.positive[i] for i in batch) == 2 and len(batch) == 4 for batch in seen[rank])
    per_epoch = len(seen[0]) // 2
    for epoch in (0, 1):
        window = slice(epoch * per_epoch, (epoch + 1) * per_epoch)
        rank0 = {i for batch in seen[0][window] for i in batch}
        rank1 = {i for batch in seen[1][window] for i in batch}
        assert rank0 and rank1 and not rank0 & rank1
    # set_epoch reached the sampler through accelerate's BatchSamplerShard: epoch 1 is not epoch 0 again
    assert seen[0][:per_epoch] != seen[0][per_epoch:]


def test_deepspeed_zero2_trains_on_cpu_under_torchrun(tmp_path):
    folder = write_dataset_folder(tmp_path / "ils", num_train_images=16, num_validate_images=4)
    out = tmp_path / "run"
    extensions = os.environ.get("TORCH_EXTENSIONS_DIR") or str(tmp_path / "torch_extensions")
    result = _torchrun(
        ["--config", str(TINY_CPU), "--dataset", folder, "--output_dir", str(out), "--max_steps", "3",
         "--per_device_train_batch_size", "2", "--global_train_batch_size", "4", "--eval_strategy", "no",
         "--eval_max_samples", "8", "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "3",
         "--save_merged", "false", "--deepspeed", str(ROOT / "examples/configs/ds_zero2.json")],
        {"DS_BUILD_OPS": "0", "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": extensions}, timeout=420,
    )
    assert [line["step"] for line in _metric_lines(result.stdout)] == [0, 3], result.stdout[-2000:]
    assert (out / "adapters" / "adapter_model.safetensors").is_file()
    # ZeRO-2 partitions the optimizer states: one shard per rank in the DeepSpeed checkpoint
    shards = sorted(path.name for path in (out / "checkpoint-3").glob("global_step3/*optim_states.pt"))
    ranks = [re.fullmatch(r"(?:bf16_)?zero_pp_rank_(\d)_mp_rank_00_optim_states\.pt", name) for name in shards]
    assert all(ranks) and [int(match.group(1)) for match in ranks] == [0, 1], shards
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    losses = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 3 and all({"ce_loss", "mask_bce_loss", "mask_dice_loss"} <= set(e) for e in losses)


def test_tiny_rosalia_learns_to_segment_and_to_say_no(tmp_path):
    """Learning run (issue 8 item 5): from random init, validation gIoU rises to >= 0.3 and N-Acc above chance."""
    sys.path.insert(0, str(ROOT / "examples"))
    import learning_curve

    points = learning_curve.run(ROOT / "examples/configs/tiny_learning.yaml", tmp_path / "run", eval_every=75,
                                max_steps=LEARNING_STEPS)
    first, last = points[0], points[-1]
    assert first["step"] == 0 and first["giou"] < 0.15, first
    assert last["step"] == LEARNING_STEPS and last["giou"] >= GIOU_REACHED and last["n_acc"] >= N_ACC_REACHED, points
    assert (tmp_path / "run" / "learning_curve.png").stat().st_size > 1000


def test_tiny_rosalia_trains_on_conversations_and_is_evaluated_per_turn(tmp_path, capsys):
    """Issue 19: the training script on the `conversations` config of a folder in the build's layout (one mask per
    [SEG], the paper's loss per turn; conversations of 3, 4 and 2 turns), then the evaluation script on the same
    config prints the reasoning and per-turn rows (turns 1 to 4)."""
    import runpy

    sys.path.insert(0, str(ROOT / "examples"))
    import train_rosalia

    folder = write_built_folder(tmp_path / "ils", 12, 4)
    out = tmp_path / "run"
    result = train_rosalia.main(["--config", str(TINY_CPU), "--dataset", folder, "--train_config", "conversations",
                                 "--output_dir", str(out), "--max_steps", "6", "--logging_steps", "2",
                                 "--eval_strategy", "no"])
    assert result["train_seconds"] > 0 and (out / "merged" / "config.json").is_file()
    assert "(36 training pairs," in (out / "merged" / "README.md").read_text()  # 12 conversations of 3, 4, 2 turns
    logged = result["losses"]
    assert [entry["step"] for entry in logged] == [2, 4, 6]
    for entry in logged:  # the paper's three terms, over every turn of every conversation
        assert all(np.isfinite(entry[name]) and entry[name] > 0 for name in ("loss", "ce_loss", "mask_bce_loss"))
        assert np.isfinite(entry["mask_dice_loss"])
    assert logged[-1]["loss"] < logged[0]["loss"], logged
    capsys.readouterr()
    evaluation = tmp_path / "eval"
    main = runpy.run_path(str(ROOT / "examples" / "evaluate_rosalia.py"))["main"]
    assert main(["--model", str(out / "merged"), "--dataset", folder, "--config", "conversations", "--split",
                 "validation", "--out", str(evaluation), "--max-new-tokens", "8", "--device", "cpu",
                 "--no-progress"]) == 0
    report = (evaluation / "report.md").read_text()
    assert "| Reasoning |" in report and "## By turn (conversations)" in report
    assert all(f"| Turn {turn} |" in report for turn in (1, 2, 3, 4))
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["num_positive"] + metrics["num_negative"] == 12  # 4 conversations of 3, 4, 2 and 3 turns
    assert list(metrics["per_turn"]) == ["1", "2", "3", "4"] and metrics["per_turn"]["4"]["num_negative"] == 1
    assert "reasoning" in metrics["per_question_type"] and "reasoning" in metrics["text_accuracy_per_question_type"]
