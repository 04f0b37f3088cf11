"""The rules backend on hand-written MIMIC-style sentences, the two-step location mapper, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import NamedTuple

import pytest

from mimic_ils import cli
from mimic_ils.report import coarse_category, get_backend, map_location, structure_report
from mimic_ils.report.rules import RulesBackend, structure_sentence
from mimic_ils.schema import LESION_TYPES, BackendError, ReportError, Section

RUL, RML, RLL = "lung upper lobe right", "lung middle lobe right", "lung lower lobe right"
LUL, LLL = "lung upper lobe left", "lung lower lobe left"
R_BASE, L_BASE, R_LUNG, L_LUNG = "right lung base", "left lung base", "right lung", "left lung"
R_MID, L_MID, R_UP, R_APEX, L_APEX = (
    "right mid zone lung", "left mid zone lung", "right upper zone lung", "right apical zone lung",
    "left apical zone lung",
)


class E(NamedTuple):
    """Expected finding: entity, presence (+/-), certainty (d/t), lung labels, lesion type ("=" means the entity's
    own name when it is one of the seven), predicted lesion type."""

    entity: str
    presence: str = "+"
    certainty: str = "d"
    locations: tuple[str, ...] = ()
    lesion: str | None = "="
    predicted: str | None = None


CASES = [
    # negation: cue lists, "no evidence of ... or ...", without, free of, resolved, no longer, neither/nor
    ("No pleural effusion, pneumothorax, or focal consolidation.",
     [E("effusion", "-"), E("pneumothorax", "-", lesion=None), E("consolidation", "-")]),
    ("There is no evidence of pneumonia or pulmonary edema.", [E("pneumonia", "-"), E("edema", "-")]),
    ("No evidence of focal consolidation, effusion, or edema.",
     [E("consolidation", "-"), E("effusion", "-"), E("edema", "-")]),
    ("Lungs are clear without consolidation or effusion.", [E("consolidation", "-"), E("effusion", "-")]),
    ("The lungs are free of consolidation.", [E("consolidation", "-")]),
    ("Previously seen left lower lobe atelectasis has resolved.", [E("atelectasis", "-", locations=(LLL,))]),
    ("Interval resolution of the right upper lobe pneumonia.", [E("pneumonia", "-", locations=(RUL,))]),
    ("Resolved right pleural effusion.", [E("effusion", "-", locations=(R_BASE,))]),  # E.4: effusions at the base
    ("The right pleural effusion is no longer seen.", [E("effusion", "-", locations=(R_BASE,))]),
    ("No new consolidation.", [E("consolidation", "-")]),
    ("Negative for pneumothorax.", [E("pneumothorax", "-", lesion=None)]),
    ("There is no pneumothorax, but there is a small right pleural effusion.",
     [E("pneumothorax", "-", lesion=None), E("effusion", locations=(R_BASE,))]),
    ("No focal airspace opacity.", [E("opacity", "-")]),
    ("Mild pulmonary vascular congestion without frank edema.",  # no place given: the entity decides
     [E("vascular congestion", locations=(R_LUNG, L_LUNG), lesion=None), E("edema", "-")]),
    ("Neither effusion nor pneumothorax is present.", [E("effusion", "-"), E("pneumothorax", "-", lesion=None)]),
    ("Pneumonia is unlikely.", [E("pneumonia", "-", "t")]),
    # hedges and "X reflects / likely represents Y"
    ("Possible small left pleural effusion.", [E("effusion", "+", "t", (L_BASE,))]),
    ("Pneumonia cannot be excluded.", [E("pneumonia", "+", "t")]),
    ("Right lower lobe opacity may represent pneumonia.",
     [E("opacity", "+", "t", (RLL,), "pneumonia", "pneumonia")]),
    ("Left basilar opacity, likely atelectasis.", [E("opacity", "+", "t", (L_BASE,), "atelectasis", "atelectasis")]),
    ("Opacity at the left base could reflect atelectasis or pneumonia.",
     [E("opacity", "+", "t", (L_BASE,), "atelectasis", "atelectasis")]),
    ("Retrocardiac opacity likely reflects atelectasis.",  # a lateral view location: never a lung label
     [E("opacity", "+", "t", (), "atelectasis", "atelectasis")]),
    ("Consolidation in the right lower lobe is concerning for pneumonia.",
     [E("consolidation", "+", "t", (RLL,), "pneumonia", "pneumonia")]),
    ("Findings are suggestive of mild interstitial edema.", [E("edema", "+", "t", (R_LUNG, L_LUNG))]),
    ("Probable early consolidation in the lingula.", [E("consolidation", "+", "t", (LUL,))]),
    ("Mild pulmonary edema and possible left lower lobe pneumonia.",
     [E("edema", locations=(R_LUNG, L_LUNG)), E("pneumonia", "+", "t", (LLL,))]),
    ("Atelectasis versus pneumonia in the right lower lobe.",
     [E("atelectasis", "+", "t", (RLL,)), E("pneumonia", "+", "t", (RLL,))]),
    ("Subtle right upper lung opacity may be present.", [E("opacity", "+", "t", (R_UP,))]),
    ("Hazy perihilar opacities likely reflecting pulmonary edema.",
     [E("opacity", "+", "t", (R_MID, L_MID), "edema", "edema")]),
    ("Opacity in the right lung base, which may be due to atelectasis, although pneumonia cannot be excluded.",
     [E("opacity", "+", "t", (R_BASE,), "atelectasis", "atelectasis"), E("pneumonia", "+", "t", (R_BASE,))]),
    ("Perihilar haziness consistent with mild pulmonary edema.",
     [E("opacity", "+", "d", (R_MID, L_MID), "edema", "edema")]),
    ("Low lung volumes with bibasilar opacities, likely atelectasis.",
     [E("opacity", "+", "t", (R_BASE, L_BASE), "atelectasis", "atelectasis")]),
    # comparisons keep a finding positive
    ("Unchanged moderate cardiomegaly.", [E("cardiomegaly")]),
    ("No change in small left pleural effusion.", [E("effusion", locations=(L_BASE,))]),
    ("Stable bibasilar atelectasis.", [E("atelectasis", locations=(R_BASE, L_BASE))]),
    ("Left pleural effusion has decreased in size.", [E("effusion", locations=(L_BASE,))]),
    ("Increased right lower lobe consolidation.", [E("consolidation", locations=(RLL,))]),
    ("Improved but persistent left lower lobe opacity.", [E("opacity", locations=(LLL,))]),
    ("No significant interval change in the bilateral pleural effusions.",
     [E("effusion", locations=(R_BASE, L_BASE))]),
    # devices are never findings
    ("Endotracheal tube terminates 4 cm above the carina.", []),
    ("Right PICC line terminates in the SVC, and there is no pneumothorax.", [E("pneumothorax", "-", lesion=None)]),
    ("Left-sided pacemaker with leads in the right atrium and right ventricle.", []),
    ("Left chest tube in place with small residual left apical pneumothorax.",
     [E("pneumothorax", locations=(L_APEX,), lesion=None)]),
    ("Nasogastric tube tip is in the stomach.", []),
    # heart size
    ("The heart is mildly enlarged.", [E("cardiomegaly")]),
    ("Heart size is normal.", [E("cardiomegaly", "-")]),
    ("The cardiac silhouette is not enlarged.", [E("cardiomegaly", "-")]),
    ("Cardiomediastinal silhouette is within normal limits.", [E("cardiomegaly", "-")]),
    ("Enlarged heart with pulmonary vascular congestion.",
     [E("cardiomegaly"), E("vascular congestion", locations=(R_LUNG, L_LUNG), lesion=None)]),
    ("Heart size is borderline enlarged.", [E("cardiomegaly", "+", "t")]),
    # several findings per sentence
    ("Small bilateral pleural effusions and bibasilar atelectasis.",
     [E("effusion", locations=(R_BASE, L_BASE)), E("atelectasis", locations=(R_BASE, L_BASE))]),
    ("Moderate cardiomegaly with mild pulmonary edema and small bilateral effusions.",
     [E("cardiomegaly"), E("edema", locations=(R_LUNG, L_LUNG)), E("effusion", locations=(R_BASE, L_BASE))]),
    ("Right lower lobe consolidation and small right effusion.",
     [E("consolidation", locations=(RLL,)), E("effusion", locations=(R_BASE,))]),
    ("Effusion and atelectasis at the left base.",
     [E("effusion", locations=(L_BASE,)), E("atelectasis", locations=(L_BASE,))]),
    # locations: several places, zones vs lobes, laterality words
    ("Opacities in the right upper and middle lobes.", [E("opacity", locations=(RUL, RML))]),
    ("Patchy opacities in both lower lobes.", [E("opacity", locations=(RLL, LLL))]),
    ("Patchy opacities in the lower lungs bilaterally.", [E("opacity", locations=(R_BASE, L_BASE))]),
    ("Consolidation in the right mid and lower lung zones.", [E("consolidation", locations=(R_MID, R_BASE))]),
    ("Airspace disease in the right upper lobe and lingula.", [E("opacity", locations=(RUL, LUL))]),
    ("Diffuse bilateral airspace opacities.", [E("opacity", locations=(R_LUNG, L_LUNG))]),
    ("Blunting of the left costophrenic angle.", [E("effusion", locations=(L_BASE,))]),
    ("There is mild retrocardiac atelectasis.", [E("atelectasis")]),  # lateral view location
    ("Right middle lobe pneumonia.", [E("pneumonia", locations=(RML,))]),
    ("Bibasilar atelectasis, left greater than right.", [E("atelectasis", locations=(R_BASE, L_BASE))]),
    ("Small right-sided effusion.", [E("effusion", locations=(R_BASE,))]),
    ("Small amount of pleural fluid on the left.", [E("effusion", locations=(L_BASE,))]),
    ("There is mild bilateral interstitial edema.", [E("edema", locations=(R_LUNG, L_LUNG))]),
    # findings outside the seven lesion types keep their places; non-lung places map to no lung label
    ("Opacity projecting over the right hilum.", [E("opacity", locations=(R_MID,))]),  # hilar is lung (Fig. 10)
    ("Right hilar enlargement.", [E("hilar enlargement", lesion=None)]),
    ("Left apical pleural thickening.", [E("pleural thickening", locations=(L_APEX,), lesion=None)]),
    ("Nodular opacity in the right upper lobe.", [E("nodule", locations=(RUL,), lesion=None)]),
    ("Mild degenerative changes of the thoracic spine.", [E("degenerative changes", lesion=None)]),
    ("Right fifth rib fracture.", [E("fracture", lesion=None)]),
    ("Small left apical pneumothorax.", [E("pneumothorax", locations=(L_APEX,), lesion=None)]),
    ("Moderate right and small left pleural effusions are unchanged.", [E("effusion", locations=(R_BASE, L_BASE))]),
    ("Persistent left retrocardiac opacity, atelectasis versus consolidation.",
     [E("opacity", "+", "t", (), "atelectasis", "atelectasis")]),
    ("There is mild blunting of the right costophrenic angle, likely small effusion.",
     [E("effusion", "+", "t", (R_BASE,), "effusion", "effusion")]),
    ("The previously noted right upper lobe opacity has cleared.", [E("opacity", "-", locations=(RUL,))]),
    ("No large pleural effusion is seen, although a small effusion cannot be excluded.",
     [E("effusion", "-"), E("effusion", "+", "t")]),
    ("Lungs are clear.", []),
    ("No acute cardiopulmonary process.", []),
]


def _compact(finding) -> E:
    return E(finding.entity, "+" if finding.is_positive else "-", finding.certainty[0], finding.locations,
             finding.lesion_type, finding.predicted_lesion_type)


def _expected(entry: E) -> E:
    lesion = (entry.entity if entry.entity in LESION_TYPES else None) if entry.lesion == "=" else entry.lesion
    return entry._replace(lesion=lesion)


def test_at_least_sixty_sentences():
    assert len(CASES) >= 60


@pytest.mark.parametrize(("sentence", "expected"), CASES, ids=[case[0][:48] for case in CASES])
def test_rules_sentence(sentence, expected):
    found = [_compact(finding) for finding in structure_sentence(sentence, 3)]
    assert found == [_expected(entry) for entry in expected]
    assert all(finding.sentence_index == 3 for finding in structure_sentence(sentence, 3))


def test_location_phrase_and_six_tuple_fields():
    (finding,) = structure_sentence("Right lower lobe opacity may represent pneumonia.", 1)
    assert finding.entity == "opacity" and finding.location == "Right lower lobe"
    (hilum,) = structure_sentence("Opacity projecting over the right humeral head.", 1)
    assert hilum.location == "right humeral" and hilum.locations == () and hilum.lesion_type is None


def test_section_sentence_indices():
    section = Section("findings", "Lungs are clear.  No effusion.\n Mild cardiomegaly.")
    findings = RulesBackend().structure(section)
    assert [(f.entity, f.sentence_index, f.presence) for f in findings] == [
        ("effusion", 2, "negative"), ("cardiomegaly", 3, "positive")]


@pytest.mark.parametrize(("phrase", "labels"), [
    ("right upper lobe", (RUL,)), ("right upper lung", (R_UP,)), ("lower lungs", (R_BASE, L_BASE)),
    ("bibasilar", (R_BASE, L_BASE)), ("bilateral", (R_LUNG, L_LUNG)), ("both lungs", (R_LUNG, L_LUNG)),
    ("lingula", (LUL,)), ("retrocardiac", ()), ("left perihilar", (L_MID,)), ("perihilar", (R_MID, L_MID)),
    ("right costophrenic angle", (R_BASE,)), ("left apical", (L_APEX,)), ("apices", (R_APEX, L_APEX)),
    ("right", (R_LUNG,)), ("left hemithorax", (L_LUNG,)), ("middle lobe", (RML,)), ("left base", (L_BASE,)),
    ("right mid-to-lower lung zones", (R_MID, R_BASE)), ("lower lobes bilaterally", (RLL, LLL)),
    ("base on the right", (R_BASE,)), ("left upper and lower lobes", (LUL, LLL)), ("the lower lobe", ()),
    ("right hilum", (R_MID,)), ("left hilar", (L_MID,)), ("heart", ()), ("", ()), (None, ()),
])
def test_two_step_location_mapping(phrase, labels):
    assert map_location(phrase) == labels


@pytest.mark.parametrize(("phrase", "category"), [
    ("right lower lobe", "lung"), ("right", "lung"), ("bilateral", "lung"), ("right hilum", "lung"),
    ("costophrenic angle", "lung"), ("lingular", "lung"), ("cardiac apex", "heart"), ("mediastinum", "mediastinum"),
    ("left hemidiaphragm", "diaphragm"), ("right sixth rib", "rib"), ("thoracic spine", "thoracic spine"),
    ("cervical spine", "cervical spine"), ("left upper quadrant", "abdomen"), ("aortic arch", "vessels"),
    ("pulmonary vasculature", "vessels"), ("esophagus", "mediastinum"), ("left pleural", "pleura"),
    ("retrocardiac", "lateral view location"), ("retrosternal space", "lateral view location"),
    ("middle mediastinum", "lateral view location"), ("left breast", "breast"), ("sternum", "sternum"),
    ("right scapula", "scapula"), ("right humeral head", None), ("somewhere", None), (None, None),
])
def test_coarse_category(phrase, category):
    assert coarse_category(phrase) == category


def test_get_backend():
    assert get_backend("rules").name == "rules"
    with pytest.raises(BackendError, match="unknown report backend 'chexpert'"):
        get_backend("chexpert")
    with pytest.raises(BackendError, match="no options"):
        get_backend("rules", url="http://127.0.0.1:1")


REPORT = (
    "                                 FINAL REPORT\n EXAMINATION:  CHEST (PORTABLE AP)\n \n INDICATION:  ___M with"
    " fever, evaluate for pneumonia.\n \n COMPARISON:  ___.\n \n FINDINGS: \n \n Compared to the prior study,"
    " there is new right lower lobe\n consolidation concerning for pneumonia.  No pleural effusion or\n"
    " pneumothorax.  An endotracheal tube terminates 4 cm above the carina.\n \n IMPRESSION: \n \n Right lower"
    " lobe pneumonia.\n"
)


def test_structure_report_full_report():
    report = structure_report(REPORT)
    assert report.section.name == "findings"
    assert [(f.entity, f.lesion_type, f.presence, f.certainty, f.locations) for f in report.findings] == [
        ("consolidation", "pneumonia", "positive", "tentative", (RLL,)),
        ("effusion", "effusion", "negative", "definitive", ()),
        ("pneumothorax", None, "negative", "definitive", ()),
    ]
    with pytest.raises(ReportError, match="empty report"):
        structure_report("  ")


def test_cli_single_file_prints_one_object(tmp_path, capsys):
    path = tmp_path / "s51234567.txt"
    path.write_text(REPORT)
    assert cli.main(["structure-report", str(path)]) == 0
    output = json.loads(capsys.readouterr().out)
    assert set(output) == {"section", "findings"}
    assert output["section"]["name"] == "findings"
    assert output["findings"][0] == {
        "entity": "consolidation", "sentence_index": 1, "presence": "positive", "certainty": "tentative",
        "location": "right lower lobe", "predicted_lesion_type": "pneumonia", "lesion_type": "pneumonia",
        "locations": [RLL], "predicted_lesion_sentence_index": 1, "location_source": "report",
    }


def test_cli_batch_json_lines_with_per_report_errors(tmp_path, capsys):
    good = tmp_path / "s51234567.txt"
    good.write_text(REPORT)
    empty, binary, headerless = tmp_path / "empty.txt", tmp_path / "binary.txt", tmp_path / "s58235663.txt"
    empty.write_text("")
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    headerless.write_text(REPORT)  # an official special case with no findings at all
    files = [good, empty, binary, tmp_path / "missing.txt", headerless, good]
    assert cli.main(["structure-report", *map(str, files)]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == [str(path) for path in files]
    assert [sorted(line) for line in lines] == [["file", "findings", "section"]] + [["error", "file"]] * 4 + [
        ["file", "findings", "section"]]
    assert "empty report" in lines[1]["error"] and "not UTF-8" in lines[2]["error"]
    assert "cannot read" in lines[3]["error"] and "special case" in lines[4]["error"]
    assert lines[0]["findings"] == lines[5]["findings"]


def test_cli_llm_options_need_llm_backend(capsys):
    assert cli.main(["structure-report", "--llm-url", "http://127.0.0.1:9", "x.txt"]) == 1
    assert "--backend llm" in capsys.readouterr().err


def test_cli_reads_stdin_in_a_subprocess():
    command = [sys.executable, "-m", "mimic_ils", "structure-report", "-"]
    result = subprocess.run(command, input=REPORT.encode(), capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["findings"][0]["lesion_type"] == "pneumonia"
    result = subprocess.run(command, input=b"\xff\xfe\x00garbage", capture_output=True, timeout=300)
    assert result.returncode == 1 and b"stdin: not UTF-8 text" in result.stderr
