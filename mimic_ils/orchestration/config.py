"""``BuildConfig``: what a build runs (report backend, vision backends, grounding thresholds, seed), from YAML.

Example (``examples/configs/build_phantom.yaml``)::

    seed: 0
    report:
      backend: rules          # or llm, with its options (model path, endpoint)
      options: {}
    vision: phantom           # a preset name ("phantom", "real") or a mapping {preset: real, steps: {...}}
    grounding: {}             # GroundingConfig fields, e.g. {tau_ano: 0.1}
    batch_size: 8             # images per vision batch (does not change the output)

The fingerprint (everything but ``batch_size`` and ``device``) is stored in the work folder: cached results made
with another config are never mixed into a build. ``seed`` is recorded in the provenance; the pipeline's own
randomness (which negatives are drawn) is seeded by each study id (DESIGN.md), so no output depends on the order or
the grouping in which studies are processed.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mimic_ils.schema import MimicIlsError

VISION_PRESETS = ("phantom", "real")


@dataclass
class BuildConfig:
    """The knobs of one build. ``vision`` is a preset name or a mapping understood by ``VisionConfig``."""

    seed: int = 0
    report_backend: str = "rules"
    report_options: dict[str, Any] = field(default_factory=dict)
    vision: str | dict[str, Any] = "phantom"
    grounding: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 8
    device: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildConfig:
        data = copy.deepcopy(data or {})
        report = data.pop("report", {}) or {}
        if not isinstance(report, dict):
            raise MimicIlsError("build config report must be a mapping {backend, options}")
        unknown_report = set(report) - {"backend", "options"}
        if unknown_report:
            named = ", ".join(f"report.{key}" for key in sorted(unknown_report))
            raise MimicIlsError(f"unknown build config keys: {named}")
        known = {"seed", "vision", "grounding", "batch_size", "device"}
        unknown = set(data) - known
        if unknown:
            raise MimicIlsError(f"unknown build config keys: {', '.join(sorted(unknown))}")
        return cls(
            report_backend=str(report.get("backend", "rules")),
            report_options=dict(report.get("options", {}) or {}),
            **{key: data[key] for key in known if key in data},
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> BuildConfig:
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as error:
            raise MimicIlsError(f"cannot read build config {path}: {error}") from None
        if data is not None and not isinstance(data, dict):
            raise MimicIlsError(f"build config {path} is not a mapping")
        return cls.from_dict(data or {})

    def with_backends(self, backends: str | None) -> BuildConfig:
        """``--backends phantom|real|FILE``: a vision preset name, or a YAML file with the ``vision`` mapping."""
        if not backends:
            return self
        other = copy.deepcopy(self)
        if backends in VISION_PRESETS:
            other.vision = backends
        else:
            import yaml

            try:
                other.vision = yaml.safe_load(Path(backends).read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as error:
                reason = f"--backends {backends!r} is neither a preset nor a readable YAML file: {error}"
                raise MimicIlsError(reason) from None
        return other

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {
            "seed": data["seed"],
            "report": {"backend": data["report_backend"], "options": data["report_options"]},
            "vision": data["vision"],
            "grounding": data["grounding"],
            "batch_size": data["batch_size"],
        }

    def fingerprint(self) -> dict[str, Any]:
        """The part of the config that changes results (the work folder is bound to it)."""
        data = self.to_dict()
        data.pop("batch_size")
        if data["report"]["backend"] == "rules":  # rules that changed change the reports: never reuse old ones
            from mimic_ils.report.rules import RULES_VERSION

            data["report"] = {**data["report"], "rules_version": RULES_VERSION}
        return data

    @property
    def vision_name(self) -> str:
        return self.vision if isinstance(self.vision, str) else str(self.vision.get("preset", "custom"))
