"""Progress of a long loop in every ``mimic-ils`` command (build, merge, synth, scan, cues, ...): the one
implementation, :mod:`rosalia_hf.progress` (a tqdm bar on a terminal, plain lines elsewhere), bound to the
``mimic_ils.progress`` logger, so that ``mimic-ils -q`` and a library caller's ``logging`` settings govern it.

    with progress("synth", total=len(plans), unit="studies") as bar:
        for plan in plans:
            ...
            bar.update()
"""

from __future__ import annotations

import logging

from rosalia_hf import progress as _progress
from rosalia_hf.progress import MAX_INTERVAL_S, MIN_INTERVAL_S, STEPS

logger = logging.getLogger(__name__)


class Progress(_progress.Progress):
    """:class:`rosalia_hf.progress.Progress` on the ``mimic_ils.progress`` logger."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("logger", logger)
        super().__init__(*args, **kwargs)


def progress(name: str, total: int, unit: str, *, enabled: bool = True, position: int = 0) -> Progress:
    """A :class:`Progress` on stderr: a tqdm bar on a terminal, plain lines elsewhere, nothing when disabled."""
    return Progress(name, total, unit, enabled=enabled, position=position)


__all__ = ["Progress", "progress", "MIN_INTERVAL_S", "MAX_INTERVAL_S", "STEPS"]
