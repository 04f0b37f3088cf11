"""Small fake stages for the build machinery tests (resume, shards, determinism, corruption, ledger).

The fakes obey the same contracts as the real stages: deterministic per study id, Table 2 template strings,
one-line reasons for failures. The integration test in ``test_build.py`` runs the real stages with phantom
backends on a synthetic cohort.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np

from mimic_ils.grounding import ImageGrounding
from mimic_ils.pairs import ImagePairs
from mimic_ils.rows import Failure
from mimic_ils.schema import (
    Finding,
    ImageRecord,
    Pair,
    ReportError,
    Section,
    StructuredReport,
    Study,
    VisionCues,
)

SIDE = 48


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


class FakeStages:
    """``n_studies`` studies; study 0 has an unreadable report; one image has no cues; one is lateral."""

    def __init__(self, n_studies: int = 12, delay_s: float = 0.0) -> None:
        self.n_studies = n_studies
        self.delay_s = delay_s
        self.structure_calls = 0

    def studies(self) -> list[Study]:
        out = []
        for k in range(self.n_studies):
            study_id = str(50000000 + 7919 * k)
            split = ("train", "train", "validate", "test")[k % 4] if k != 11 else ""
            images = [ImageRecord(f"d{k:03d}a", "100", study_id, "PA", f"files/{k}a.dcm")]
            if k % 3 == 1:
                images.append(ImageRecord(f"d{k:03d}b", "100", study_id, "LATERAL", f"files/{k}b.dcm"))
            if k % 5 == 2:
                images.append(ImageRecord(f"d{k:03d}c", "100", study_id, "AP", f"files/{k}c.dcm"))
            out.append(Study("100", study_id, split, f"files/s{study_id}.txt", tuple(images)))
        return out[::-1]  # metadata order must not matter

    def structure(self, study: Study) -> StructuredReport:
        self.structure_calls += 1
        if study.study_id == "50000000":
            raise ReportError("report file is not valid UTF-8")
        finding = Finding("effusion", 1, "positive", "definitive", "right base", "effusion", "effusion",
                          ("right lung base",))
        return StructuredReport(Section("findings", "Right pleural effusion."), (finding,))

    def cues(self, images, vision_dir: Path) -> dict:
        if self.delay_s:
            time.sleep(self.delay_s * len(images))
        out = {}
        for image in images:
            if image.dicom_id == "d004a":
                out[image.dicom_id] = Failure("vision", "lungs_heart backend failed: empty lung mask")
                continue
            rng = np.random.default_rng(_seed(image.dicom_id))
            pixels = rng.integers(0, 255, (SIDE, SIDE + 8), dtype=np.uint8)
            empty = np.zeros(pixels.shape, bool)
            out[image.dicom_id] = VisionCues(image.dicom_id, pixels, pixels, empty, empty, empty)
        return out

    def ground(self, report, cues, study, image) -> ImageGrounding:
        rng = np.random.default_rng(_seed(study.study_id + image.dicom_id))
        mask = np.zeros(cues.shape, bool)
        y, x = rng.integers(4, SIDE - 20, 2)
        mask[y:y + 12, x:x + 12] = True
        exclusions = [("finding 2 (nodule)", "not one of the seven lesion types")]
        return ImageGrounding(masks={"m0": mask}, exclusions=exclusions)

    def pairs(self, grounding, study, image) -> ImagePairs:
        common = {"study_id": study.study_id, "dicom_id": image.dicom_id}
        pairs = [
            Pair("Segment the effusion in the right lung base.", "[SEG]", "effusion", "effusion", "basic",
                 "positive", ("right lung base",), None, "m0", **common),
            Pair("Segment the effusion.", "[SEG] It is located in the right lung base.", "effusion", "effusion",
                 "global", "positive", ("right lung base",), None, "m0", **common),
            Pair("Segment the edema.", "[SEG] There is no edema.", "edema", "edema", "global", "negative", (),
                 None, None, **common),
        ]
        return ImagePairs(tuple(pairs), dict(grounding.masks))

    def provenance(self) -> dict:
        return {"report_backend": "fake", "vision": "fake"}


def run_fake_build(out: str, work: str, n_studies: int, delay_s: float, shard: str | None = None) -> None:
    """Entry point for the subprocess of the kill-and-resume test."""
    from mimic_ils.orchestration import build

    build(None, out, work=work, stages=FakeStages(n_studies, delay_s), shard=shard, progress=False)


if __name__ == "__main__":
    import sys

    out, work, n, delay = sys.argv[1:5]
    os.environ.pop("WORLD_SIZE", None)
    run_fake_build(out, work, int(n), float(delay))


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of a built folder (relative path → bytes), for byte-for-byte comparisons of builds."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}
