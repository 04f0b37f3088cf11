"""Sectioning as the official MIMIC-CXR tool does it, the paper's section choice, sentence splitting, file reading."""

from __future__ import annotations

import pytest

from mimic_ils.report import choose_section, split_sections, split_sentences
from mimic_ils.report.sections import (
    MAX_REPORT_CHARS,
    decode_report_bytes,
    normalize_section_name,
    read_report_file,
    special_cases,
)
from mimic_ils.schema import ReportError, Section


def mimic(*lines: str) -> str:
    """A report in MIMIC-CXR's file layout: every line starts with a space, blank lines hold one space."""
    return "                                 FINAL REPORT\n" + "\n".join(f" {line}" for line in lines) + "\n"


FULL = mimic(
    "EXAMINATION:  CHEST (PA AND LAT)", "", "INDICATION:  ___F with cough.", "", "COMPARISON:  None.", "",
    "FINDINGS: ", "", "There is a small left pleural effusion.  No pneumothorax.", "The heart size is normal.", "",
    "IMPRESSION: ", "", "Small left effusion.",
)


def test_official_sections_of_a_full_report():
    sectioned = split_sections(FULL)
    assert sectioned.names == ("preamble", "examination", "indication", "comparison", "findings", "impression")
    assert sectioned.last("indication").strip() == "___F with cough."
    expected = "There is a small left pleural effusion. No pneumothorax. The heart size is normal."
    assert sectioned.last("findings").split() == expected.split()
    assert sectioned.starts[0] == 0 and FULL[sectioned.starts[-1]:].strip() == "Small left effusion."
    assert "FINAL REPORT" in sectioned.texts[0]


@pytest.mark.parametrize(("header", "expected"), [
    ("FINDINGS", "findings"), ("IMPRESSION", "impression"), ("CONCLUSION", "impression"),
    ("FINDINGS AND IMPRESSION", "impression"), ("FINDINGS/IMPRESSION", "impression"), ("IMPRESSON", "impression"),
    ("FINDNGS", "findings"), ("CHEST, TWO VIEWS", "findings"), ("PA AND LATERAL VIEWS OF THE CHEST", "findings"),
    ("PORTABLE AP", "findings"), ("REASON FOR EXAM", "indication"), ("CLINICAL HISTORY", "history"),
    ("FINAL IMPRESSION", "impression"), ("COMPARISONS", "comparison"), ("WET READ", "wet read"),
    ("RECOMMENDATION(S)", "recommendations"), ("NOTIFICATION", "notification"), ("TECHNIQUE", "technique"),
])
def test_header_normalisation(header, expected):
    assert normalize_section_name(header) == expected


def test_findings_preferred_over_impression():
    assert choose_section(FULL) == Section("findings", "There is a small left pleural effusion.  No pneumothorax.\n"
                                                       " The heart size is normal.")


def test_impression_when_findings_missing_and_conclusion_is_impression():
    report = mimic("EXAMINATION:  CHEST", "", "CONCLUSION:  Right lower lobe pneumonia.")
    assert choose_section(report) == Section("impression", "Right lower lobe pneumonia.")


def test_last_section_of_a_name_wins():
    report = mimic("FINDINGS:  First findings.", "", "IMPRESSION:  Effusion.", "", "FINDINGS:  Second findings.")
    assert choose_section(report).text == "Second findings."


def test_empty_findings_dropped_and_header_line_skipped():
    # "CHEST, PA LATERAL:" is a view header (findings); the parser skips to the end of the next line, so the blank
    # line makes it empty and it is dropped, as in the official tool; INDICATION is still found.
    report = mimic("CHEST, PA LATERAL:", "", "INDICATION:  Cough.", "", "IMPRESSION:  No acute process.")
    sectioned = split_sections(report)
    assert "findings" not in sectioned.names and "indication" in sectioned.names
    assert choose_section(report) == Section("impression", "No acute process.")


