"""Every constant of grounding, quality control and pair generation, in one dataclass loadable from a dict.

The thresholds of Algorithm 1 are those of the paper's Table 7; the Refine constants (Appendix A.5) and the
quality-control tolerances (Appendix D) are not given numerically in the paper, so the values here are ours and
each is documented where it is declared. Distances are in original-frame pixels unless the name says "fraction".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from mimic_ils.schema import LESION_TYPES

# VinBigData detector classes that are kept as hyperintense lesion boxes (aortic enlargement, other lesion and
# pneumothorax are dropped by the detector backend). Used only when ``use_class_table`` is switched on.
DEFAULT_CLASS_TABLE: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("Cardiomegaly",),
    "pneumonia": ("Consolidation", "Infiltration", "Lung Opacity"),
    "atelectasis": ("Atelectasis",),
    "opacity": (
        "Atelectasis",
        "Calcification",
        "Consolidation",
        "ILD",
        "Infiltration",
        "Lung Opacity",
        "Nodule/Mass",
        "Pleural thickening",
        "Pulmonary fibrosis",
    ),
    "consolidation": ("Consolidation", "Lung Opacity"),
    "edema": ("Infiltration", "Lung Opacity", "ILD"),
    "effusion": ("Pleural effusion",),
}


@dataclass(frozen=True)
class Thresholds:
    """Algorithm 1 thresholds (paper Table 7, "general" column).

    ``tau_ano``: anomaly threshold on ``(x - x_hat) / 255`` (Eq. 1). ``tau_anatomy``: c1, IoU of the box with the
    union of the finding's anatomy masks. ``tau_conf``: c2, detector confidence. ``tau_signal``: c3, fraction of
    the box covered by the anomaly map. ``tau_size``: c4, IoU of the box with the right or the left lung.
    """

    tau_ano: float = 0.10
    tau_anatomy: float = 0.25
    tau_conf: float = 0.20
    tau_signal: float = 0.20
    tau_size: float = 0.10


def _default_lesion_thresholds() -> dict[str, Thresholds]:
    # Table 7, "edema" column: faint, diffuse signal, so the anomaly and confidence thresholds are lowered.
    return {"edema": Thresholds(tau_ano=0.01, tau_conf=0.01)}


EFFUSION_FILLS = ("per_column", "full_rows")  # RefineConfig.effusion_fill
FOCAL_MASK_CLIPS = ("anatomy", "box_dilation")  # GroundingConfig.focal_mask_clip (None = off, the paper)
FOCAL_CLIP_TYPES = ("pneumonia", "atelectasis", "opacity", "consolidation")  # the focal types it applies to


@dataclass(frozen=True)
class RefineConfig:
    """Constants of Refine (Appendix A.5); the paper names the operations, the numbers are ours.

    ``noise_radius``: half-width of the square structuring element of the opening (erosion then dilation) that
    removes scattered noise from the anomaly map before filtering and from each lesion mask; 0 disables it.
    ``grow_steps``: rounds of expansion, each adding the 8-connected neighbours of the mask whose intensity in the
    original image is within ``grow_tolerance * 255`` of the mask's mean intensity; 0 disables expansion.
    ``effusion_min_row_fraction``: for effusion touching a lung base, the lung mask is filled from the lesion's
    top row down to the costophrenic angle (the lung's lowest row), but the fill never starts above this fraction
    of the lung's height (0 = apex, 1 = base), so a tall component cannot flood the whole lung.
    ``effusion_fill``: how that fill is shaped. ``"per_column"`` (default): in each lung column the fill starts at the
    component's own upper outline there (columns beside the component take the nearest component column's top), so
    a meniscus keeps its shape and only the lung between the component and the lung's lower outline is added;
    ``"full_rows"`` (the first implementation): every lung pixel from the component's highest row down, across the
    whole lung width (it adds the lung above a meniscus' low side: isolated noise-free phantom effusions drop from a
    median IoU of 0.96 to 0.81, issue 14 and ``docs/mask_quality.md``).
    """

    noise_radius: int = 1
    grow_steps: int = 4
    grow_tolerance: float = 0.04
    effusion_min_row_fraction: float = 0.5
    effusion_fill: str = "per_column"

    def __post_init__(self) -> None:
        if self.effusion_fill not in EFFUSION_FILLS:
            raise ValueError(f"unknown grounding config refine.effusion_fill value {self.effusion_fill!r}; "
                             f"expected one of {list(EFFUSION_FILLS)}")


@dataclass(frozen=True)
class QcConfig:
    """Quality control (Appendix D); tolerances are ours, as fractions of the image size.

    An image is excluded when HybridGNet and CXAS disagree on the outermost x of either lung by more than
    ``lung_x_tolerance * width`` or on the lowest y of the heart by more than ``heart_y_tolerance * height``.
    Cardiomegaly negatives are only made when the cardiothoracic ratio (HybridGNet heart width over the distance
    between the outer edges of the two HybridGNet lungs) is at most ``ctr_negative_max``.
    """

    lung_x_tolerance: float = 0.05
    heart_y_tolerance: float = 0.05
    ctr_negative_max: float = 0.45


@dataclass(frozen=True)
class GroundingConfig:
    """All grounding settings. ``GroundingConfig.from_dict(config.to_dict())`` round-trips.

    ``thresholds`` apply to every lesion type except those in ``lesion_thresholds`` (edema by default).
    With ``use_class_table`` False (the paper), any kept box can ground any finding through c1-c4; with it True, a
    box grounds a finding only if its detector class is listed in ``class_table[lesion_type]``.
    The pair rules (Appendix C) are not here: they are ``mimic_ils.pairs.PairConfig``.
    ``work_max_side``: Algorithm 1 (c1-c4, components, Refine) runs on
    the original frame sampled every ``ceil(max(H, W) / work_max_side)`` pixels (see ``grounding.grid``; the
    pseudo-normal and anatomy models work at 512 px, so nothing finer is lost); Refine distances are then in grid
    pixels. None runs it at full resolution; masks are always returned in the original frame.
    ``focal_mask_clip`` (off by default: the paper's Algorithm 1 keeps the whole connected component of ``A``
    touching a kept box, so on an image with edema a focal lesion merges with the haze, issue 14) confines the
    mask of a focal lesion (``FOCAL_CLIP_TYPES``: pneumonia, atelectasis, opacity, consolidation; never edema,
    effusion or cardiomegaly) to a region, before and after Refine's expansion: ``"anatomy"``, the union of the
    finding's reported anatomy masks (``M_union`` of c1); ``"box_dilation"``, the union of the kept boxes, each
    widened on every side by ``focal_clip_margin`` times its own width (left, right) and height (top, bottom).
    A kept box whose IoU with a lung exceeds ``focal_clip_max_lung_iou`` (the edema box also passes c1-c4 for a
    focal finding on that lung) is left out of that union; when every kept box is that large, ``"anatomy"``'s region
    is used.
    """

    thresholds: Thresholds = field(default_factory=Thresholds)
    lesion_thresholds: dict[str, Thresholds] = field(default_factory=_default_lesion_thresholds)
    refine: RefineConfig = field(default_factory=RefineConfig)
    qc: QcConfig = field(default_factory=QcConfig)
    use_class_table: bool = False
    class_table: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_CLASS_TABLE))
    work_max_side: int | None = 1024
    focal_mask_clip: str | None = None
    focal_clip_margin: float = 0.10
    focal_clip_max_lung_iou: float = 0.5

    def __post_init__(self) -> None:
        unknown = set(self.lesion_thresholds) | set(self.class_table)
        unknown -= set(LESION_TYPES)
        if unknown:
            raise ValueError(f"unknown lesion types in grounding config: {sorted(unknown)}")
        _check_focal_clip(self.focal_mask_clip, self.focal_clip_margin, self.focal_clip_max_lung_iou)

    def thresholds_for(self, lesion_type: str) -> Thresholds:
        """The Table 7 thresholds that apply to ``lesion_type``."""
        return self.lesion_thresholds.get(lesion_type, self.thresholds)

    def box_allowed(self, lesion_type: str, class_name: str) -> bool:
        """Whether a box of detector class ``class_name`` may ground a finding of ``lesion_type``."""
        return not self.use_class_table or class_name in self.class_table.get(lesion_type, ())

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/YAML-safe apart from tuples) of every setting."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroundingConfig:
        """Build from a (partial) dict; missing keys keep their defaults, unknown keys raise ``ValueError``.

        Top-level Table 7 keys (``{"tau_ano": 0.2}``) are accepted as a shorthand for ``{"thresholds": {...}}``.
        """
        data = dict(data)
        flat = {name: data.pop(name) for name in [f.name for f in fields(Thresholds)] if name in data}
        if flat:
            data["thresholds"] = {**asdict(_sub(Thresholds, data.get("thresholds", {}))), **flat}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown grounding config keys: {sorted(unknown)}")
        config = cls()
        updates: dict[str, Any] = {}
        for key, value in data.items():
            if key == "thresholds":
                updates[key] = _sub(Thresholds, value)
            elif key == "lesion_thresholds":
                updates[key] = {
                    lesion: _lesion_thresholds(config, data, lesion, item) for lesion, item in value.items()
                }
            elif key == "refine":
                updates[key] = _sub(RefineConfig, value)
            elif key == "qc":
                updates[key] = _sub(QcConfig, value)
            elif key == "class_table":
                updates[key] = {lesion: tuple(names) for lesion, names in value.items()}
            else:
                updates[key] = value
        return replace(config, **updates)


def _check_focal_clip(clip: Any, margin: Any, max_lung_iou: Any) -> None:
    """``focal_mask_clip`` is None or one of ``FOCAL_MASK_CLIPS``; ``focal_clip_margin`` a finite number >= 0,
    ``focal_clip_max_lung_iou`` a number in [0, 1]; the key at fault is named."""
    if clip is not None and clip not in FOCAL_MASK_CLIPS:
        raise ValueError(f"unknown grounding config focal_mask_clip value {clip!r}; "
                         f"expected None or one of {list(FOCAL_MASK_CLIPS)}")
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0.0 <= float(margin) < float("inf"):
        raise ValueError(f"grounding config focal_clip_margin must be a finite number >= 0, got {margin!r}")
    if isinstance(max_lung_iou, bool) or not isinstance(max_lung_iou, int | float) or not 0 <= max_lung_iou <= 1:
        raise ValueError(f"grounding config focal_clip_max_lung_iou must be a number in [0, 1], got {max_lung_iou!r}")


def _lesion_thresholds(default: GroundingConfig, data: dict[str, Any], lesion: str, item: Any) -> Thresholds:
    """A per-lesion override: keys it leaves out keep that lesion's default (edema's Table 7 column) or, for a
    lesion without one, the general thresholds given in ``data`` (or their defaults)."""
    if isinstance(item, Thresholds):
        return item
    general = _sub(Thresholds, data.get("thresholds", {}))
    base = default.lesion_thresholds.get(lesion, general)
    return _sub(Thresholds, {**asdict(base), **item})


def _sub(kind: type, value: Any) -> Any:
    """A nested config dataclass from a dict (or the instance itself)."""
    if isinstance(value, kind):
        return value
    known = {f.name for f in fields(kind)}
    unknown = set(value) - known
    if unknown:
        raise ValueError(f"unknown {kind.__name__} keys: {sorted(unknown)}")
    return kind(**value)
