"""The reasoning question type: indication cues, the target-name check, generation from an image's pairs, the
two backends (templates; llm through the report stage's transports), and the ledger's reasons."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from mimic_ils.pairs import GlobalNegativeChooser, choose_global_negatives, limit_study_negatives
from mimic_ils.reasoning import (
    DESCRIPTIONS,
    EXPLANATIONS,
    LlmParaphraser,
    ReasoningConfig,
    named_term,
    parse_paraphrase,
    reasoning_pairs,
)
from mimic_ils.report.indication import CUE_LESIONS, CUE_PHRASES, CUES, clinical_cues, cues_of_text
from mimic_ils.schema import LESION_TYPES, BackendError, ClinicalContext, Pair, ReportError
from rosalia_hf.table2 import parse_answer

sys.path.insert(0, str(Path(__file__).parent))
from _llm_helpers import FakeChatServer, ScriptedTransport  # noqa: E402

STUDY, DICOM = "50000001", "aaaa-1111"


def pair(instruction="Segment the effusion in the left lung base.", answer="[SEG]", *, target="effusion",
         lesion="effusion", question_type="basic", polarity="positive", locations=("left lung base",),
         certainty="definitive", mask_key="aaaa-1111_effusion_0") -> Pair:
    return Pair(instruction, answer, target, lesion, question_type, polarity, tuple(locations), certainty,
                mask_key if polarity == "positive" else None, STUDY, DICOM)


def negative(lesion, locations=("right lung base",), question_type="basic", target=None) -> Pair:
    where = f" in the {locations[0]}" if locations else ""
    return pair(f"Segment the {target or lesion}{where}.", f"[SEG] There is no {target or lesion}{where}.",
                target=target or lesion, lesion=lesion, question_type=question_type, polarity="negative",
                locations=locations, certainty=None)


FEVER = ClinicalContext(("fever", "productive cough", "suspected:pneumonia"), True)
BREATHLESS = ClinicalContext(("dyspnea", "heart failure"), True)


# --------------------------------------------------------------------------------------------------- indication


@pytest.mark.parametrize(("text", "cues"), [
    ("___F with fever and productive cough // eval for pneumonia", ("fever", "productive cough",
                                                                     "suspected:pneumonia")),
    ("___M with SOB, hx CHF.", ("dyspnea", "heart failure")),
    ("afebrile, denies cough; new oxygen requirement", ("hypoxia",)),
    ("no fever. productive cough", ("productive cough",)),
    ("s/p CABG POD 2, r/o effusion", ("recent surgery", "suspected:effusion")),
    ("___M status post fall.", ("trauma",)),
    ("Check ETT position.", ("device check",)),
    ("history of pneumonias, now with worsening dyspnea", ("dyspnea", "suspected:pneumonia")),
])
def test_cues_of_indication_text(text, cues):
    assert cues_of_text(text) == cues


def test_clinical_cues_read_the_indication_and_history_sections_only():
    report = ("                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n"
              " REASON FOR EXAMINATION:  ___F with fever.\n \n HISTORY:  heart failure\n \n"
              " FINDINGS: \n \n Cough artifact. No effusion.\n")
    assert clinical_cues(report) == ClinicalContext(("fever", "heart failure"), True)
    assert clinical_cues(" FINDINGS: \n \n Fever of unknown origin.\n") == ClinicalContext((), False)


def test_the_cue_tables_agree():
    assert set(CUE_PHRASES) == set(CUES)
    assert set(CUE_LESIONS) == set(CUES) | {f"suspected:{lesion}" for lesion in LESION_TYPES}
    assert {lesion for lesions in CUE_LESIONS.values() for lesion in lesions} == set(LESION_TYPES)
    for cue, phrase in CUE_PHRASES.items():  # the words an instruction uses never name a lesion the cue maps to
        assert all(named_term(phrase, lesion) is None for lesion in CUE_LESIONS[cue]), cue


# ---------------------------------------------------------------------------------------------------- the check


@pytest.mark.parametrize(("text", "lesion", "found"), [
    ("Segment the pleural fluid.", "effusion", "pleural fluid"),
    ("Are there effusions on the left?", "effusion", "effusions"),
    ("Segment the enlarged cardiac silhouette.", "cardiomegaly", "enlarged cardiac silhouette"),
    ("Where is the Pneumonia?", "pneumonia", "Pneumonia"),
    ("Segment the infection.", "pneumonia", "infection"),
    ("Segment the infiltrates.", "opacity", "infiltrates"),
    ("Segment the  airspace   disease.", "opacity", "airspace   disease"),
    ("Segment the interstitial edema.", "edema", "interstitial edema"),
    ("Segment fluid collecting in the pleural space.", "effusion", None),
    ("Segment collapsed lung tissue.", "atelectasis", None),
    ("Segment the pneumothorax.", "pneumonia", None),
])
def test_named_term_finds_the_target_and_its_synonyms(text, lesion, found):
    assert named_term(text, lesion) == found


def test_no_description_names_its_target():
    for lesion in LESION_TYPES:
        assert DESCRIPTIONS[lesion] and EXPLANATIONS[lesion]
        for description in DESCRIPTIONS[lesion]:
            assert named_term(description, lesion) is None, (lesion, description)


# --------------------------------------------------------------------------------------------------- generation


def test_positive_from_a_global_positive_names_no_place_and_answers_with_it():
    source = pair("Segment the effusion.", "[SEG] It is located in the left lung base and right lung base.",
                  question_type="global", locations=("left lung base", "right lung base"))
    made, skipped = reasoning_pairs([source], BREATHLESS, study_id=STUDY)
    assert [p.polarity for p in made] == ["positive", "positive"] and skipped == []
    for reasoning in made:
        assert reasoning.question_type == "reasoning" and reasoning.mask_key == source.mask_key
        assert reasoning.target == "effusion" and reasoning.locations == source.locations
        assert "lung base" not in reasoning.instruction and named_term(reasoning.instruction, "effusion") is None
        parsed = parse_answer(reasoning.answer)
        assert parsed.template == "reasoning_definitive" and parsed.lesion == "effusion"
        assert parsed.locations == ("left lung base", "right lung base")
    indication = next(p for p in made if "shortness of breath" in p.instruction)
    assert "known heart failure" in indication.instruction
    assert indication.answer.endswith("Effusion can explain shortness of breath and known heart failure.")


def test_positive_from_a_basic_positive_names_its_grounded_place_and_keeps_its_certainty():
    tentative = pair("Segment the opacity in the right lung base.", target="opacity", lesion="pneumonia",
                     locations=("right lung base",), certainty="tentative", mask_key="k_pneumonia_0")
    made, _ = reasoning_pairs([tentative], FEVER, study_id=STUDY)
    assert len(made) == 2
    for reasoning in made:
        assert "in the right lung base" in reasoning.instruction and reasoning.certainty == "tentative"
        assert reasoning.answer.startswith("[SEG] It possibly reflects pneumonia, located in the right lung base. ")
        assert reasoning.target == "pneumonia" and reasoning.mask_key == "k_pneumonia_0"
    assert any("fever and a productive cough" in reasoning.instruction for reasoning in made)


def test_the_global_positive_is_preferred_and_each_type_gets_one_source():
    basic = pair()
    global_ = pair("Segment the effusion.", "[SEG] It is located in the left lung base.", question_type="global",
                   mask_key="aaaa-1111_effusion_0")
    made, _ = reasoning_pairs([basic, global_], ClinicalContext(), study_id=STUDY,
                              config=ReasoningConfig(kinds=("description",)))
    assert len(made) == 1 and "left lung base" not in made[0].instruction


@pytest.mark.parametrize(("clinical", "reason"), [
    (ClinicalContext(), "the report has no indication or history"),
    (ClinicalContext(("chest pain", "trauma"), True), "the indication and history map to no lesion type"),
    (ClinicalContext(("murmur",), True), "the indication and history do not relate to effusion"),
])
def test_an_indication_that_cannot_explain_the_lesion_is_dropped_with_its_reason(clinical, reason):
    made, skipped = reasoning_pairs([pair()], clinical, study_id=STUDY)
    assert len(made) == 1 and made[0].instruction.startswith(("Segment fluid", "Show fluid"))
    assert skipped == [("reasoning positive effusion (indication)", reason)]


def test_negatives_come_from_appendix_c_negatives_at_most_two_distinct_types_indication_first():
    negatives = [negative("pneumonia", ("right lung base",)), negative("edema", ("left lung",)),
                 negative("cardiomegaly", (), "global"), negative("opacity", ("left mid zone lung",)),
                 negative("effusion", ("left lung base",), target="opacity")]  # a substitution: not its own type
    made, _ = reasoning_pairs(negatives, FEVER, study_id=STUDY)
    assert len(made) == 2 and len({p.lesion for p in made}) == 2
    assert all(p.polarity == "negative" and p.mask_key is None and p.certainty is None for p in made)
    pneumonia = next(p for p in made if p.lesion == "pneumonia")  # fever maps to pneumonia: its question comes first
    assert pneumonia.instruction.startswith(("The patient presents with fever", "Clinical history: fever",
                                             "This radiograph was requested for fever"))
    assert pneumonia.answer == "[SEG] There is no such finding: no pneumonia is seen in the right lung base."
    assert "effusion" not in {p.lesion for p in made}
    for reasoning in made:
        assert parse_answer(reasoning.answer).template.startswith("reasoning_absent")
    only_global, _ = reasoning_pairs([negative("cardiomegaly", (), "global")], ClinicalContext(), study_id=STUDY)
    assert [p.answer for p in only_global] == ["[SEG] There is no such finding: no cardiomegaly is seen."]


def test_generation_is_deterministic_and_can_be_switched_off():
    pairs = [pair(), negative("edema"), negative("pneumonia")]
    assert reasoning_pairs(pairs, FEVER, study_id=STUDY) == reasoning_pairs(pairs, FEVER, study_id=STUDY)
    assert reasoning_pairs(pairs, FEVER, study_id=STUDY, config=ReasoningConfig(enabled=False)) == ([], [])
    none, _ = reasoning_pairs(pairs, FEVER, study_id=STUDY, config=ReasoningConfig(max_negatives=0))
    assert {p.polarity for p in none} == {"positive"}


@pytest.mark.parametrize("data", [{"backend": "gpt"}, {"kinds": ["poetry"]}, {"max_negatives": -1},
                                  {"max_cues": True}, {"options": {"url": "x"}}, {"colour": "red"}, {"enabled": 1}])
def test_reasoning_config_refuses_bad_settings(data):
    with pytest.raises(ValueError):
        ReasoningConfig.from_dict(data)


def test_reasoning_config_round_trips():
    config = ReasoningConfig.from_dict({"kinds": ["description"], "max_negatives": 1})
    assert ReasoningConfig.from_dict(config.to_dict()) == config


# ------------------------------------------------------------------------------------------------- paraphrases


class _Fixed:
    def __init__(self, text=None, error=None):
        self.text, self.error, self.asked = text, error, []

    def paraphrase(self, instruction, *, lesion, location):
        self.asked.append((instruction, lesion, location))
        if self.error:
            raise ReportError(self.error)
        return self.text


def test_a_paraphrase_that_names_the_target_or_fails_is_dropped_with_its_reason():
    naming = _Fixed("Please segment the pleural effusion in the left lung base.")
    made, skipped = reasoning_pairs([pair()], ClinicalContext(), study_id=STUDY, paraphraser=naming)
    assert made == [] and skipped[-1] == ("reasoning positive effusion (description)",
                                          "the instruction names its target ('pleural effusion')")
    assert naming.asked[0][1:] == ("effusion", "left lung base")
    broken = _Fixed(error="LLM answer unparseable after one retry: no JSON")
    made, skipped = reasoning_pairs([pair()], ClinicalContext(), study_id=STUDY, paraphraser=broken)
    assert made == [] and skipped[-1][1].startswith("LLM paraphrase unusable: LLM answer unparseable")
    good = _Fixed("Outline the fluid gathering between the lung and chest wall in the left lung base.")
    made, _ = reasoning_pairs([pair()], ClinicalContext(), study_id=STUDY, paraphraser=good)
    assert [p.instruction for p in made] == [good.text]


@pytest.mark.parametrize(("answer", "problem"), [
    ('{"instruction": "Segment the effusion in the left lung base."}', "names its target"),
    ('{"instruction": "Segment the fluid on the left."}', "dropped its place"),
    ('{"text": "Segment it."}', "JSON object"),
    ('{"instruction": "[SEG] fluid in the left lung base."}', r"no \[SEG\]"),
    ("no json at all", "JSON"),
])
def test_parse_paraphrase_refuses_unusable_answers(answer, problem):
    with pytest.raises(ValueError, match=problem):
        parse_paraphrase(answer, lesion="effusion", location="left lung base")


def test_llm_paraphraser_asks_the_transport_retries_once_and_caches(tmp_path):
    replies = iter(['not json', '{"instruction": "Outline the fluid gathering around the left lung base."}'])
    transport = ScriptedTransport(lambda body: next(replies))
    paraphraser = LlmParaphraser(transport=transport, cache_dir=str(tmp_path))
    text = paraphraser.paraphrase("Segment fluid collecting in the pleural space in the left lung base.",
                                  lesion="effusion", location="left lung base")
    assert text == "Outline the fluid gathering around the left lung base." and paraphraser.calls == 2
    assert "pleural fluid" in transport.systems()[0]  # the prompt lists what must not be named
    again = LlmParaphraser(transport=ScriptedTransport(lambda body: "unused"), cache_dir=str(tmp_path))
    assert again.paraphrase("Segment fluid collecting in the pleural space in the left lung base.",
                            lesion="effusion", location="left lung base") == text and again.calls == 0


def test_llm_paraphraser_over_a_loopback_server_and_refuses_a_remote_one():
    server = FakeChatServer(lambda body: json.dumps({"instruction": "If fluid gathers around the lung, outline it."}))
    try:
        paraphraser = LlmParaphraser(url=server.url)
        made, skipped = reasoning_pairs([negative("effusion", (), "global")], ClinicalContext(), study_id=STUDY,
                                        paraphraser=paraphraser)
        assert [p.instruction for p in made] == ["If fluid gathers around the lung, outline it."] and not skipped
        assert len(server.requests) == 1
    finally:
        server.close()
    with pytest.raises(BackendError, match="loopback"):
        LlmParaphraser(url="http://10.1.2.3:8000")


# ----------------------------------------------------------------------------- the rules reasoning rows live under


def test_one_reasoning_negative_per_target_survives_beside_the_table2_one():
    first = replace(negative("edema"), dicom_id="a")
    second = replace(negative("edema", ("left lung",)), dicom_id="b")
    reasoning = [replace(p, question_type="reasoning", answer="[SEG] There is no such finding: no edema is seen.")
                 for p in (first, second)]
    kept = limit_study_negatives([first, second, *reasoning])
    assert [(p.question_type, p.dicom_id) for p in kept] == [("basic", "a"), ("reasoning", "a")]
    # image b's reasoning negative asks b's negative again; that one gives way to a's, so it goes too
    assert limit_study_negatives([first, second, reasoning[1]]) == [first]


def test_global_negative_shares_count_table2_negatives_only():
    def row(study, question_type="basic"):
        return {"study_id": study, "dicom_id": study, "lesion": "effusion", "target": "effusion",
                "polarity": "negative", "question_type": question_type, "instruction": "", "answer": "",
                "locations": ["left lung"]}
    rows = [row(f"s{i}") for i in range(10)] + [row(f"s{i}", "reasoning") for i in range(10)]
    shares = {"pneumonia": 0, "atelectasis": 0, "opacity": 0, "consolidation": 0, "edema": 0, "effusion": 0.3}
    chosen = choose_global_negatives(rows, shares)
    assert sum(r["question_type"] == "global" for r in chosen) == 3  # 0.3 x 10, not 0.3 x 20
    assert sum(r["question_type"] == "reasoning" for r in chosen) == 10
    chooser = GlobalNegativeChooser(shares)
    chooser.observe(rows)
    chooser.decide()
    assert chooser.apply(rows) == chosen


@pytest.mark.parametrize(("options", "problem"), [
    ({"url": "http://10.1.2.3:8000"}, "not on loopback"),
    ({"url": "http://127.0.0.1:8000", "model_path": "/m"}, "exactly one of url or model_path"),
    ({}, "exactly one of url or model_path"),
    ({"url": "http://127.0.0.1:8000", "temperature": 0.3}, "unknown keys temperature"),
    ({"model_path": "/no/such/folder"}, "is not a folder"),
])
def test_a_build_refuses_bad_llm_reasoning_options_before_any_work(tmp_path, options, problem):
    from mimic_ils.orchestration import BuildConfig, build
    from mimic_ils.schema import MimicIlsError

    config = BuildConfig(vision="phantom", reasoning={"backend": "llm", "options": options})
    with pytest.raises(MimicIlsError, match=problem):
        build(tmp_path / "no-cohort", tmp_path / "out", config=config, progress=False)
    assert not (tmp_path / "out").exists()