def test_last_paragraph_only_without_findings_and_impression():
    report = mimic("EXAMINATION:  CHEST", "", "COMPARISON:  ___.", "", "Bibasilar atelectasis.", "No effusion.")
    sectioned = split_sections(report)
    assert sectioned.names[-1] == "last_paragraph"
    assert sectioned.last("comparison").strip() == "___."
    assert choose_section(report) == Section("last_paragraph", "Bibasilar atelectasis.\n No effusion.")
    assert "last_paragraph" not in split_sections(FULL).names


def test_header_free_report_is_full_report_then_last_paragraph():
    sectioned = split_sections("Portable chest.\n \nLeft lower lobe opacity.")
    assert sectioned.names == ("full report", "last_paragraph")
    assert choose_section("Portable chest.\n \nLeft lower lobe opacity.").text == "Left lower lobe opacity."


def test_hand_typed_headers_without_leading_space_are_accepted():
    assert choose_section("FINDINGS: Small right effusion.\nIMPRESSION: Effusion.") == \
        Section("findings", "Small right effusion.")


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty report"), ("   \n \n", "empty report"),
    (mimic("EXAMINATION:  CHEST", "INDICATION:  Cough."), "no findings, impression or last paragraph"),
    ("x" * (MAX_REPORT_CHARS + 1), "too large"),
])
def test_unusable_reports_raise_with_reason(text, reason):
    with pytest.raises(ReportError, match=reason):
        choose_section(text)


def test_special_case_tables_are_complete():
    names, slices = special_cases()
    assert len(names) == 23 and len(slices) == 31
    assert slices["s50525523"] == (201, 349) and names["s50913680"] == "recommendations"
    assert sum(1 for start, end in slices.values() if start == end == 0) == 8


@pytest.mark.parametrize("study_id", ["50525523", "s50525523"])
def test_special_case_character_slice(study_id):
    text = "".join(chr(ord("a") + i % 26) for i in range(400))
    assert choose_section(text, study_id) == Section("impression", text[201:349])
    with pytest.raises(ReportError, match="no findings"):  # any other id: normal sectioning, which finds nothing
        choose_section(text, "59999999")


def test_special_case_without_findings_raises():
    with pytest.raises(ReportError, match="special case s58235663"):
        choose_section(FULL, "58235663")


def test_special_case_renamed_section():
    report = mimic("EXAMINATION:  CHEST", "", "IMPRESSION:  See below.", "",
                   "RECOMMENDATION(S):  Small left effusion.")
    assert choose_section(report, "50913680") == Section("impression", "Small left effusion.")
    assert choose_section(report) == Section("impression", "See below.")
    assert choose_section(FULL, "50913680").name == "findings"  # findings still win when present


@pytest.mark.parametrize(("text", "sentences"), [
    ("Small effusion.  No pneumothorax.", ["Small effusion.", "No pneumothorax."]),
    ("1. Small effusion. 2. No pneumothorax.", ["1. Small effusion.", "2. No pneumothorax."]),
    ("There is a\n 2.5 cm nodule. Dr. ___ was notified.", ["There is a 2.5 cm nodule.", "Dr. ___ was notified."]),
    ("Is there an effusion? No.\n \nLungs clear", ["Is there an effusion?", "No.", "Lungs clear"]),
    ("", []),
])
def test_split_sentences(text, sentences):
    assert split_sentences(text) == sentences


def test_read_report_file(tmp_path):
    good = tmp_path / "s1.txt"
    good.write_bytes("\ufeff FINDINGS: Effusion.\n".encode())
    assert read_report_file(good) == " FINDINGS: Effusion.\n"
    bad = tmp_path / "s2.txt"
    bad.write_bytes(b" FINDINGS: caf\xe9\n")
    with pytest.raises(ReportError, match=r"not UTF-8 text \(byte 0xe9 at offset 14\)"):
        read_report_file(bad)
    with pytest.raises(ReportError, match="cannot read report"):
        read_report_file(tmp_path / "missing.txt")
    with pytest.raises(ReportError, match="too large"):
        decode_report_bytes(b"a" * (MAX_REPORT_CHARS * 4 + 1))
