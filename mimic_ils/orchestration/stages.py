"""The stages a build runs, behind one small protocol, and the real implementation over the project's modules.

``Stages`` is what :func:`mimic_ils.orchestration.pipeline.run_shard` drives. ``ProjectStages`` wires the real code:
ingest (``mimic_ils.ingest``), the report stage (``mimic_ils.report``), the vision runner
(``mimic_ils.vision.runner``), grounding (``mimic_ils.grounding``) and pairs (``mimic_ils.pairs``). Tests drive
the same machinery with small fakes.
"""

from __future__ import annotations

import errno
import functools
import inspect
import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mimic_ils.orchestration.config import BuildConfig
from mimic_ils.pairs import ImagePairs, PairConfig, image_pairs
from mimic_ils.reasoning import Paraphraser, ReasoningConfig
from mimic_ils.rows import Failure
from mimic_ils.schema import ImageRecord, MimicIlsError, StructuredReport, Study, VisionCues

if TYPE_CHECKING:  # grounding (scikit-image) is imported when the first image is grounded, not with the build
    from mimic_ils.grounding.pipeline import ImageGrounding


logger = logging.getLogger(__name__)

CuesOrReason = VisionCues | Callable[[], VisionCues] | Failure


class Stages(Protocol):
    def studies(self) -> list[Study]:
        """Every study of the cohort's metadata (the ledger accounts for each)."""

    def structure(self, study: Study) -> StructuredReport:
        """The structured report; raises a MimicIlsError with a one-line reason."""

    def cues(self, images: Sequence[ImageRecord], vision_dir: Path) -> dict[str, CuesOrReason]:
        """Vision cues per dicom id (or a zero-argument loader of them, so a chunk's cues are not all in memory at
        once), or the one-line reason the image has none. Cached under ``vision_dir``."""

    def ground(self, report: StructuredReport, cues: VisionCues, study: Study, image: ImageRecord) -> ImageGrounding:
        """Grounding and QC of one frontal image."""

    def pairs(self, grounding: ImageGrounding, study: Study, image: ImageRecord) -> ImagePairs:
        """The instruction-answer pairs of one grounded image, with the masks they name."""

    def provenance(self) -> dict[str, Any]:
        """Backends, options and model checksums, for the dataset card."""


