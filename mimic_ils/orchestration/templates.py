"""Read an instruction-answer pair back through the paper's templates (Table 2), and Appendix C's rules.

``parse_pair`` recovers question type, polarity, target, locations, lesion and certainty from the exact strings;
the release importer uses it to derive the fields the authors' JSON does not carry, and the tests use it (with
``appendix_c_problems``) to check every pair of a built folder, the ``reasoning`` pairs included (their answers are
the reasoning templates, their instructions free text that must not name the target).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from mimic_ils import pairs as P
from mimic_ils.schema import HEART_LABEL, LESION_TYPES, LUNG_LABELS, MimicIlsError
from rosalia_hf.table2 import REASONING, parse_answer, parse_instruction

_PLACES = frozenset((*LUNG_LABELS, HEART_LABEL))
# the answer templates (rosalia_hf.table2.TEMPLATES) each question type may use, by polarity
_ANSWERS = {
    "basic": {"seg": "positive", "absent_in_location": "negative"},
    "global": {"located_in": "positive", "seg": "positive", "absent": "negative"},
    "lesion_inference": {"definitive": "positive", "tentative": "positive", "absent_in_location": "negative"},
}


@dataclass(frozen=True)
class ParsedPair:
    question_type: str
    polarity: str
    target: str
    lesion: str | None
    locations: tuple[str, ...]
    certainty: str | None


def parse_pair(instruction: str, answer: str) -> ParsedPair:
    """The fields a Table 2 pair carries in its text, read with ``rosalia_hf.table2``'s parsers and checked against
    the dataset's vocabulary (seven lesion types, lung labels, heart); raises MimicIlsError for a string off the
    templates, an unknown name, or an answer that does not fit its instruction."""
    asked = parse_instruction(instruction)
    if asked is None or asked.target not in LESION_TYPES or not set(asked.locations) <= _PLACES:
        raise MimicIlsError(f"instruction {instruction!r} matches no Table 2 template")
    said = parse_answer(answer) if answer == " ".join(answer.split()) else None
    polarity = _ANSWERS[asked.question_type].get(said.template) if said is not None else None
    if polarity is None or not _answer_fits(asked, said):
        raise MimicIlsError(f"answer {answer!r} does not fit the template of {instruction!r}")
    if asked.question_type == "lesion_inference":
        lesion = said.lesion if polarity == "positive" else None
        return ParsedPair(asked.question_type, polarity, asked.target, lesion, asked.locations, said.certainty)
    locations = said.locations if asked.question_type == "global" else asked.locations
    return ParsedPair(asked.question_type, polarity, asked.target, asked.target, locations, None)


def _answer_fits(asked, said) -> bool:
    """The answer's variables agree with the instruction's (same target and places where the template repeats
    them) and name only known lesions and places."""
    if said.template in ("absent_in_location", "absent"):
        return said.target == asked.target and (said.template == "absent" or said.locations == asked.locations)
    if said.template in ("definitive", "tentative"):
        return said.lesion in LESION_TYPES
    return set(said.locations) <= _PLACES


def appendix_c_problems(rows: Iterable[dict], config: P.PairConfig | None = None) -> list[str]:
    """Violations of Table 2 / Appendix C among pair rows (dicts with the ``pairs`` config's fields, masks as
    ``mask_file_name`` or ``mask``) built with the pair rules ``config`` (default: the paper's). An empty list means
    every rule holds."""
    rows = list(rows)
    inference_lesions = (config or P.PairConfig()).opacity_inference_types
    problems = []
    table2_masks = {(row["dicom_id"], row["lesion"], row.get("mask_file_name")) for row in rows
                    if row["polarity"] == "positive" and row["question_type"] != REASONING}
    for row in rows:
        check = (_reasoning_problems(row, table2_masks) if row["question_type"] == REASONING
                 else _row_problems(row, inference_lesions))
        problems += [f"{row['id']}: {problem}" for problem in check]
    # one negative per lesion type (and per target) in a study, the reasoning negatives counted apart
    negatives = Counter((row["study_id"], row["lesion"], row["question_type"] == REASONING) for row in rows
                        if row["polarity"] == "negative")
    problems += [f"{key}: {count} negatives of one lesion type" for key, count in negatives.items() if count > 1]
    targets = Counter((row["study_id"], row["target"], row["question_type"] == REASONING) for row in rows
                      if row["polarity"] == "negative")
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


def _reasoning_problems(row: dict, table2_masks: set[tuple]) -> list[str]:
    """A reasoning row: its answer one of the reasoning templates, agreeing with its fields; its instruction free of
    its target's name and synonyms; a positive's mask that of a Table 2 positive of the same image and lesion."""
    from mimic_ils.reasoning import named_term

    said = parse_answer(row["answer"])
    polarity = {"reasoning_definitive": "positive", "reasoning_tentative": "positive",
                "reasoning_absent_in_location": "negative", "reasoning_absent": "negative"}.get(
                    said.template if said else None)
    if polarity is None:
        return [f"answer {row['answer']!r} matches no reasoning template"]
    problems = []
    if polarity != row["polarity"]:
        problems.append(f"polarity {row['polarity']!r} but the answer says {polarity!r}")
    if not said.lesion == row["lesion"] == row["target"] or row["lesion"] not in LESION_TYPES:
        problems.append(f"lesion {row['lesion']!r} / target {row['target']!r} but the answer says {said.lesion!r}")
    if tuple(row["locations"]) != said.locations:
        problems.append(f"locations {row['locations']} but the answer says {list(said.locations)}")
    if said.certainty != (row["certainty"] if polarity == "positive" else None):
        problems.append(f"certainty {row['certainty']!r} but the answer says {said.certainty!r}")
    term = named_term(row["instruction"], row["lesion"]) if row["lesion"] in LESION_TYPES else None
    if term:
        problems.append(f"the instruction names its target ({term!r})")
    has_mask = bool(row.get("mask_file_name") or row.get("mask"))
    if has_mask != (polarity == "positive"):
        problems.append("positive pairs need a mask and negatives must have none")
    elif has_mask and "mask_file_name" in row and (row["dicom_id"], row["lesion"], row["mask_file_name"]) \
            not in table2_masks:
        problems.append("its mask is no Table 2 positive's of the same image and lesion")
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
