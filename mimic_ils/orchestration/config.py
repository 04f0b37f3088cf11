"""``BuildConfig``: what a build runs (report backend, vision backends, grounding thresholds, seed), from YAML.

Example (``examples/configs/build_phantom.yaml``)::

    seed: 0
    report:
      backend: rules          # or llm, with its options (model path, endpoint)
      options: {}
    vision: phantom           # a preset name ("phantom", "real") or a mapping {preset: real, steps: {...}}
    grounding: {}             # GroundingConfig fields, e.g. {tau_ano: 0.1}
    pairs: {}                 # PairConfig fields (Appendix C rules), e.g. {opacity_inference_types: [pneumonia]}
    reasoning: {}             # ReasoningConfig fields, e.g. {backend: llm, options: {url: http://127.0.0.1:8000}}
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
    """The knobs of one build. ``vision`` is a preset name or a mapping understood by ``VisionConfig``.

    ``grounding`` holds ``GroundingConfig`` fields and ``pairs`` ``PairConfig`` fields. The pair rules a YAML gives
    under ``grounding:`` (where they lived before pairs had a section: ``negative_global_share``,
    ``negative_conflicts``, ``conflicts_with_untyped``, ``opacity_inference_types``) are still accepted, quietly, as
    if given under ``pairs:``; the same rule under both is refused. Either way ``build_info.json`` records them in
    its one ``backends.grounding`` mapping, as before.
    """

    seed: int = 0
    report_backend: str = "rules"
    report_options: dict[str, Any] = field(default_factory=dict)
    vision: str | dict[str, Any] = "phantom"
    grounding: dict[str, Any] = field(default_factory=dict)
    pairs: dict[str, Any] = field(default_factory=dict)
    reasoning: dict[str, Any] = field(default_factory=dict)
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
        known = {"seed", "vision", "grounding", "pairs", "reasoning", "batch_size", "device"}
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
            **({"pairs": data["pairs"]} if data["pairs"] else {}),  # absent when empty: older folders' bytes hold
            **({"reasoning": data["reasoning"]} if data["reasoning"] else {}),
            "batch_size": data["batch_size"],
        }

    def grounding_config(self):
        """The build's ``GroundingConfig``; a MimicIlsError naming the section and key when a setting is wrong."""
        from mimic_ils.grounding import GroundingConfig

        grounding = {key: value for key, value in (self.grounding or {}).items() if key not in _pair_keys()}
        try:
            return GroundingConfig.from_dict(grounding)
        except (ValueError, TypeError) as error:
            raise MimicIlsError(f"build config grounding: {error}") from None

    def pair_config(self):
        """The build's ``PairConfig``, from the ``pairs`` section and, as before pairs had a section of their own,
        from the pair rules given under ``grounding`` (accepted as they are; the same key in both is refused)."""
        from mimic_ils.pairs import PairConfig

        legacy = {key: value for key, value in (self.grounding or {}).items() if key in _pair_keys()}
        both = sorted(set(legacy) & set(self.pairs or {}))
        if both:
            raise MimicIlsError(f"build config gives {', '.join(both)} under both grounding and pairs; keep pairs")
        for section, values in (("grounding", legacy), ("pairs", self.pairs or {})):
            try:
                PairConfig.from_dict(values)
            except (ValueError, TypeError, AttributeError) as error:
                raise MimicIlsError(f"build config {section}: {error}") from None
        return PairConfig.from_dict({**legacy, **(self.pairs or {})})

    def reasoning_config(self):
        """The build's ``ReasoningConfig`` (``mimic_ils.reasoning``); a MimicIlsError naming the key at fault."""
        from mimic_ils.reasoning import ReasoningConfig

        try:
            return ReasoningConfig.from_dict(self.reasoning or {})
        except (ValueError, TypeError) as error:
            raise MimicIlsError(f"build config reasoning: {error}") from None

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


def _pair_keys() -> tuple[str, ...]:
    from mimic_ils.pairs import PAIR_CONFIG_KEYS

    return PAIR_CONFIG_KEYS
