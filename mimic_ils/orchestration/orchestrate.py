"""``build()``: run this process's shard of a build, then (when it is the last step) merge into the output folder."""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from pathlib import Path
from typing import Any

from mimic_ils.files import atomic_write_bytes
from mimic_ils.orchestration.config import BuildConfig
from mimic_ils.orchestration.launcher import DEFAULT_BARRIER_TIMEOUT_S, launcher_group
from mimic_ils.orchestration.merge import MissingResults, check_out_folder, merge
from mimic_ils.orchestration.output import hold_lock, out_lock_path
from mimic_ils.orchestration.pipeline import run_shard, select_studies
from mimic_ils.orchestration.ray_engine import RayPlan
from mimic_ils.orchestration.shard import Shard, resolve_shard, shard_from_env
from mimic_ils.orchestration.stages import ProjectStages, Stages
from mimic_ils.orchestration.workdir import WorkDir
from mimic_ils.schema import MimicIlsError

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")


def default_work_dir(out: str | Path) -> Path:
    """The work folder beside the output folder: ``<out>.work``."""
    out = Path(out)
    return out.parent / f"{out.name}.work"


def build(
    mimic_root: str | Path,
    out: str | Path,
    *,
    config: BuildConfig | None = None,
    work: str | Path | None = None,
    shard: str | Shard | None = None,
    limit: int | None = None,
    merge_step: bool | None = None,
    process: bool = True,
    stages: Stages | None = None,
    progress: bool = True,
    shard_wait_s: float = 0.0,
    force_stages: tuple[str, ...] | list[str] = (),
    engine: str = "local",
    ray_plan: RayPlan | None = None,
    barrier_timeout_s: float = DEFAULT_BARRIER_TIMEOUT_S,
    full_check: bool = False,
) -> dict[str, Any]:
    """Build MIMIC-ILS from ``mimic_root`` into ``out``; resumable (rerun to continue) and shardable.

    ``shard``: ``"i/N"`` or a Shard; default from ``RANK``/``WORLD_SIZE`` or the whole cohort. ``merge_step``:
    assemble the output after processing (default: when this process covers the whole cohort, or is rank 0 of a
    launcher, which then waits up to ``shard_wait_s`` for the other shards). ``process=False`` only merges.
    ``force_stages`` (report / vision / grounding) recomputes those stages for every study of the run.
    ``engine``: ``"local"`` (this process; under ``torchrun`` / ``accelerate launch`` one shard per rank, the ranks
    meeting at a gloo barrier, at most ``barrier_timeout_s``, before rank 0 merges) or ``"ray"`` (the whole cohort
    as one Ray Data pipeline, :mod:`mimic_ils.orchestration.ray_engine`, configured by ``ray_plan``); both give the
    same bytes. ``full_check``: the merge hashes every image and mask PNG against its recorded sha256 (default:
    sizes, and the sha256 of files modified after their study artifact).
    Locks: a second build of the same work folder (or shard) or into the same ``out`` refuses at once, naming the pid.
    Returns ``{"processed": {...}, "info": {...} or None}``.
    """
    from mimic_ils.orchestration.pipeline import FORCE_STAGES

    config = config or BuildConfig()
    config.grounding_config()  # a bad setting is refused before any work, with the key named
    config.pair_config()
    config.reasoning_config()
    unknown = sorted(set(force_stages) - set(FORCE_STAGES))
    if unknown:
        raise MimicIlsError(f"--force-stage {', '.join(unknown)}: expected one of {', '.join(FORCE_STAGES)}")
    trusted = check_out_folder(Path(out))  # before days of work, not at the merge
    stages = stages or ProjectStages(mimic_root, config)
    if hasattr(stages, "validate"):
        stages.validate()  # the vision config (every key, every backend option) before any image
    if engine not in ENGINES:
        raise MimicIlsError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    launched = shard is None and shard_from_env() is not None
    if engine == "ray":
        ray_plan = ray_plan or RayPlan()
        if shard is not None or launched:
            raise MimicIlsError("--engine ray schedules the whole cohort over the Ray cluster itself: drop --shard "
                                "and run it once (not under torchrun / accelerate launch)")
        if not isinstance(stages, ProjectStages):
            raise MimicIlsError("--engine ray runs the project's stages (a MIMIC-CXR root and a build config)")
        from mimic_ils.orchestration.ray_engine import import_ray

        import_ray(ray_plan.address)  # the extra is missing: say so before any work
    current = shard if isinstance(shard, Shard) else resolve_shard(shard)
    group = launcher_group(current, barrier_timeout_s) if launched and process else contextlib.nullcontext()
    if merge_step is None:
        merge_step = current.count == 1 or (shard_from_env() is not None and current.index == 0 and shard is None)
    workdir = WorkDir(work or default_work_dir(out))
    try:
        with contextlib.ExitStack() as locks:
            _take_locks(locks, workdir, Path(out), current, process, merge_step or not process)
            workdir.bind_config(config.fingerprint())
            studies = select_studies(stages.studies(), Shard(), limit)
            runner = _ray_runner(ray_plan) if engine == "ray" else run_shard
            with group as barrier:
                return _process_and_merge(stages, workdir, studies, out, config, current, shard, limit, merge_step,
                                          process, progress, shard_wait_s, tuple(force_stages), trusted,
                                          runner=runner, barrier=barrier, full_check=full_check)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise MimicIlsError(
                f"disk full while writing {error.filename or 'the work or output folder'}; free space and rerun the "
                "same command (finished studies are kept)"
            ) from None
        raise