class ProjectStages:
    """The real stages over a MIMIC-CXR root, configured by a :class:`BuildConfig`."""

    def __init__(self, mimic_root: str | Path, config: BuildConfig) -> None:
        self.root = Path(mimic_root)
        self.config = config
        self._backend = None
        self._vision_config = None
        self._grounding_config = None
        self._pair_config = None
        self._reasoning = None
        self._paraphraser = None

    def studies(self) -> list[Study]:
        from mimic_ils import ingest

        ingest.open_cohort(self.root)
        return list(ingest.iter_studies(self.root))

    def structure(self, study: Study) -> StructuredReport:
        from mimic_ils import ingest
        from mimic_ils.report import get_backend, structure_report

        if self._backend is None:
            self._backend = get_backend(self.config.report_backend, **self.config.report_options)
        text = ingest.read_report(self.root, study)
        return structure_report(text, study_id=study.study_id, backend=self._backend)

    def vision_config(self):
        from mimic_ils.vision.runner import VisionConfig

        if self._vision_config is None:
            self._vision_config = make_vision_config(VisionConfig, self.config, self.root)
        return self._vision_config

    def validate(self) -> None:
        """Check the whole config before any work: the vision config (every key known, each backend's options
        accepted by its factory) and the reasoning backend's options; a MimicIlsError naming the key."""
        from mimic_ils.reasoning import check_paraphraser_options
        from mimic_ils.vision import base

        check_paraphraser_options(self.config.reasoning_config())
        config = self.vision_config()
        for step, spec in config.steps.items():
            names = base.available(step)
            if spec.name not in names:
                raise MimicIlsError(f"vision config steps.{step}: no backend named {spec.name!r} "
                                    f"(available: {', '.join(names) or 'none'})")
            factory = base._REGISTRY.get((step, spec.name))
            try:
                parameters = inspect.signature(factory).parameters
            except (TypeError, ValueError):
                continue
            if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
                continue
            unknown = sorted(set(spec.options) - set(parameters))
            if unknown:
                raise MimicIlsError(f"vision config steps.{step}.options: unknown keys {', '.join(unknown)} for "
                                    f"backend {spec.name!r} (expected some of {', '.join(sorted(parameters))})")

    def input_keys(self, study: Study, work) -> dict[str, Any]:
        """Digests of what the study's result depends on: its report file's bytes, each image's DICOM bytes."""
        from mimic_ils.files import sha256_bytes
        from mimic_ils.orchestration.workdir import file_digest

        try:
            report = sha256_bytes((self.root / study.report_path).read_bytes())
        except OSError:
            report = "unreadable"
        return {"report": report, "images": {image.dicom_id: file_digest(work, self.root / image.path)
                                             for image in sorted(study.images, key=lambda item: item.dicom_id)}}

    def forget_cues(self, images: Sequence[ImageRecord], vision_dir: Path) -> None:
        """``--force-stage vision``: drop the cached cues of ``images``."""
        for image in images:
            shutil.rmtree(vision_dir / image.dicom_id, ignore_errors=True)
            (vision_keys_dir(vision_dir) / f"{image.dicom_id}.json").unlink(missing_ok=True)

    def cues(self, images: Sequence[ImageRecord], vision_dir: Path) -> dict[str, CuesOrReason]:
        from mimic_ils.vision import runner

        keys = self.cue_keys(images, vision_dir)
        statuses = dict(runner.run_cues(self.root, list(images), vision_dir, self.vision_config()))
        return self.settle_cues(images, statuses, keys, vision_dir)

    def cue_keys(self, images: Sequence[ImageRecord], vision_dir: Path) -> dict[str, str]:
        """The DICOM sha256 of each image; cached cues made from other DICOM bytes (an edited or emptied file) are
        dropped, so that they are recomputed (both engines)."""
        from mimic_ils.orchestration.workdir import WorkDir, file_digest

        work = WorkDir(vision_dir.parent)
        keys = {image.dicom_id: file_digest(work, self.root / image.path) for image in images}
        for image in images:
            stored = stored_vision_key(vision_dir, image.dicom_id)
            if stored is not None and stored != keys[image.dicom_id]:  # (none stored: cues of an older work folder)
                shutil.rmtree(vision_dir / image.dicom_id, ignore_errors=True)
        return keys

    def settle_cues(self, images: Sequence[ImageRecord], statuses: Mapping[str, str], keys: Mapping[str, str],
                    vision_dir: Path) -> dict[str, CuesOrReason]:
        """Per image, from the runner's status: a loader of its cues (their DICOM sha256 recorded), or its reason
        (both engines)."""
        from mimic_ils.files import atomic_write_bytes
        from mimic_ils.vision import runner

        out: dict[str, CuesOrReason] = {}
        for image in images:
            status = statuses.get(image.dicom_id, "no cues produced")
            if status in (runner.STATUS_WRITTEN, runner.STATUS_EXISTS):
                atomic_write_bytes(vision_keys_dir(vision_dir) / f"{image.dicom_id}.json",
                                   json.dumps({"dicom_sha256": keys[image.dicom_id]}).encode())
                out[image.dicom_id] = functools.partial(self._load_cues, image, vision_dir)
            else:
                out[image.dicom_id] = vision_reason(status)
        return out

    def _load_cues(self, image: ImageRecord, vision_dir: Path) -> VisionCues:
        """The cached cues of ``image``; a folder whose bytes no longer match its checksums (the size check of a
        resume cannot see a flipped byte) is recomputed once, here, instead of failing the image."""
        from mimic_ils.schema import BackendError
        from mimic_ils.vision import runner

        try:
            return runner.load_cues(vision_dir / image.dicom_id)
        except BackendError as error:
            logger.warning("%s; recomputing the cues of %s", error, image.dicom_id)
        shutil.rmtree(vision_dir / image.dicom_id, ignore_errors=True)
        [(_, status)] = runner.run_cues(self.root, [image], vision_dir, self.vision_config())
        if status not in (runner.STATUS_WRITTEN, runner.STATUS_EXISTS):
            raise BackendError(f"{image.dicom_id}: damaged cues could not be recomputed: {status}")
        return runner.load_cues(vision_dir / image.dicom_id)

    def image_png_path(self, dicom_id: str, vision_dir: Path) -> Path:
        """The runner's ``image.png`` of this image (the pixels of ``VisionCues.image``, already encoded)."""
        return vision_dir / dicom_id / "image.png"

    def ground(self, report: StructuredReport, cues: VisionCues, study: Study, image: ImageRecord) -> ImageGrounding:
        from mimic_ils.grounding import ground_image

        if self._grounding_config is None:
            self._grounding_config = self.config.grounding_config()
        return ground_image(report, cues, study_id=study.study_id, dicom_id=image.dicom_id, view=image.view,
                            config=self._grounding_config)

    def pairs(self, grounding: ImageGrounding, study: Study, image: ImageRecord) -> ImagePairs:
        if self._pair_config is None:
            from mimic_ils.reasoning import make_paraphraser

            self._pair_config = self.config.pair_config()
            self._reasoning = self.config.reasoning_config()
            self._paraphraser = make_paraphraser(self._reasoning)
        return pairs_of(grounding, study, image, self._pair_config, self._reasoning, self._paraphraser)

    def provenance(self) -> dict[str, Any]:
        vision = self.vision_config().to_dict()
        vision.pop("device", None)
        vision.pop("batch_size", None)
        option_sets = [self.config.report_options, *[step["options"] for step in vision["steps"].values()]]
        return {
            "report_backend": {"name": self.config.report_backend, "options": self.config.report_options},
            "vision": vision,
            # one mapping of the grounding settings and the pair rules, as before pairs had a config of their own
            "grounding": {**self.config.grounding_config().to_dict(), **self.config.pair_config().to_dict()},
            "reasoning": self.config.reasoning_config().to_dict(),
            "model_checksums": model_checksums(option_sets),
        }


