"""Location verification (paper Sec. 3.1, Appendix A.6): reported, grounded and empty locations.

* reported locations: the finding's mapped lung labels (``Finding.locations``), deduplicated, in the order the
  mapping gave them (the released dataset keeps that order: "left lung base and left mid zone lung");
* grounded locations: the reported labels whose CXAS anatomy mask intersects at least one kept box; the others
  are dropped;
* empty locations: the lung regions of Table 8 (eight zones and two lungs) that overlap no anatomy mask of any
  positive finding of the report (every positive finding, not only the seven lesion types). A positive finding
  of one of the lung lesion types that names no place could be anywhere, so it leaves no region empty; an
  untyped finding without a lung place (a device, a hernia) blocks nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from mimic_ils.grounding import masks
from mimic_ils.grounding.masks import Window
from mimic_ils.schema import LESION_TYPES, LUNG_LABELS, LUNG_REGIONS, Finding

_ORDER = {label: index for index, label in enumerate(LUNG_LABELS)}


def lung_locations(labels: Iterable[str]) -> tuple[str, ...]:
    """Lung labels (``LUNG_LABELS``) in their given order, first occurrence kept; other labels are dropped."""
    return tuple(dict.fromkeys(label for label in labels if label in _ORDER))


def reported_locations(finding: Finding) -> tuple[str, ...]:
    """The finding's mapped lung labels, in the mapping's order."""
    return lung_locations(finding.locations)


def grounded_locations(
    reported: Sequence[str], anatomy: dict[str, np.ndarray], kept_windows: Sequence[Window]
) -> tuple[str, ...]:
    """The reported labels whose anatomy mask (``HxW bool``) has a pixel inside one of the kept box windows."""
    return tuple(
        label
        for label in reported
        if label in anatomy and any(bool(anatomy[label][window].any()) for window in kept_windows)
    )


def occupied_labels(findings: Iterable[Finding]) -> tuple[set[str], bool]:
    """Labels of every positive finding, and whether a located-nowhere lung lesion occupies every region."""
    labels: set[str] = set()
    everywhere = False
    for finding in findings:
        if not finding.is_positive:
            continue
        located = lung_locations(finding.locations)
        labels.update(located)
        if not located and finding.lesion_type in LESION_TYPES and finding.lesion_type != "cardiomegaly":
            everywhere = True
    return labels, everywhere


def empty_locations(findings: Iterable[Finding], anatomy: dict[str, np.ndarray]) -> tuple[str, ...]:
    """Lung regions (Table 8) whose anatomy mask overlaps no anatomy mask of any positive finding.

    A region without an anatomy mask, or with an empty one, is never offered as empty.
    """
    occupied, everywhere = occupied_labels(findings)
    if everywhere:
        return ()
    present = [anatomy[label] for label in sorted(occupied) if label in anatomy]
    blocked = masks.union(present) if present else None
    scratch = None if blocked is None else np.empty_like(blocked)
    empty = []
    for region in LUNG_REGIONS:
        region_mask = anatomy.get(region)
        if region in occupied or region_mask is None:
            continue
        if (blocked is None or not masks.overlaps(region_mask, blocked, scratch)) and region_mask.any():
            empty.append(region)
    return tuple(empty)