def _take_locks(locks: contextlib.ExitStack, workdir: WorkDir, out: Path, current: Shard, process: bool,
                merging: bool) -> None:
    """A whole-cohort build holds the work folder alone; shards (and a merge-only run) share it, each shard holding
    its own lock; whoever merges holds the lock beside ``out``."""
    exclusive = process and current.count == 1
    locks.enter_context(hold_lock(workdir.root / "build.lock", f"work folder {workdir.root}", shared=not exclusive))
    if process and current.count > 1:
        locks.enter_context(hold_lock(workdir.root / "locks" / f"{current.index}-of-{current.count}.lock",
                                      f"shard {current} of work folder {workdir.root}"))
    if merging:
        locks.enter_context(hold_lock(out_lock_path(out), f"--out {out}"))


def _ray_runner(plan: RayPlan):
    from mimic_ils.orchestration.ray_engine import run_ray

    def runner(stages, workdir, studies, *, chunk_size, progress, force=()):
        return run_ray(stages, workdir, studies, plan=plan, force=force, show_progress=progress)

    return runner


def _process_and_merge(stages, workdir, studies, out, config, current, shard, limit, merge_step, process, progress,
                       shard_wait_s, force_stages=(), trusted=None, *, runner=run_shard,
                       barrier=None, full_check=False) -> dict[str, Any]:
    processed = {}
    if process:
        mine = [study for study in studies if current.owns(study.study_id)]
        chunk_size = max(4, config.batch_size)  # studies per step: bounds memory and the work lost to a kill
        processed = runner(stages, workdir, mine, chunk_size=chunk_size, progress=progress, force=force_stages)
        atomic_write_bytes(workdir.shard_done_path(current.index, current.count), b"done\n")
        if barrier is not None:  # torchrun / accelerate launch: every rank done before rank 0 merges
            barrier(len(mine))
    info = None
    if merge_step or not process:
        if process and current.count > 1 and barrier is None:
            _wait_for_shards(workdir, current.count, shard_wait_s)
        try:
            info = merge(workdir, studies, out, build_info(config, stages, limit),
                         negative_global_share=config.pair_config().negative_global_share, trusted=trusted,
                         show_progress=progress, full_check=full_check)
        except MissingResults:
            if not process or current.count > 1:
                raise
            # The merge's full check found a file that is intact in size but not in content: recompute, once.
            runner(stages, workdir, studies, chunk_size=max(4, config.batch_size), progress=progress)
            info = merge(workdir, studies, out, build_info(config, stages, limit),
                         negative_global_share=config.pair_config().negative_global_share, trusted=trusted,
                         show_progress=progress, full_check=full_check)
    return {"processed": processed, "info": info}


def build_info(config: BuildConfig, stages: Stages, limit: int | None) -> dict[str, Any]:
    """Provenance written into ``build_info.json`` and the card: never the shard count or a time stamp."""
    from mimic_ils import __version__

    return {
        "code_version": __version__,
        "code_commit": _git_commit(),
        "config": config.fingerprint(),
        "backends": stages.provenance(),
        "limit": limit,
    }


def _git_commit() -> str | None:
    """The commit of the checkout the code runs from (None for an installed wheel or without git);
    ``$MIMIC_ILS_CODE_COMMIT`` overrides it (release builds, tests that compare bytes across commits)."""
    import os
    import subprocess

    if os.environ.get("MIMIC_ILS_CODE_COMMIT"):
        return os.environ["MIMIC_ILS_CODE_COMMIT"]
    folder = Path(__file__).resolve().parents[2]
    if not (folder / ".git").exists():
        return None
    try:
        result = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _wait_for_shards(work: WorkDir, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [index for index in range(count) if not work.shard_done_path(index, count).exists()]
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise MimicIlsError(
                f"shards {missing} of {count} have not finished; rerun them, then `mimic-ils build --merge`"
            )
        time.sleep(5.0)
