"""The pair stage's own config (``PairConfig``) and where a build takes it from (``pairs:``, or ``grounding:``)."""

from __future__ import annotations

import pytest

from mimic_ils.grounding import GroundingConfig
from mimic_ils.orchestration import BuildConfig
from mimic_ils.orchestration.templates import appendix_c_problems
from mimic_ils.pairs import PAIR_CONFIG_KEYS, TABLE9_GLOBAL_NEGATIVE_SHARE, FindingOutcome, PairConfig, image_pairs
from mimic_ils.reasoning import ReasoningConfig
from mimic_ils.schema import MimicIlsError


def test_defaults_are_the_papers_and_round_trip():
    config = PairConfig()
    assert config.opacity_inference_types == ("pneumonia", "atelectasis", "edema")
    assert config.negative_global_share == TABLE9_GLOBAL_NEGATIVE_SHARE
    assert PairConfig.from_dict(config.to_dict()) == config
    assert set(PAIR_CONFIG_KEYS) == set(config.to_dict())


@pytest.mark.parametrize(("data", "message"), [
    ({"opacity_inference_type": ["pneumonia"]}, "unknown pair config keys: ['opacity_inference_type']"),
    ({"opacity_inference_types": ["pneumonnia"]}, "unknown lesion types in pair config: ['pneumonnia']"),
    ({"negative_conflicts": {"opacity": ["nodule"]}}, "unknown lesion types in pair config: ['nodule']"),
    ({"negative_global_share": {"pneumonia": 0.1}}, "missing ['atelectasis', 'consolidation', 'edema', 'effusion'"),
])
def test_bad_pair_rules_are_refused_with_the_key_named(data, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        PairConfig.from_dict(data)


def test_grounding_config_no_longer_holds_pair_rules():
    assert not set(PAIR_CONFIG_KEYS) & set(GroundingConfig().to_dict())
    with pytest.raises(ValueError, match="unknown grounding config keys"):
        GroundingConfig.from_dict({"opacity_inference_types": ["pneumonia"]})


def test_a_build_takes_pair_rules_from_pairs_or_as_before_from_grounding(tmp_path):
    yaml_file = tmp_path / "build.yaml"
    yaml_file.write_text("pairs:\n  opacity_inference_types: [pneumonia]\ngrounding:\n  tau_ano: 0.2\n")
    config = BuildConfig.from_yaml(yaml_file)
    assert config.pair_config().opacity_inference_types == ("pneumonia",)
    assert config.grounding_config().thresholds.tau_ano == 0.2
    legacy = BuildConfig(grounding={"opacity_inference_types": ["edema"], "tau_ano": 0.2})
    assert legacy.pair_config().opacity_inference_types == ("edema",)
    assert legacy.grounding_config().thresholds.tau_ano == 0.2
    assert BuildConfig().to_dict().keys() == {"seed", "report", "vision", "grounding", "batch_size"}
    assert config.to_dict()["pairs"] == {"opacity_inference_types": ["pneumonia"]}


def test_the_same_rule_in_both_sections_is_refused():
    config = BuildConfig(grounding={"opacity_inference_types": ["edema"]}, pairs={"opacity_inference_types": []})
    with pytest.raises(MimicIlsError, match="opacity_inference_types under both grounding and pairs"):
        config.pair_config()
    with pytest.raises(MimicIlsError, match=r"build config pairs: unknown pair config keys: \['bogus'\]"):
        BuildConfig(pairs={"bogus": 1}).pair_config()


def test_image_pairs_keeps_only_the_masks_its_pairs_name_and_unites_global_ones():
    import numpy as np

    masks = {"k0": np.eye(4, dtype=bool), "k1": np.fliplr(np.eye(4, dtype=bool)), "unused": np.ones((4, 4), bool)}
    outcomes = [FindingOutcome("effusion", "definitive", ("right lung base",), ("right lung base",), "k0", sentence=1),
                FindingOutcome("effusion", "definitive", ("left lung base",), ("left lung base",), "k1", sentence=2)]
    result = image_pairs(outcomes, masks, study_id="s1", dicom_id="d1", empty_locations=("right upper zone lung",),
                         cardiomegaly_negative_reason="no ctr")
    named = {pair.mask_key for pair in result.pairs if pair.mask_key}
    assert set(result.masks) == named and "unused" not in result.masks
    [union] = [key for key in named if key not in masks]
    assert np.array_equal(result.masks[union], masks["k0"] | masks["k1"])


def test_appendix_c_check_reads_the_inference_types_of_the_build():
    row = {"id": "d1-000", "instruction": "Segment the opacity in the left lung and predict its type.",
           "answer": "[SEG] It is highly suggestive of consolidation.", "target": "opacity",
           "lesion": "consolidation", "question_type": "lesion_inference", "polarity": "positive",
           "locations": ["left lung"], "certainty": "definitive", "study_id": "s1", "dicom_id": "d1",
           "mask_file_name": "masks/x.png"}
    assert appendix_c_problems([row]) == ["d1-000: lesion inference about 'consolidation'"]
    assert appendix_c_problems([row], PairConfig(opacity_inference_types=("consolidation",))) == []


def _project_imports(path) -> set[str]:
    """Every module an import statement of ``path`` names, anywhere in the file (a ``TYPE_CHECKING`` block or a
    function body included), relative imports resolved; ``from a import b`` counts as ``a`` and ``a.b``."""
    import ast
    from pathlib import Path

    path = Path(path)
    parts = list(path.with_suffix("").parts[path.parts.index("mimic_ils"):])
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _names_package(modules: set[str], package: str) -> list[str]:
    return sorted(name for name in modules if name == package or name.startswith(f"{package}."))


def test_pairs_and_grounding_do_not_import_each_other():
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "mimic_ils"
    assert _names_package(_project_imports(package / "pairs.py"), "mimic_ils.grounding") == []
    grounding = sorted((package / "grounding").glob("*.py"))
    assert len(grounding) > 5
    offenders = {path.name: _names_package(_project_imports(path), "mimic_ils.pairs") for path in grounding}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_import_scan_sees_guarded_lazy_and_relative_imports(tmp_path):
    module = tmp_path / "mimic_ils" / "grounding" / "fake.py"
    module.parent.mkdir(parents=True)
    module.write_text("from typing import TYPE_CHECKING\n"
                      "if TYPE_CHECKING:\n    from mimic_ils.grounding.config import GroundingConfig\n"
                      "def f():\n    import mimic_ils.pairs\n"
                      "from .. import pairs\n")
    found = _project_imports(module)
    assert _names_package(found, "mimic_ils.grounding") == ["mimic_ils.grounding.config",
                                                            "mimic_ils.grounding.config.GroundingConfig"]
    assert _names_package(found, "mimic_ils.pairs") == ["mimic_ils.pairs"]
    assert "mimic_ils" in found


def _study_and_image():
    from mimic_ils.schema import ImageRecord, Study

    image = ImageRecord("d1", "100", "s1", "PA", "files/d1.dcm")
    return Study("100", "s1", "train", "files/s1.txt", (image,)), image


def test_project_stages_make_pairs_with_the_builds_pair_rules(tmp_path):
    import numpy as np

    from mimic_ils.grounding import ImageGrounding
    from mimic_ils.orchestration.stages import ProjectStages

    mask = np.zeros((8, 8), bool)
    mask[2:5, 1:3] = True
    outcome = FindingOutcome("pneumonia", "definitive", ("right lung",), ("right lung",), "d1_pneumonia_0",
                             sentence=1)
    grounding = ImageGrounding(masks={"d1_pneumonia_0": mask}, findings=[outcome],
                               empty_locations=("left lung",), cardiomegaly_negative_reason="no ctr")
    study, image = _study_and_image()

    def kinds(config: BuildConfig) -> set[tuple[str, str]]:
        paired = ProjectStages(tmp_path, config).pairs(grounding, study, image)
        return {(pair.question_type, pair.polarity) for pair in paired.pairs if pair.lesion == "pneumonia"}

    assert ("lesion_inference", "positive") in kinds(BuildConfig())
    assert ("lesion_inference", "positive") not in kinds(BuildConfig(pairs={"opacity_inference_types": []}))
    assert ("lesion_inference", "positive") not in kinds(BuildConfig(grounding={"opacity_inference_types": []}))


def test_provenance_keeps_one_grounding_mapping_with_the_pair_rules(tmp_path):
    from mimic_ils.orchestration.stages import ProjectStages

    config = BuildConfig(vision="phantom", pairs={"opacity_inference_types": ["edema"]})
    provenance = ProjectStages(tmp_path, config).provenance()
    assert set(provenance) == {"report_backend", "vision", "grounding", "reasoning", "model_checksums"}  # no "pairs"
    assert provenance["reasoning"] == ReasoningConfig().to_dict()
    assert set(provenance["grounding"]) == set(GroundingConfig().to_dict()) | set(PAIR_CONFIG_KEYS)
    assert provenance["grounding"]["opacity_inference_types"] == ("edema",)
    assert provenance["grounding"]["thresholds"] == GroundingConfig().to_dict()["thresholds"]


def test_example_build_configs_read_with_the_default_rules():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "examples" / "configs"
    for name in ("build_phantom.yaml", "build_real.yaml"):
        config = BuildConfig.from_yaml(folder / name)
        assert config.pair_config() == PairConfig(), name
        assert config.grounding_config() == GroundingConfig(), name
        assert "pairs" not in config.fingerprint(), name  # an empty section leaves the work folder's bytes alone
