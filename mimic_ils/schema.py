"""Plain data shared by every stage of the MIMIC-ILS pipeline.

Every stage is a pure function over these dataclasses (see DESIGN.md, "Data flow"). Nothing here imports torch.

Frames and formats used throughout:

* images are ``HxW uint8`` in the *original* DICOM frame (rows x columns), as the radiologist sees them
  (MONOCHROME1 already inverted, so lungs are dark and bones bright); ``I_max = 255`` (paper Eq. 1);
* masks are ``HxW bool`` in the same frame;
* boxes are ``xyxy`` in original-frame pixels (floats, ``x0 < x1``, ``y0 < y1``), x to the right, y down;
* "right lung" is the *patient's* right, which is the image's left half.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# The splits of a built dataset (train, validation, test) and their other names: rosalia_hf.splits, shared with
# the model half (evaluation and training name splits the same way).
from rosalia_hf.splits import SPLIT_ALIASES, SPLITS, canonical_split, split_names  # noqa: F401

FRONTAL_VIEWS = ("PA", "AP")

# The seven lesion types of MIMIC-ILS, in the paper's order (Table 1).
LESION_TYPES = ("cardiomegaly", "pneumonia", "atelectasis", "opacity", "consolidation", "edema", "effusion")

# The 15 lung categories of the location-mapping step 2 (paper Fig. 10). These are exactly CXAS label names.
LUNG_LABELS = (
    "right upper zone lung",
    "right mid zone lung",
    "right lung base",
    "right apical zone lung",
    "left upper zone lung",
    "left mid zone lung",
    "left lung base",
    "left apical zone lung",
    "lung lower lobe left",
    "lung upper lobe left",
    "lung lower lobe right",
    "lung middle lobe right",
    "lung upper lobe right",
    "right lung",
    "left lung",
)
# Table 8: the eight zones and the two lungs are the "lung regions" used for basic instructions and for empty
# locations (negatives). Lobes can be reported and grounded but are never chosen as empty locations.
ZONE_LABELS = LUNG_LABELS[:8]
LOBE_LABELS = LUNG_LABELS[8:13]
LUNG_SIDE_LABELS = ("right lung", "left lung")
LUNG_REGIONS = ZONE_LABELS + LUNG_SIDE_LABELS
HEART_LABEL = "heart"

PRESENCE = ("positive", "negative")
CERTAINTY = ("definitive", "tentative")
LOCATION_SOURCES = ("report", "context", "entity")
QUESTION_TYPES = ("basic", "global", "lesion_inference", "reasoning")  # reasoning: beyond the paper
POLARITY = ("positive", "negative")


class MimicIlsError(Exception):
    """Base class of every error the pipeline reports as a one-line reason for one study or image."""


class DicomReadError(MimicIlsError):
    """A DICOM file that cannot be turned into an image (corrupt, truncated, no pixel data, unknown photometry)."""


class ReportError(MimicIlsError):
    """A report that cannot be read or structured (missing, wrong encoding, no usable section, LLM garbage)."""


class CohortError(MimicIlsError):
    """A root folder that is not a MIMIC-CXR copy (missing metadata or split CSV, no files/ tree)."""


class BackendError(MimicIlsError):
    """A model backend that cannot run: missing or mismatched weight files, bad input to the model."""


class TransientError(MimicIlsError):
    """A failure of the machine or of a service (an LLM server down, a timeout, a full disk), not of the study:
    never cached as the study's outcome, so the next run retries it."""


@dataclass(frozen=True)
class ImageRecord:
    """One DICOM of a study, from the metadata CSV. ``path`` is relative to the MIMIC-CXR root."""

    dicom_id: str
    subject_id: str
    study_id: str
    view: str
    path: str
    rows: int = 0
    columns: int = 0

    @property
    def is_frontal(self) -> bool:
        return self.view in FRONTAL_VIEWS


@dataclass(frozen=True)
class Study:
    """One radiology study: its report (path relative to the root) and its images. Ids carry no p/s prefix.
    ``split`` is the dataset's name (:func:`canonical_split`: MIMIC-CXR's ``validate`` becomes ``validation``)."""

    subject_id: str
    study_id: str
    split: str
    report_path: str
    images: tuple[ImageRecord, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "split", canonical_split(self.split))

    @property
    def frontal_images(self) -> tuple[ImageRecord, ...]:
        return tuple(image for image in self.images if image.is_frontal)


@dataclass(frozen=True)
class Section:
    """The report section the pipeline uses: ``name`` in findings / impression / last_paragraph."""

    name: str
    text: str


