"""The pair stage's own config (``PairConfig``) and where a build takes it from (``pairs:``, or ``grounding:``)."""

from __future__ import annotations

import pytest

from mimic_ils.grounding import GroundingConfig
from mimic_ils.orchestration import BuildConfig
from mimic_ils.orchestration.templates import appendix_c_problems
from mimic_ils.pairs import PAIR_CONFIG_KEYS, TABLE9_GLOBAL_NEGATIVE_SHARE, FindingOutcome, PairConfig, image_pairs
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
