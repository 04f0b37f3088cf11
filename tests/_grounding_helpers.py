"""Hand-built chest geometry for the grounding tests: two rectangular lungs, a heart, zones, lobes, lesions.

Frame: ``HxW``, the patient's right lung on the image's left. Each lung is a rectangle split into CXAS-like zones
by rows (apical 0-15 %, upper 15-40 %, mid 40-70 %, base 70-100 % of its height) and lobes (right: upper 0-40 %,
middle 40-65 %, lower 65-100 %; left: upper 0-55 %, lower 55-100 %). Lungs are dark (60), the rest 150; the
pseudo-normal image starts as a copy, and a lesion brightens the original image only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mimic_ils.grounding import ImageGrounding, ground_image
from mimic_ils.pairs import image_pairs
from mimic_ils.schema import Box, Finding, Section, StructuredReport, VisionCues

ZONES = {"apical zone lung": (0.0, 0.15), "upper zone lung": (0.15, 0.40), "mid zone lung": (0.40, 0.70)}
RIGHT_LOBES = {
    "lung upper lobe right": (0.0, 0.40),
    "lung middle lobe right": (0.40, 0.65),
    "lung lower lobe right": (0.65, 1.0),
}
LEFT_LOBES = {"lung upper lobe left": (0.0, 0.55), "lung lower lobe left": (0.55, 1.0)}


@dataclass
class Chest:
    """A synthetic chest; ``lungs[side]`` are ``(row0, row1, col0, col1)`` rectangles (half-open)."""

    height: int = 200
    width: int = 240
    lungs: dict[str, tuple[int, int, int, int]] = field(
        default_factory=lambda: {"right": (30, 170, 30, 110), "left": (30, 170, 130, 210)}
    )
    heart_rect: tuple[int, int, int, int] = (110, 176, 95, 150)
    lung_value: int = 60
    body_value: int = 150

    def __post_init__(self) -> None:
        self.image = np.full((self.height, self.width), self.body_value, np.uint8)
        for side in ("right", "left"):
            self.image[self.rect(self.lungs[side])] = self.lung_value
        self.pseudo_normal = self.image.copy()
        self.boxes: list[Box] = []

    @staticmethod
    def rect(bounds: tuple[int, int, int, int]) -> tuple[slice, slice]:
        return slice(bounds[0], bounds[1]), slice(bounds[2], bounds[3])

    def mask(self, bounds: tuple[int, int, int, int]) -> np.ndarray:
        out = np.zeros((self.height, self.width), bool)
        out[self.rect(bounds)] = True
        return out

    def band(self, side: str, start: float, stop: float) -> tuple[int, int, int, int]:
        """Rows ``start..stop`` (fractions of the lung height) of one lung, full lung width."""
        r0, r1, c0, c1 = self.lungs[side]
        height = r1 - r0
        return r0 + round(start * height), r0 + round(stop * height), c0, c1

    def anatomy(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for side in ("right", "left"):
            for name, (start, stop) in ZONES.items():
                out[f"{side} {name}"] = self.mask(self.band(side, start, stop))
            out[f"{side} lung base"] = self.mask(self.band(side, 0.70, 1.0))
            out[f"{side} lung"] = self.mask(self.lungs[side])
        for name, (start, stop) in {**RIGHT_LOBES}.items():
            out[name] = self.mask(self.band("right", start, stop))
        for name, (start, stop) in LEFT_LOBES.items():
            out[name] = self.mask(self.band("left", start, stop))
        out["heart"] = self.mask(self.heart_rect)
        return out

    def add_lesion(
        self,
        bounds: tuple[int, int, int, int],
        *,
        delta: int = 60,
        confidence: float = 0.9,
        class_name: str = "Lung Opacity",
        box_margin: int = 2,
        with_box: bool = True,
    ) -> Box | None:
        """Brighten ``bounds`` in the original image (inside the lungs only) and add a detector box around it."""
        region = self.mask(bounds) & self.lung_mask()
        self.image[region] = np.clip(self.image[region].astype(int) + delta, 0, 255).astype(np.uint8)
        if not with_box:
            return None
        r0, r1, c0, c1 = bounds
        box = Box(c0 - box_margin, r0 - box_margin, c1 + box_margin, r1 + box_margin, confidence, 7, class_name)
        self.boxes.append(box)
        return box

    def lung_mask(self) -> np.ndarray:
        return self.mask(self.lungs["right"]) | self.mask(self.lungs["left"])

    def cues(self, dicom_id: str = "d1") -> VisionCues:
        anatomy = self.anatomy()
        return VisionCues(
            dicom_id=dicom_id,
            image=self.image.copy(),
            pseudo_normal=self.pseudo_normal.copy(),
            lung_right=self.mask(self.lungs["right"]),
            lung_left=self.mask(self.lungs["left"]),
            heart=self.mask(self.heart_rect),
            anatomy=anatomy,
            boxes=list(self.boxes),
        )


def finding(
    lesion: str | None,
    *locations: str,
    presence: str = "positive",
    certainty: str = "definitive",
    sentence: int = 1,
    entity: str | None = None,
) -> Finding:
    return Finding(
        entity=entity or (lesion or "thing"),
        sentence_index=sentence,
        presence=presence,
        certainty=certainty,
        lesion_type=lesion,
        locations=tuple(locations),
    )


def report(*findings: Finding, text: str = "") -> StructuredReport:
    return StructuredReport(section=Section("findings", text), findings=tuple(findings))


def by_type(pairs, question_type: str, polarity: str = "positive") -> list:
    return [p for p in pairs if p.question_type == question_type and p.polarity == polarity]


@dataclass
class GroundedPairs:
    """Grounding and the pair stage of one image, side by side (what the build's two stages give together):
    ``pairs`` are the Table 2 pairs, ``reasoning`` the reasoning pairs the pair stage made from them."""

    grounding: ImageGrounding
    pairs: tuple
    masks: dict
    exclusions: list
    reasoning: tuple = ()

    def __getattr__(self, name):  # excluded, findings, empty_locations, ctr: the grounding's
        return getattr(self.grounding, name)


def ground_and_pair(report, cues, *, study_id, dicom_id, view, config=None, pair_config=None) -> GroundedPairs:
    """``ground_image`` then ``image_pairs`` on its result (an excluded image has no pairs)."""
    grounding = ground_image(report, cues, study_id=study_id, dicom_id=dicom_id, view=view, config=config)
    if grounding.excluded:
        return GroundedPairs(grounding, (), {}, list(grounding.exclusions))
    paired = image_pairs(grounding.findings, grounding.masks, study_id=study_id, dicom_id=dicom_id,
                         empty_locations=grounding.empty_locations,
                         cardiomegaly_negative_reason=grounding.cardiomegaly_negative_reason, config=pair_config)
    table2 = tuple(pair for pair in paired.pairs if pair.question_type != "reasoning")
    reasoning = tuple(pair for pair in paired.pairs if pair.question_type == "reasoning")
    return GroundedPairs(grounding, table2, paired.masks, [*grounding.exclusions, *paired.skipped], reasoning)
