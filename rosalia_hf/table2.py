"""Table 2 of the paper, once: the instruction and answer templates of MIMIC-ILS, rendered and parsed back.

Standard library only, imported without torch. Pair generation (``mimic_ils.pairs``) renders these strings, the
release importer (``mimic_ils.orchestration.templates``) parses pairs back with :func:`parse_instruction` and
:func:`parse_answer`, and the metric (``metrics/ils``, ``rosalia_hf.ils_scores``) scores answers with them.

The three instruction forms::

    basic               "Segment the {target} in the {location}."
    global              "Segment the {target}."
    lesion_inference    "Segment the opacity in the {location} and predict its type."

The six answer forms, by template name::

    seg                 "[SEG]"                                          basic, positive
    absent_in_location  "[SEG] There is no {target} in the {location}."  basic and lesion inference, negative
    located_in          "[SEG] It is located in the {location}."         global, positive
    absent              "[SEG] There is no {target}."                    global, negative
    definitive          "[SEG] It is highly suggestive of {lesion}."     lesion inference, positive, definitive
    tentative           "[SEG] It possibly reflects {lesion}."           lesion inference, positive, tentative

``{location}`` is one or more lung labels (or "heart" for cardiomegaly) joined as "right lung base and left lung
base" or "a, b and c"; the parser splits on both separators. Matching is exact: case, articles and the
final period count, and only whitespace is normalised (runs of spaces/newlines read as one space, as the authors'
evaluation does), so a paraphrase parses to ``None``.

Beyond the paper, the ``reasoning`` question type (``mimic_ils.reasoning``; ``docs/reasoning.md``): its instructions
are free text that never names the target, its answers are fixed and parseable::

    reasoning_definitive          "[SEG] It is consistent with {lesion}, located in the {location}. {reason}"
    reasoning_tentative           "[SEG] It possibly reflects {lesion}, located in the {location}. {reason}"
    reasoning_absent_in_location  "[SEG] There is no such finding: no {lesion} is seen in the {location}."
    reasoning_absent              "[SEG] There is no such finding: no {lesion} is seen."

``{reason}`` is one sentence of explanation (ending in a period). It is read back into ``ParsedAnswer.reason`` but
does not take part in the comparison: a reasoning answer is right when its template, lesion and locations are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SEG_TOKEN = "[SEG]"
BASIC_INSTRUCTION = "Segment the {target} in the {location}."
BASIC_POSITIVE = "[SEG]"
BASIC_NEGATIVE = "[SEG] There is no {target} in the {location}."
GLOBAL_INSTRUCTION = "Segment the {target}."
GLOBAL_POSITIVE = "[SEG] It is located in the {location}."
GLOBAL_NEGATIVE = "[SEG] There is no {target}."
INFERENCE_INSTRUCTION = "Segment the opacity in the {location} and predict its type."
INFERENCE_DEFINITIVE = "[SEG] It is highly suggestive of {lesion}."
INFERENCE_TENTATIVE = "[SEG] It possibly reflects {lesion}."
INFERENCE_NEGATIVE = "[SEG] There is no opacity in the {location}."
LESION_INFERENCE_TARGET = "opacity"
REASONING_DEFINITIVE = "[SEG] It is consistent with {lesion}, located in the {location}. {reason}"
REASONING_TENTATIVE = "[SEG] It possibly reflects {lesion}, located in the {location}. {reason}"
REASONING_NEGATIVE = "[SEG] There is no such finding: no {lesion} is seen in the {location}."
REASONING_GLOBAL_NEGATIVE = "[SEG] There is no such finding: no {lesion} is seen."
REASONING = "reasoning"  # the question type beyond Table 2
INSTRUCTIONS = {"basic": BASIC_INSTRUCTION, "global": GLOBAL_INSTRUCTION, "lesion_inference": INFERENCE_INSTRUCTION}
TEMPLATES = {
    "seg": BASIC_POSITIVE,
    "absent_in_location": BASIC_NEGATIVE,
    "located_in": GLOBAL_POSITIVE,
    "absent": GLOBAL_NEGATIVE,
    "definitive": INFERENCE_DEFINITIVE,
    "tentative": INFERENCE_TENTATIVE,
    "reasoning_definitive": REASONING_DEFINITIVE,
    "reasoning_tentative": REASONING_TENTATIVE,
    "reasoning_absent_in_location": REASONING_NEGATIVE,
    "reasoning_absent": REASONING_GLOBAL_NEGATIVE,
}
# Tried in this order: "There is no X in the Y." must be read as absent_in_location before the looser "absent", and
# the reasoning forms ("There is no such finding: ...") before both.
_PATTERNS = (
    ("seg", re.compile(r"\[SEG\]")),
    ("reasoning_definitive", re.compile(
        r"\[SEG\] It is consistent with (?P<lesion>[^,.]+), located in the (?P<location>[^.]+)\. "
        r"(?P<reason>[^\[]+\.)")),
    ("reasoning_tentative", re.compile(
        r"\[SEG\] It possibly reflects (?P<lesion>[^,.]+), located in the (?P<location>[^.]+)\. "
        r"(?P<reason>[^\[]+\.)")),
    ("reasoning_absent_in_location", re.compile(
        r"\[SEG\] There is no such finding: no (?P<lesion>[^.]+?) is seen in the (?P<location>[^.]+)\.")),
    ("reasoning_absent", re.compile(r"\[SEG\] There is no such finding: no (?P<lesion>[^.]+?) is seen\.")),
    ("absent_in_location", re.compile(r"\[SEG\] There is no (?P<target>[^.]+?) in the (?P<location>[^.]+)\.")),
    ("located_in", re.compile(r"\[SEG\] It is located in the (?P<location>[^.]+)\.")),
    ("absent", re.compile(r"\[SEG\] There is no (?P<target>[^.]+)\.")),
    ("definitive", re.compile(r"\[SEG\] It is highly suggestive of (?P<lesion>[^.]+)\.")),
    ("tentative", re.compile(r"\[SEG\] It possibly reflects (?P<lesion>[^.]+)\.")),
)
_LOCATION_SEPARATOR = re.compile(r", (?:and )?| and ")
# Tried in this order: the lesion-inference form must be read before the basic one it also matches.
_INSTRUCTION_PATTERNS = (
    ("lesion_inference", re.compile(r"Segment the opacity in the (?P<location>[^.]+) and predict its type\.")),
    ("basic", re.compile(r"Segment the (?P<target>[^.]+?) in the (?P<location>[^.]+)\.")),
    ("global", re.compile(r"Segment the (?P<target>[^.]+)\.")),
)


@dataclass(frozen=True)
class ParsedAnswer:
    """An answer read back into its template name and bracketed variables (unused variables stay empty)."""

    template: str
    target: str | None = None
    locations: tuple[str, ...] = ()
    lesion: str | None = None
    reason: str | None = field(default=None, compare=False)  # a reasoning answer's explanation, not scored

    @property
    def certainty(self) -> str | None:
        return self.template.removeprefix("reasoning_") if self.template.removeprefix("reasoning_") in (
            "definitive", "tentative") else None


def join_locations(locations: tuple[str, ...] | list[str]) -> str:
    """``("right lung base", "left lung base")`` -> ``"right lung base and left lung base"``; three or more read
    ``"a, b and c"`` (as ``mimic_ils.pairs`` writes them)."""
    if not locations:
        raise ValueError("a location list needs at least one location")
    locations = tuple(locations)
    return locations[0] if len(locations) == 1 else f"{', '.join(locations[:-1])} and {locations[-1]}"


def split_locations(text: str | None) -> tuple[str, ...]:
    """Inverse of :func:`join_locations`; also accepts ``"a, b and c"``; None or "" -> ``()``."""
    return tuple(part.strip() for part in _LOCATION_SEPARATOR.split(text) if part.strip()) if text else ()


@dataclass(frozen=True)
class ParsedInstruction:
    """An instruction read back: its question type, target ("opacity" for lesion inference) and locations."""

    question_type: str
    target: str
    locations: tuple[str, ...] = ()


def parse_instruction(text: str) -> ParsedInstruction | None:
    """Question type, target and locations of a Table 2 instruction, or None for any other text. Exact match, as
    :func:`parse_answer`; the values are not checked against a vocabulary (the caller knows its own)."""
    for question_type, pattern in _INSTRUCTION_PATTERNS:
        match = pattern.fullmatch(text)
        if match is not None:
            groups = match.groupdict()
            target = groups.get("target") or LESION_INFERENCE_TARGET
            return ParsedInstruction(question_type, target, split_locations(groups.get("location")))
    return None


def parse_answer(text: str | None) -> ParsedAnswer | None:
    """Template name and variables of an answer, or None when it matches no template exactly (a paraphrase)."""
    if text is None:
        return None
    text = " ".join(text.split())  # decoding artefacts (newlines, double spaces) are not paraphrases
    for name, pattern in _PATTERNS:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        groups = match.groupdict()
        location = groups.get("location")
        return ParsedAnswer(
            template=name,
            target=groups.get("target"),
            locations=split_locations(location) if location else (),
            lesion=groups.get("lesion"),
            reason=groups.get("reason"),
        )
    return None


def expected_template(question_type: str, polarity: str, certainty: str | None = None, located: bool = True) -> str:
    """The template a reference answer of this question type and polarity uses (Table 2; ``reasoning`` beyond it,
    whose negatives read ``reasoning_absent`` when not ``located``)."""
    question_type = question_type.replace(" ", "_")
    if question_type == REASONING:
        if polarity == "negative":
            return "reasoning_absent_in_location" if located else "reasoning_absent"
        if certainty not in ("definitive", "tentative"):
            raise ValueError(f"a positive reasoning answer needs certainty definitive or tentative: {certainty!r}")
        return f"reasoning_{certainty}"
    if polarity == "negative":
        return {"basic": "absent_in_location", "global": "absent", "lesion_inference": "absent_in_location"}[
            question_type
        ]
    if question_type == "lesion_inference":
        if certainty not in ("definitive", "tentative"):
            raise ValueError(
                f"a positive lesion-inference answer needs certainty definitive or tentative: {certainty!r}"
            )
        return certainty
    return {"basic": "seg", "global": "located_in"}[question_type]


# the explanation a reasoning answer rendered from structured variables carries (it is not scored)
UNSTATED_REASON = "The mask shows the finding."


def render_answer(
    question_type: str,
    polarity: str,
    *,
    target: str | None = None,
    locations: tuple[str, ...] | list[str] = (),
    lesion: str | None = None,
    certainty: str | None = None,
    reason: str | None = None,
) -> str:
    """The reference answer text from the structured variables of a pair (Table 2, and the reasoning forms).

    ``target`` is what the instruction names ("opacity" for lesion inference), ``lesion`` the inferred type;
    ``reason`` the explanation of a positive reasoning answer (:data:`UNSTATED_REASON` when None).
    """
    template = expected_template(question_type, polarity, certainty, located=bool(locations))
    location = join_locations(tuple(locations)) if "{location}" in TEMPLATES[template] else ""
    if "{target}" in TEMPLATES[template] and not target:
        raise ValueError(f"template {template!r} needs a target")
    if "{lesion}" in TEMPLATES[template] and not lesion:
        raise ValueError(f"template {template!r} needs a lesion")
    return TEMPLATES[template].format(target=target, location=location, lesion=lesion,
                                      reason=reason or UNSTATED_REASON)


def parsed_reference(
    question_type: str,
    polarity: str,
    *,
    target: str | None = None,
    locations: tuple[str, ...] | list[str] = (),
    lesion: str | None = None,
    certainty: str | None = None,
) -> ParsedAnswer:
    """The :class:`ParsedAnswer` a correct prediction must equal, built from structured variables."""
    variables = {"target": target, "locations": locations, "lesion": lesion, "certainty": certainty}
    text = render_answer(question_type, polarity, **variables)
    parsed = parse_answer(text)
    if parsed is None:  # a variable that contains a period, e.g. "lung."; the template cannot carry it
        raise ValueError(f"structured variables render to an unparsable answer: {text!r}")
    return parsed


def ignoring_certainty(parsed: ParsedAnswer | None) -> tuple | None:
    """Key that equates the definitive and tentative forms (the authors' lesion-only score of lesion inference)."""
    if parsed is None:
        return None
    template = parsed.template
    if template.removeprefix("reasoning_") in ("definitive", "tentative"):
        template = "reasoning_lesion" if template.startswith("reasoning_") else "lesion"
    return (template, parsed.target, parsed.locations, parsed.lesion)
