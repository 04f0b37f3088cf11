"""Builds under ``torchrun`` / ``accelerate launch``: one shard per rank, and a real barrier before the merge.

The launcher starts ``WORLD_SIZE`` processes with ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
Each rank builds its shard (:func:`mimic_ils.orchestration.shard.shard_from_env`, one GPU each); then all ranks
meet in a gloo process group (``torch.distributed.monitored_barrier``: no polling of marker files, and a rank that
never arrives is named) and rank 0 merges while the others exit. Rank 0 finishing first simply waits. Gloo runs
over TCP on the CPU, so the barrier needs no GPU and works across nodes (``torchrun --nnodes``).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Iterator

from mimic_ils.orchestration.shard import Shard
from mimic_ils.schema import MimicIlsError

logger = logging.getLogger(__name__)

# Shards of a hashed split finish hours apart on a real cohort: the barrier waits up to three days by default
DEFAULT_BARRIER_TIMEOUT_S = 72 * 3600.0
_RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT")


@contextlib.contextmanager
def launcher_group(shard: Shard, timeout_s: float = DEFAULT_BARRIER_TIMEOUT_S) -> Iterator[Callable[[int], None]]:
    """A gloo process group over the launcher's ranks for the length of the build; yields ``barrier(n_studies)``,
    which returns once every rank has finished its shard (``MimicIlsError`` naming the ranks that did not, within
    ``timeout_s``). A group the launcher's program already made (``accelerate``) is used as it is."""
    import torch.distributed as dist

    if timeout_s <= 0:
        raise MimicIlsError("--barrier-timeout must be positive (seconds the ranks wait for each other)")
    missing = [name for name in _RENDEZVOUS if not os.environ.get(name)]
    owned = False
    if not dist.is_initialized():
        if missing:
            raise MimicIlsError(
                f"WORLD_SIZE is set but {' and '.join(missing)} is not: not a torchrun / accelerate launch; "
                "run each shard with --shard i/N instead (then --merge)")
        if not dist.is_available():  # pragma: no cover - standard torch wheels have torch.distributed
            raise MimicIlsError("torch.distributed is not available in this torch build; use --shard i/N")
        dist.init_process_group("gloo", rank=shard.index, world_size=shard.count,
                                timeout=datetime.timedelta(seconds=timeout_s))
        owned = True
    elif (dist.get_rank(), dist.get_world_size()) != (shard.index, shard.count):
        raise MimicIlsError(f"the process group (rank {dist.get_rank()} of {dist.get_world_size()}) does not match "
                            f"RANK / WORLD_SIZE ({shard})")
    group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s)) if not owned else None

    def barrier(n_studies: int) -> None:
        if shard.count > 1:
            logger.info("rank %d of %d: shard done (%d studies); waiting for the other ranks", shard.index,
                        shard.count, n_studies)
        try:
            dist.monitored_barrier(group=group, timeout=datetime.timedelta(seconds=timeout_s), wait_all_ranks=True)
        except RuntimeError as error:
            raise MimicIlsError(
                f"rank {shard.index} of {shard.count}: not every rank finished its shard within {timeout_s:g} s "
                f"({str(error).splitlines()[0]}); finished studies are kept: rerun the same command") from None

    try:
        yield barrier
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["DEFAULT_BARRIER_TIMEOUT_S", "launcher_group"]
