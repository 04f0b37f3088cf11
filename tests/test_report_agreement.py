"""Agreement of the rules and llm report backends: the pure pairing / counting functions on hand-made findings, and
``mimic-ils report-agreement`` end to end against a fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mimic_ils import cli
from mimic_ils.commands import report_agreement
from mimic_ils.report import split_sentences
from mimic_ils.report.agreement import (
    FIELDS,
    Agreement,
    disagreements,
    field_agreement,
    match_findings,
    normalize_entity,
    side_of,
)
from mimic_ils.report.llm import LOCATION_STEP1_PROMPT, LOCATION_STEP2_PROMPT, STRUCTURING_PROMPT
from mimic_ils.schema import Finding, Section

sys.path.insert(0, str(Path(__file__).parent))
from _llm_helpers import FakeChatServer, parse_mapping_text  # noqa: E402

RLB, LLB, LL, RUL = "right lung base", "left lung base", "left lung", "lung upper lobe right"


def finding(entity, sentence=1, lesion=None, presence="positive", certainty="definitive", locations=(),
            predicted=None):
    return Finding(entity=entity, sentence_index=sentence, presence=presence, certainty=certainty,
                   lesion_type=lesion, locations=tuple(locations), predicted_lesion_type=predicted)


@pytest.mark.parametrize(("labels", "side"), [
    ((), "none"), ((RLB,), "right"), ((LL, "lung lower lobe left"), "left"), ((RLB, LLB), "both"),
    (("lung middle lobe right", "left apical zone lung"), "both"), ((RUL,), "right"),
])
def test_side_of(labels, side):
    assert side_of(labels) == side


def test_normalize_entity():
    assert normalize_entity("  Pleural   Effusions ") == "pleural effusion"
    assert normalize_entity("Pneumothorax") == normalize_entity("pneumothorax")
    assert normalize_entity("mass") == "mass"  # "ss" is no plural


def test_match_by_sentence_and_lesion_type_then_entity():
    rules = [finding("effusion", 2, "effusion"), finding("atelectasis", 1, "atelectasis"),
             finding("pneumothorax", 3), finding("consolidation", 4, "consolidation"),
             finding("effusion", 5, "effusion")]
    llm = [finding("atelectasis", 1, "atelectasis"), finding("pleural effusion", 2, "effusion"),
           finding("Pneumothorax", 3), finding("consolidation", 4, "pneumonia", predicted="pneumonia"),
           finding("effusion", 6, "effusion"), finding("nodule", 4)]
    matching = match_findings(rules, llm)
    assert [(a.sentence_index, b.entity) for a, b in matching.pairs] == [
        (2, "pleural effusion"), (1, "atelectasis"), (3, "Pneumothorax"), (4, "consolidation")]
    assert [f.sentence_index for f in matching.only_a] == [5]
    assert [(f.sentence_index, f.entity) for f in matching.only_b] == [(6, "effusion"), (4, "nodule")]


def test_each_finding_pairs_once():
    rules = [finding("opacity", 1, "opacity"), finding("opacity", 1, "opacity")]
    llm = [finding("opacity", 1, "opacity")]
    matching = match_findings(rules, llm)
    assert len(matching.pairs) == 1 and matching.pairs[0][0] is rules[0] and matching.only_a == (rules[1],)
    assert match_findings([], []).pairs == () and match_findings(rules, []).only_a == tuple(rules)


def test_field_agreement_and_disagreements():
    rules = [finding("atelectasis", 1, "atelectasis", locations=(RLB, LLB)),
             finding("effusion", 2, "effusion", certainty="tentative", locations=(LL,)),
             finding("consolidation", 3, "consolidation", locations=(RUL,)),
             finding("edema", 4, "edema")]
    llm = [finding("atelectasis", 1, "atelectasis", locations=(LLB, RLB)),  # order does not matter
           finding("pleural effusion", 2, "effusion", locations=(LLB,)),  # same side, other labels
           finding("consolidation", 3, "pneumonia", presence="negative", predicted="pneumonia", locations=(RUL,)),
           finding("nodule", 5)]
    matching = match_findings(rules, llm)
    counts = field_agreement(matching)
    assert set(counts) == set(FIELDS)
    assert counts == {"found": (3, 5), "lesion_type": (2, 3), "presence": (2, 3), "certainty": (2, 3),
                      "side": (3, 3), "locations": (2, 3), "predicted_lesion_type": (2, 3)}
    assert [(d.sentence_index, d.field, d.a, d.b) for d in disagreements(matching)] == [
        (2, "certainty", "tentative", "definitive"),
        (2, "locations", [LL], [LLB]),
        (3, "lesion_type", "consolidation", "pneumonia"),
        (3, "presence", "positive", "negative"),
        (3, "predicted_lesion_type", None, "pneumonia"),
        (4, "found", "edema", None),
        (5, "found", None, "nodule"),
    ]
    total = Agreement()
    total.add(matching)
    total.add(match_findings(rules[:1], llm[:1]))
    assert (total.matched, total.only_a, total.only_b) == (4, 1, 1)
    assert total.counts["found"] == [4, 6] and total.rate("found") == pytest.approx(4 / 6)
    assert Agreement().rate("side") is None and Agreement().as_json()["side"] == {"agree": 0, "total": 0,
                                                                                 "rate": None}


# ------------------------------------------------------------------------------------------- the command

HEAD = (" FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n INDICATION:  ___F with cough.\n \n"
        " FINDINGS: \n \n ")
REPORTS = {
    "s50000001": "Bibasilar atelectasis.  Possible small left pleural effusion.  No pneumothorax.\n \n"
                 " IMPRESSION: \n \n Atelectasis.\n",
    "s50000002": "Right upper lobe consolidation.  No pleural effusion.\n",
    "s50000003": "Garbage for the model.\n",
}


def _record(entity, sentence, presence, certainty, location, predicted=None, predicted_sentence=None):
    return {"entity": entity, "sentence_index": sentence, "presence": presence, "certainty": certainty,
            "location": location, "predicted_lesion_type": predicted,
            "predicted_lesion_type_sentence_index": predicted_sentence}


STRUCTURED = {  # keyed by the first sentence of the section
    "Bibasilar atelectasis.": [
        _record("atelectasis", 1, "positive", "definitive", "bibasilar"),
        _record("pleural effusion", 2, "positive", "definitive", "left"),  # rules: tentative
        _record("pneumothorax", 3, "negative", "definitive", None),
    ],
    "Right upper lobe consolidation.": [  # the effusion of sentence 2 is left out; a nodule added
        _record("consolidation", 1, "positive", "definitive", "right upper lobe", "pneumonia", 1),
        _record("nodule", 1, "positive", "definitive", "right upper lobe"),
    ],
}
STEP1 = {("atelectasis", "bibasilar"): ["lung"], ("pleural effusion", "left"): ["lung"],
         ("pneumothorax", None): ["pleura"], ("consolidation", "right upper lobe"): ["lung"],
         ("nodule", "right upper lobe"): ["lung"]}
STEP2 = {("atelectasis", "bibasilar"): [RLB, LLB], ("pleural effusion", "left"): [LLB],  # rules: left lung
         ("consolidation", "right upper lobe"): [RUL], ("nodule", "right upper lobe"): [RUL]}


# What the rules backend gives on these sections, pinned so that the printed numbers do not follow changes of the
# rule tables (the real rules backend runs in the test after this one).
RULES = {
    "Bibasilar atelectasis.": (
        Finding("atelectasis", 1, "positive", "definitive", "Bibasilar", lesion_type="atelectasis",
                locations=(RLB, LLB), location_source="report"),
        Finding("effusion", 2, "positive", "tentative", "left", lesion_type="effusion", locations=(LL,),
                location_source="report"),
        Finding("pneumothorax", 3, "negative", "definitive"),
    ),
    "Right upper lobe consolidation.": (
        Finding("consolidation", 1, "positive", "definitive", "Right upper lobe", lesion_type="consolidation",
                locations=(RUL,), location_source="report"),
        Finding("effusion", 2, "negative", "definitive", lesion_type="effusion"),
    ),
}


class PinnedRules:
    name = "rules"

    def structure(self, section: Section) -> tuple[Finding, ...]:
        return RULES.get(split_sentences(section.text)[0], ())


def fake_llm(body: dict) -> str:
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    if system == STRUCTURING_PROMPT:
        first = user.split("\n")[0].removeprefix("1. ")
        return json.dumps(STRUCTURED[first]) if first in STRUCTURED else "no idea"
    table = STEP1 if system == LOCATION_STEP1_PROMPT else STEP2
    assert system in (LOCATION_STEP1_PROMPT, LOCATION_STEP2_PROMPT)
    return json.dumps(table[parse_mapping_text(user)])


@pytest.fixture
def mimic_tree(tmp_path) -> Path:
    root = tmp_path / "files"
    for number, (study, body) in enumerate(REPORTS.items(), start=1):
        folder = root / "p10" / f"p1000000{number}"
        folder.mkdir(parents=True)
        (folder / f"{study}.txt").write_text(HEAD + body)
    return root


def test_report_agreement_end_to_end(mimic_tree, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(report_agreement, "rules_backend", PinnedRules)
    fake = FakeChatServer(fake_llm)
    out = tmp_path / "out" / "agreement.json"
    try:
        code = cli.main(["report-agreement", str(mimic_tree), "--llm-url", fake.url, "--llm-cache",
                         str(tmp_path / "cache"), "--max-examples", "3", "--json", str(out)])
        printed = capsys.readouterr().out
        requests = len(fake.requests)
        # a rerun is answered from the cache; only the failed report (never cached) asks again, with its retry
        assert cli.main(["report-agreement", str(mimic_tree), "--llm-url", fake.url, "--llm-cache",
                         str(tmp_path / "cache")]) == 1
        assert len(fake.requests) == requests + 2 and requests == (1 + 2 + 2 + 1) + (1 + 2 + 2) + 2
        assert capsys.readouterr().out.splitlines()[:10] == printed.splitlines()[:10]
    finally:
        fake.close()
    assert code == 1  # the third report failed in the llm backend
    lines = printed.splitlines()
    assert lines[:11] == [
        "reports: 3 (2 compared, 1 failed)",
        "findings: 4 matched, 1 only rules, 1 only llm",
        f"{'field':<22}{'agree':>7}{'total':>7}{'rate':>9}",
        f"{'found':<22}{4:>7}{6:>7}{'66.7%':>9}",
        f"{'lesion_type':<22}{3:>7}{4:>7}{'75.0%':>9}",
        f"{'presence':<22}{4:>7}{4:>7}{'100.0%':>9}",
        f"{'certainty':<22}{3:>7}{4:>7}{'75.0%':>9}",
        f"{'side':<22}{4:>7}{4:>7}{'100.0%':>9}",
        f"{'locations':<22}{3:>7}{4:>7}{'75.0%':>9}",
        f"{'predicted_lesion_type':<22}{3:>7}{4:>7}{'75.0%':>9}",
        "disagreements: 6 (3 shown)",
    ]
    first = str(mimic_tree / "p10" / "p10000001" / "s50000001.txt")
    assert lines[11:14] == [
        f"  {first} sentence 2 [certainty] rules=tentative llm=definitive: Possible small left pleural effusion.",
        f"  {first} sentence 2 [locations] rules=[left lung] llm=[left lung base]: Possible small left pleural "
        "effusion.",
        f"  {mimic_tree / 'p10' / 'p10000002' / 's50000002.txt'} sentence 1 [lesion_type] rules=consolidation "
        "llm=pneumonia: Right upper lobe consolidation.",
    ]
    assert lines[14] == "failed: 1"
    assert lines[15].startswith(f"  {mimic_tree / 'p10' / 'p10000003' / 's50000003.txt'} (llm): LLM answer "
                                "unparseable after one retry")
    result = json.loads(out.read_text())
    assert (result["compared"], result["failed"], result["matched"]) == (2, 1, 4)
    assert [(d["field"], d["rules"], d["llm"]) for d in result["disagreements"][3:]] == [
        ("predicted_lesion_type", None, "pneumonia"), ("found", None, "nodule"), ("found", "effusion", None)]
    assert result["disagreements"][5]["sentence"] == "No pleural effusion."
    assert result["agreement"]["found"] == {"agree": 4, "total": 6, "rate": pytest.approx(4 / 6)}
    assert [report["study_id"] for report in result["reports"]] == ["50000001", "50000002"]
    assert result["reports"][0]["section"]["name"] == "findings"
    assert result["reports"][1]["llm"][0]["location_source"] == "report"
    assert result["failures"][0]["backend"] == "llm" and result["failures"][0]["file"].endswith("s50000003.txt")


def test_report_agreement_on_listed_files_and_option_errors(mimic_tree, tmp_path, capsys):
    fake = FakeChatServer(fake_llm)
    one = mimic_tree / "p10" / "p10000002" / "s50000002.txt"
    try:
        assert cli.main(["report-agreement", str(one), str(tmp_path / "missing.txt"), "--llm-url", fake.url,
                         "--max-examples", "0"]) == 1
    finally:
        fake.close()
    lines = capsys.readouterr().out.splitlines()
    # the real rules backend: whatever it finds, the consolidation of sentence 1 pairs with the llm's
    assert lines[0] == "reports: 2 (1 compared, 1 failed)"
    matched = int(lines[1].split()[1])
    assert lines[1].startswith("findings: ") and matched >= 1 and lines[1].endswith("1 only llm")
    assert any(line.startswith("disagreements: ") and line.endswith("(0 shown)") for line in lines)
    assert any("missing.txt (read): cannot read" in line for line in lines)
    with pytest.raises(SystemExit):
        cli.main(["report-agreement", str(one)])  # one of --llm-url / --llm-model is required
    assert "one of the arguments --llm-model --llm-url is required" in capsys.readouterr().err
    assert cli.main(["report-agreement", str(one), "--llm-url", "http://10.1.2.3:8000"]) == 1
    assert "PhysioNet credentialed data use agreement" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["report-agreement", str(empty), "--llm-url", "http://127.0.0.1:9"]) == 1
    assert "no .txt report files" in capsys.readouterr().err
