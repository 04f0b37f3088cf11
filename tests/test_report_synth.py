"""The rules backend on the synthetic cohort: every phantom lesion's type, presence, certainty and lung side (and
the exact lung labels of focal lesions) is recovered from the generated reports, every negated type is negative,
and no lesion type the phantom lacks is reported present."""

from __future__ import annotations

import pytest

from mimic_ils.report import split_sentences, structure_report
from mimic_ils.schema import Finding, StructuredReport

synth = pytest.importorskip("mimic_ils.synth", reason="the synthetic cohort generator is not available")

FOCAL = ("atelectasis", "pneumonia", "consolidation", "opacity")


def lung_side(labels: tuple[str, ...] | list[str]) -> str | None:
    right = any(label.startswith("right") or label.endswith("right") for label in labels)
    left = any(label.startswith("left") or label.endswith("left") for label in labels)
    return "bilateral" if right and left else "right" if right else "left" if left else None


def check_study(report: StructuredReport, section: str, lesions: list[dict], negated: list[str]) -> list[str]:
    """Every mismatch between one structured report and its phantom truth, as readable lines."""
    problems = []
    if report.section.name != section:
        problems.append(f"section {report.section.name} != {section}")
    sentences = split_sentences(report.section.text)
    for lesion in lesions:
        phrase = " ".join(lesion["phrase"].split())
        indices = [index for index, sentence in enumerate(sentences, start=1) if sentence == phrase]
        found = [f for f in report.findings if f.sentence_index in indices and f.lesion_type == lesion["lesion_type"]]
        if not _matches(found, lesion):
            problems.append(f"lesion {lesion} not recovered: {found}")
    for lesion_type in negated:
        mentions = [f for f in report.findings if f.lesion_type == lesion_type]
        if not mentions or any(f.is_positive for f in mentions):
            problems.append(f"negated {lesion_type} not negative: {mentions}")
    present = {lesion["lesion_type"] for lesion in lesions}
    extra = [f for f in report.findings if f.is_positive and f.lesion_type and f.lesion_type not in present]
    if extra:
        problems.append(f"positive findings the phantom lacks: {extra}")
    return problems


def _matches(found: list[Finding], lesion: dict) -> bool:
    for finding in found:
        if not finding.is_positive or finding.certainty != lesion["certainty"]:
            continue
        if lung_side(finding.locations) != lesion["side"]:
            continue
        if lesion["lesion_type"] in FOCAL and set(finding.locations) != set(lesion["locations"]):
            continue
        return True
    return False


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = synth.generate_cohort(tmp_path_factory.mktemp("synth") / "cohort", 12, 11)
    return root, synth.load_truth(root)


def test_rules_recover_the_phantom_truth_of_a_generated_cohort(cohort):
    root, truth = cohort
    assert len(truth) == 12
    problems, n_lesions = [], 0
    for study_id, record in truth.items():
        path = root / "files" / f"p{record['subject_id'][:2]}" / f"p{record['subject_id']}" / f"s{study_id}.txt"
        report = structure_report(path.read_text(encoding="utf-8"), study_id=study_id)
        n_lesions += len(record["lesions"])
        problems += [f"{study_id}: {line}" for line in
                     check_study(report, record["section"], record["lesions"], record["negated"])]
    assert n_lesions >= 8
    assert problems == []


def test_check_study_detects_mismatches():
    report = structure_report(" FINDINGS: Possible left pleural effusion.  No pulmonary edema.\n")
    lesion = {"lesion_type": "effusion", "locations": ["left lung base"], "side": "left", "certainty": "tentative",
              "phrase": "Possible left pleural effusion."}
    assert check_study(report, "findings", [lesion], ["edema"]) == []
    wrong = [{**lesion, "side": "right"}, {**lesion, "certainty": "definitive"}, {**lesion, "lesion_type": "edema"}]
    assert len(check_study(report, "impression", wrong, ["effusion"])) == 5


def test_lung_side():
    assert lung_side(("lung lower lobe right", "left lung base")) == "bilateral"
    assert lung_side(("lung upper lobe left",)) == "left" and lung_side(()) is None


@pytest.mark.skipif(not hasattr(synth, "plan_cohort"), reason="synth.plan_cohort is not available")
def test_rules_recover_the_truth_of_many_planned_reports():
    """Reports only (no pixels), many more of them, so every template and location of the phrase bank occurs."""
    problems, seen = [], set()
    for plan in synth.plan_cohort(400, 5):
        lesions = [{"lesion_type": lesion.lesion_type, "locations": list(lesion.locations), "side": lesion.side,
                    "certainty": lesion.certainty, "phrase": phrase}
                   for lesion, phrase in zip(plan.lesions, plan.phrases, strict=True)]
        seen.update((lesion["lesion_type"], lesion["certainty"]) for lesion in lesions)
        report = structure_report(plan.report, study_id=plan.study_id)
        problems += [f"{plan.study_id}: {line}" for line in check_study(report, plan.section, lesions, plan.negated)]
    assert len(seen) == 14  # all seven types, both certainties
    assert problems == []