def pairs_of(grounding: ImageGrounding, study: Study, image: ImageRecord, config: PairConfig,
             reasoning: ReasoningConfig | None = None, paraphraser: Paraphraser | None = None) -> ImagePairs:
    """The pair stage on one image's grounding (``mimic_ils.pairs.image_pairs``), its reasoning pairs included."""
    return image_pairs(grounding.findings, grounding.masks, study_id=study.study_id, dicom_id=image.dicom_id,
                       empty_locations=grounding.empty_locations,
                       cardiomegaly_negative_reason=grounding.cardiomegaly_negative_reason, config=config,
                       clinical=grounding.clinical, reasoning=reasoning, paraphraser=paraphraser)


def vision_keys_dir(vision_dir: Path) -> Path:
    return vision_dir.parent / "vision_keys"


def stored_vision_key(vision_dir: Path, dicom_id: str) -> str | None:
    try:
        return json.loads((vision_keys_dir(vision_dir) / f"{dicom_id}.json").read_text())["dicom_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def vision_reason(status: str) -> Failure:
    """The reason of a runner status that is not a result: a full disk stops the build (OSError ENOSPC); another
    write failure, or a read failure of the machine (an OSError other than a missing file), is transient."""
    if status.startswith("write failed:"):
        if "No space left" in status or "Disk quota" in status:
            raise OSError(errno.ENOSPC, f"vision {status}")
        return Failure("vision", status, transient=True)
    if status.startswith("read failed: [Errno") and not status.startswith("read failed: [Errno 2]"):
        return Failure("vision", status, transient=True)
    return Failure("vision", status)


def model_checksums(option_sets: Sequence[dict[str, Any]]) -> dict[str, str]:
    """sha256 of every option value that is a local weight file (a folder: of its files' names and digests)."""
    from mimic_ils.files import sha256_bytes, sha256_file

    out = {}
    for options in option_sets:
        for key, value in options.items():
            path = Path(str(value)) if isinstance(value, (str, Path)) and key != "cohort_root" else None
            if path is None or not path.exists() or str(value) in out:
                continue
            if path.is_file():
                out[str(value)] = sha256_file(path)
            else:
                listing = [f"{item.relative_to(path)}:{sha256_file(item)}" for item in sorted(path.rglob("*"))
                           if item.is_file()]
                out[str(value)] = sha256_bytes("\n".join(listing).encode())
    return out


def make_vision_config(vision_config_cls: type, config: BuildConfig, mimic_root: Path) -> object:
    """A ``VisionConfig`` from the build config's ``vision`` (a preset name, ``{preset, weights_dir}``, or a full
    ``{steps: ...}`` mapping), on this process's device (``cuda:LOCAL_RANK`` under a launcher)."""
    from mimic_ils.orchestration.shard import process_device

    spec = dict(config.vision) if isinstance(config.vision, dict) else {"preset": config.vision}
    checkvision_keys_dir(spec)
    device = config.device or ("cpu" if spec.get("preset") == "phantom" else process_device())
    common = {"device": device, "batch_size": config.batch_size}
    if "steps" in spec:
        return vision_config_cls.from_dict({**spec, **common})
    if spec.get("trust_remote_code") is not None:
        if not isinstance(spec["trust_remote_code"], bool) or spec.get("preset", "real") != "real":
            raise MimicIlsError("vision config trust_remote_code must be true or false, with the 'real' preset")
        common["trust_remote_code"] = spec["trust_remote_code"]
    return vision_config_cls.preset(spec.get("preset", "real"), weights_dir=spec.get("weights_dir"), **common)


_VISION_KEYS = {"preset", "weights_dir", "steps", "device", "batch_size", "trust_remote_code"}
_STEP_KEYS = {"name", "options"}


def checkvision_keys_dir(spec: dict[str, Any]) -> None:
    """Every key of the build config's ``vision`` mapping known (a typo is refused at start, with the key named)."""
    from mimic_ils.vision import base

    unknown = sorted(set(spec) - _VISION_KEYS)
    if unknown:
        raise MimicIlsError(f"unknown vision config keys: {', '.join(unknown)} (expected some of "
                            f"{', '.join(sorted(_VISION_KEYS))})")
    steps = spec.get("steps")
    if steps is None:
        return
    if not isinstance(steps, dict):
        raise MimicIlsError("vision config steps must be a mapping {step: backend name or {name, options}}")
    unknown = sorted(set(steps) - set(base.STEPS))
    if unknown:
        raise MimicIlsError(f"unknown vision config steps: {', '.join(unknown)} (expected {', '.join(base.STEPS)})")
    for step, step_spec in steps.items():
        if isinstance(step_spec, dict):
            unknown = sorted(set(step_spec) - _STEP_KEYS)
            if unknown:
                raise MimicIlsError(f"unknown vision config keys under steps.{step}: {', '.join(unknown)} "
                                    "(expected name, options)")
