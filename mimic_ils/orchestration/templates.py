"""Read an instruction-answer pair back through the paper's templates (Table 2), and Appendix C's rules.

``parse_pair`` recovers question type, polarity, target, locations, lesion and certainty from the exact strings;
the release importer uses it to derive the fields the authors' JSON does not carry, and the tests use it (with
``appendix_c_problems``) to check every pair of a built folder.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from mimic_ils import pairs as P
from mimic_ils.pairs import join_locations, split_locations
from mimic_ils.schema import HEART_LABEL, LESION_TYPES, LUNG_LABELS, MimicIlsError

_LOCATION = "|".join(re.escape(label) for label in sorted((*LUNG_LABELS, HEART_LABEL), key=len, reverse=True))
_LOCATIONS = rf"(?P<loc>(?:{_LOCATION})(?:(?:, | and )(?:{_LOCATION}))*)"
_TARGET = rf"(?P<target>{'|'.join(LESION_TYPES)})"
_LESION = rf"(?P<lesion>{'|'.join(LESION_TYPES)})"



def _pattern(template: str, **groups: str) -> re.Pattern:
    """A regex that matches ``template`` (a ``str.format`` string of ``mimic_ils.pairs``) with named groups."""
    text = re.escape(template)
    for name, group in groups.items():
        text = text.replace(re.escape("{" + name + "}"), group)
    return re.compile(text)


_INSTRUCTIONS = (
    ("lesion_inference", _pattern(P.INFERENCE_INSTRUCTION, location=_LOCATIONS)),
    ("basic", _pattern(P.BASIC_INSTRUCTION, target=_TARGET, location=_LOCATIONS)),
    ("global", _pattern(P.GLOBAL_INSTRUCTION, target=_TARGET)),
)
_INFERENCE_ANSWERS = (("definitive", _pattern(P.INFERENCE_DEFINITIVE, lesion=_LESION)),
                      ("tentative", _pattern(P.INFERENCE_TENTATIVE, lesion=_LESION)))
_GLOBAL_POSITIVE = _pattern(P.GLOBAL_POSITIVE, location=_LOCATIONS)


@dataclass(frozen=True)
class ParsedPair:
    question_type: str
    polarity: str
    target: str
    lesion: str | None
    locations: tuple[str, ...]
    certainty: str | None


def parse_pair(instruction: str, answer: str) -> ParsedPair:
    """The fields a Table 2 pair carries in its text; raises MimicIlsError for a string off the templates."""
    for question_type, pattern in _INSTRUCTIONS:
        match = pattern.fullmatch(instruction)
        if match:
            groups = match.groupdict()
            target = groups.get("target") or "opacity"
            return _parse_answer(question_type, target, split_locations(groups.get("loc")), answer, instruction)
    raise MimicIlsError(f"instruction {instruction!r} matches no Table 2 template")


def _parse_answer(question_type: str, target: str, locations: tuple[str, ...], answer: str, instruction: str):
    place = join_locations(locations) if locations else ""
    if question_type == "lesion_inference":
        for certainty, pattern in _INFERENCE_ANSWERS:
            match = pattern.fullmatch(answer)
            if match:
                return ParsedPair(question_type, "positive", target, match["lesion"], locations, certainty)
        if answer == P.INFERENCE_NEGATIVE.format(location=place):
            return ParsedPair(question_type, "negative", target, None, locations, None)
    elif question_type == "basic":
        if answer == P.BASIC_POSITIVE:
            return ParsedPair(question_type, "positive", target, target, locations, None)
        if answer == P.BASIC_NEGATIVE.format(target=target, location=place):
            return ParsedPair(question_type, "negative", target, target, locations, None)
    else:
        match = _GLOBAL_POSITIVE.fullmatch(answer)
        if match or answer == P.BASIC_POSITIVE:
            return ParsedPair(question_type, "positive", target, target, split_locations(match and match["loc"]), None)
        if answer == P.GLOBAL_NEGATIVE.format(target=target):
            return ParsedPair(question_type, "negative", target, target, (), None)
    raise MimicIlsError(f"answer {answer!r} does not fit the template of {instruction!r}")


def appendix_c_problems(rows: Iterable[dict], config: P.PairConfig | None = None) -> list[str]:
    """Violations of Table 2 / Appendix C among pair rows (dicts with the ``pairs`` config's fields, masks as
    ``mask_file_name`` or ``mask``) built with the pair rules ``config`` (default: the paper's). An empty list means
    every rule holds."""
    rows = list(rows)
    inference_lesions = (config or P.PairConfig()).opacity_inference_types
    problems = []
    for row in rows:
        problems += [f"{row['id']}: {problem}" for problem in _row_problems(row, inference_lesions)]
    negatives = Counter((row["study_id"], row["lesion"]) for row in rows if row["polarity"] == "negative")
    problems += [f"{key}: {count} negatives of one lesion type" for key, count in negatives.items() if count > 1]
    targets = Counter((row["study_id"], row["target"]) for row in rows if row["polarity"] == "negative")
    problems += [f"{key}: {count} negatives of one target" for key, count in targets.items() if count > 1]
    problems += _contradictions(rows)
    return problems


def _contradictions(rows: list[dict]) -> list[str]:
    """Negatives that deny, in the same image, a target at a place one of the image's positives covers."""
    shown: dict[tuple[str, str], list[tuple[str, ...]]] = {}
    for row in rows:
        if row["polarity"] == "positive":
            shown.setdefault((row["dicom_id"], row["target"]), []).append(tuple(row["locations"]))
    problems = []
    for row in rows:
        places = shown.get((row["dicom_id"], row["target"]))
        if row["polarity"] != "negative" or not places:
            continue
        if row["question_type"] == "global" or any(P.places_overlap(a, b) for a in row["locations"]
                                                   for covered in places for b in covered):
            problems.append(f"{row['id']}: denies {row['target']} where a positive of its image shows it")
    return problems


def _row_problems(row: dict, inference_lesions: tuple[str, ...]) -> list[str]:
    try:
        parsed = parse_pair(row["instruction"], row["answer"])
    except MimicIlsError as error:
        return [str(error)]
    problems = []
    for name in ("question_type", "polarity", "target"):
        if getattr(parsed, name) != row[name]:
            problems.append(f"{name} {row[name]!r} but the text says {getattr(parsed, name)!r}")
    if parsed.locations and tuple(row["locations"]) != parsed.locations:
        problems.append(f"locations {row['locations']} but the text says {list(parsed.locations)}")
    has_mask = bool(row.get("mask_file_name") or row.get("mask"))
    if has_mask != (row["polarity"] == "positive"):
        problems.append("positive pairs need a mask and negatives must have none")
    if row["lesion"] not in LESION_TYPES:
        problems.append(f"lesion {row['lesion']!r} is not one of the seven types")
    if row["lesion"] == "cardiomegaly" and row["question_type"] != "global":
        problems.append("cardiomegaly pairs are global only")
    allowed = inference_lesions if row["polarity"] == "positive" else ("opacity",)  # Table 9: opacity only
    if row["question_type"] == "lesion_inference" and row["lesion"] not in allowed:
        problems.append(f"lesion inference about {row['lesion']!r}")
    if parsed.lesion and row["question_type"] == "lesion_inference" and parsed.lesion != row["lesion"]:
        problems.append(f"answer infers {parsed.lesion!r} but lesion is {row['lesion']!r}")
    if parsed.certainty and parsed.certainty != row["certainty"]:
        problems.append(f"certainty {row['certainty']!r} but the answer says {parsed.certainty!r}")
    return problems