@dataclass(frozen=True)
class Finding:
    """The paper's seven fields (Fig. 9) plus the normalised lesion type and the mapped lung categories.

    ``sentence_index`` is 1-based over the chosen section's sentences; ``predicted_lesion_sentence_index`` is the
    sentence that names ``predicted_lesion_type`` (it may be a later one: "Left basal opacity. This likely
    represents atelectasis."), None without a predicted type. ``lesion_type`` is one of LESION_TYPES or None for
    findings outside the seven types (they still matter for empty locations). ``locations`` are LUNG_LABELS; empty
    when no lung place could be given. ``location_source`` says where they came from: ``"report"`` (the finding's
    own location words), ``"context"`` (another finding or sentence it refers to), ``"entity"`` (no location
    given; the entity decides, as Fig. 10 does for "no specific location information"), None when there are none.
    """

    entity: str
    sentence_index: int
    presence: str
    certainty: str
    location: str | None = None
    predicted_lesion_type: str | None = None
    lesion_type: str | None = None
    locations: tuple[str, ...] = ()
    predicted_lesion_sentence_index: int | None = None
    location_source: str | None = None

    @property
    def is_positive(self) -> bool:
        return self.presence == "positive"


@dataclass(frozen=True)
class ClinicalContext:
    """Why the film was taken: the cue keys read from a report's indication and history sections
    (``mimic_ils.report.indication.CUES`` order, lesion questions last) and whether it has such a section at all."""

    cues: tuple[str, ...] = ()
    has_section: bool = False

    def to_json(self) -> dict:
        return {"cues": list(self.cues), "has_section": self.has_section}

    @classmethod
    def from_json(cls, data) -> ClinicalContext:
        return cls(tuple(data.get("cues", ())), bool(data.get("has_section", False))) if data else cls()


@dataclass(frozen=True)
class StructuredReport:
    """Output of the report stage for one study; ``clinical``: the cues of its indication and history."""

    section: Section
    findings: tuple[Finding, ...] = ()
    clinical: ClinicalContext = field(default_factory=ClinicalContext)


@dataclass(frozen=True)
class Box:
    """A detector box, ``xyxy`` in original-frame pixels, with its confidence and VinBigData class."""

    x0: float
    y0: float
    x1: float
    y1: float
    confidence: float
    class_id: int
    class_name: str

    def as_int_slices(self, height: int, width: int) -> tuple[slice, slice]:
        """Row and column slices of the pixels the box covers, clipped to an ``height x width`` frame."""
        y0, y1 = max(0, int(np.floor(self.y0))), min(height, int(np.ceil(self.y1)))
        x0, x1 = max(0, int(np.floor(self.x0))), min(width, int(np.ceil(self.x1)))
        return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


@dataclass
class VisionCues:
    """Everything the vision stage knows about one frontal image, all in the original frame.

    ``image`` and ``pseudo_normal`` are HxW uint8; ``lung_right``, ``lung_left``, ``heart`` are HxW bool from the
    lungs/heart backend (HybridGNet or CheXmask); ``anatomy`` maps each of LUNG_LABELS (and ``"heart"``) to an HxW
    bool mask from the anatomy backend (CXAS); ``boxes`` are hyperintense-class detector boxes.
    """

    dicom_id: str
    image: np.ndarray
    pseudo_normal: np.ndarray
    lung_right: np.ndarray
    lung_left: np.ndarray
    heart: np.ndarray
    anatomy: dict[str, np.ndarray] = field(default_factory=dict)
    boxes: list[Box] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.image.shape[:2])


@dataclass(frozen=True)
class FindingOutcome:
    """A finding of the report after grounding: ``mask_key`` is None when it was not grounded.

    ``lesion`` is one of LESION_TYPES or None (findings outside the seven types only matter for conflicts);
    ``reported``/``grounded`` are lung labels in the report's order (``("heart",)`` for cardiomegaly);
    ``presence`` is "negative" for an explicitly negated finding (never grounded; its places say where the report
    denies the lesion). ``sentence`` (1-based, 0 if unknown) orders several findings of one type in a global answer.
    """

    lesion: str | None
    certainty: str
    reported: tuple[str, ...] = ()
    grounded: tuple[str, ...] = ()
    mask_key: str | None = None
    presence: str = "positive"
    sentence: int = 0

    @property
    def fully_grounded(self) -> bool:
        return self.mask_key is not None and bool(self.grounded) and set(self.grounded) == set(self.reported)


@dataclass(frozen=True)
class Pair:
    """One instruction-answer pair (Table 2, Appendix C).

    ``mask_key`` names the lesion mask (unique per study, finding and image); None for negatives (empty mask).
    ``lesion`` is the lesion type the pair is about (for lesion-inference pairs, the inferred type while the
    target is "opacity"). ``locations`` are LUNG_LABELS in the order they appear in the text.
    """

    instruction: str
    answer: str
    target: str
    lesion: str
    question_type: str
    polarity: str
    locations: tuple[str, ...]
    certainty: str | None
    mask_key: str | None
    study_id: str
    dicom_id: str
