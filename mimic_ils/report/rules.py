"""The ``rules`` report backend: lexicon matching, NegEx-style negation and uncertainty scopes, location phrases.

Per sentence of the chosen section (1-based index, :func:`mimic_ils.report.sections.split_sentences`):

1. device phrases are masked (devices are never findings); finding terms (:mod:`lexicon`) and heart-size statements
   ("the heart is mildly enlarged", "heart size is normal") become mentions;
2. the sentence is cut into clauses (";", "but", "however", "although", ", there is" ...); inside a clause a
   negation cue before a mention ("no", "without", "free of", "no evidence of ... or ...") or after it ("has
   resolved", "is no longer seen") makes it negative unless a termination word ("but", "persistent", "unchanged",
   "there is") stands between; pseudo-negations ("no change in", "cannot be excluded") are not negations;
3. uncertainty cues make a mention tentative: forward cues ("possible", "likely", "may represent") reach the
   mentions after them, backward cues ("... cannot be excluded", "... is likely", "... is suspected") those before
   them, "versus" both;
4. "X likely represents / reflects / concerning for Y" folds the lesion Y into X's ``predicted_lesion_type``
   (Y and any "or Z" alternatives are not separate findings; also the appositive "opacity, atelectasis versus
   pneumonia") and Y becomes the finding's normalised
   ``lesion_type``: the lesion the report infers (``entity`` stays X, e.g. "opacity");
5. each mention takes the location phrases of its own segment (the clause cut at ",", "and", "or", "with"),
   mentions with none that are listed before a located one share its place ("effusion and atelectasis at the
   left base"), and a place said in a segment without a finding goes to the next finding ("findings in the left
   upper lobe are consistent with pneumonia", "in the right base, there is atelectasis"); phrases map to lung
   labels through :mod:`locations` (findings of the heart, hila, mediastinum ... keep their phrase but map to no
   lung label).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mimic_ils.report import lexicon
from mimic_ils.report.locations import NON_LUNG_PATTERN, LocationSpan, find_location_spans, labels_for_spans
from mimic_ils.report.sections import split_sentences
from mimic_ils.schema import Finding, Section

# Findings whose place is not in the lung whatever side word stands next to them.
NON_LUNG_ENTITIES = frozenset({
    "cardiomegaly", "pericardial effusion", "hilar enlargement", "widened mediastinum", "pneumomediastinum",
    "hernia", "free air", "degenerative changes", "aortic tortuosity", "soft tissue edema", "subcutaneous emphysema",
    "lymphadenopathy", "fracture", "pulmonary hypertension",
})
_FOLDABLE_CUE = re.compile(
    r"(?<![\w-])(?:represents?|representing|reflects?|reflecting|likely|probably|possibly|presumably|perhaps|"
    r"concerning for|concern for|suspicious for|suggestive of|compatible with|consistent with|worrisome for|"
    r"due to|secondary to|may be|could be|might be|may relate to|related to|indicating|suggesting|"
    r"raising concern for|which may|which could|which is likely)(?![\w-])"
)
_ALTERNATIVE = re.compile(r"^[\s,]*(?:or|versus|vs\.?|and/or)\s+(?:\w+\s+){0,3}$")
_COORDINATOR = re.compile(
    r",|(?<![\w-])(?:and|or|(?<!consistent )(?<!compatible )with|as well as|along with|plus|versus|vs)(?![\w-])"
)
_CONJUNCTION = re.compile(r"(?<![\w-])(?:and|or|with|as well as|along with|plus|but)(?![\w-])")
_BACKWARD_UNCERTAINTY = re.compile(
    r"(?<![\w-])(?:(?:is|are|be|was|were|remains?)\s+(?:(?:also|still|more|most|less|quite|very|now|felt|thought)\s+)?"
    r"(?:possible|likely|probable|suspected|questionable|"
    r"favored|considered|not excluded)|cannot be (?:entirely |completely |fully )?(?:excluded|ruled out)|"
    r"can ?not (?:exclude|rule out)|(?:could|may|might) (?:also )?be present|difficult to (?:exclude|rule out)|"
    r"not (?:be )?(?:entirely |completely )?(?:excluded|ruled out)|unlikely|versus|vs)(?![\w-])"
)
_BOTH_WAYS_UNCERTAINTY = re.compile(r"(?<![\w-])(?:versus|vs)(?![\w-])")
_MASK = "#"


@dataclass
class Mention:
    """One finding mention in a lower-cased sentence; filled in step by step."""

    entity: str
    start: int
    end: int
    forced_presence: str | None = None
    negative: bool = False
    tentative: bool = False
    predicted: str | None = None
    folded: bool = False
    spans: list[LocationSpan] = field(default_factory=list)
    phrase_parts: list[tuple[int, int]] = field(default_factory=list)

    @property
    def lesion_type(self) -> str | None:
        return lexicon.ENTITY_LESION_TYPE.get(self.entity)


def _mask(text: str, spans: list[tuple[int, int]]) -> str:
    chars = list(text)
    for start, end in spans:
        chars[start:end] = _MASK * (end - start)
    return "".join(chars)


def _overlaps(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    return any(start < other_end and other_start < end for other_start, other_end in spans)


def find_mentions(text: str) -> list[Mention]:
    """Finding mentions in a lower-cased sentence whose device phrases are already masked, left to right."""
    mentions = [
        Mention(lexicon.TERM_TO_ENTITY[" ".join(match.group(0).split())], match.start(), match.end())
        for match in lexicon.FINDING_PATTERN.finditer(text)
    ]
    taken = [(mention.start, mention.end) for mention in mentions]
    for regex, presence in lexicon.HEART_SIZE:
        for match in regex.finditer(text):
            if _overlaps(match.start(), match.end(), taken):
                continue
            key_start = match.end() - len(match.group(0).split()[-1])
            mentions.append(Mention("cardiomegaly", key_start, match.end(), forced_presence=presence))
            taken.append((match.start(), match.end()))
    return sorted(mentions, key=lambda mention: mention.start)


def _clauses(text: str) -> list[tuple[int, int]]:
    bounds, start = [], 0
    for match in lexicon.CLAUSE_BREAK_PATTERN.finditer(text):
        bounds.append((start, match.start()))
        start = match.end()
    bounds.append((start, len(text)))
    return bounds


def _cues(regex: re.Pattern, text: str, clause: tuple[int, int],
          blocked: list[tuple[int, int]]) -> list[tuple[int, int]]:
    found = regex.finditer(text, clause[0], clause[1])
    return [(m.start(), m.end()) for m in found if not _overlaps(m.start(), m.end(), blocked)]


def _terminated(text: str, start: int, end: int) -> bool:
    return start < end and lexicon.SCOPE_TERMINATOR_PATTERN.search(text, start, end) is not None


def _apply_negation(text: str, clause: tuple[int, int], mentions: list[Mention]) -> None:
    entity_spans = [(m.start, m.end) for m in mentions]
    pseudo = _cues(lexicon.PSEUDO_NEGATION_PATTERN, text, clause, [])
    pre = _cues(lexicon.PRE_NEGATION_PATTERN, text, clause, pseudo + entity_spans)
    post = _cues(lexicon.POST_NEGATION_PATTERN, text, clause, pseudo + entity_spans)
    for mention in mentions:
        if mention.forced_presence:
            mention.negative = mention.forced_presence == "negative"
            continue
        before = any(end <= mention.start and not _terminated(text, end, mention.start) for _, end in pre)
        after = any(start >= mention.end and not _terminated(text, mention.end, start) for start, _ in post)
        mention.negative = before or after


def _apply_uncertainty(text: str, clause: tuple[int, int], mentions: list[Mention]) -> None:
    entity_spans = [(m.start, m.end) for m in mentions]
    backward = _cues(_BACKWARD_UNCERTAINTY, text, clause, entity_spans)
    forward = _cues(lexicon.UNCERTAINTY_PATTERN, text, clause, entity_spans + backward)
    both = _cues(_BOTH_WAYS_UNCERTAINTY, text, clause, entity_spans)
    for mention in mentions:
        mention.tentative = (
            any(cue_end <= mention.start for _, cue_end in forward)
            or any(cue_start >= mention.end for cue_start, _ in backward)
            or bool(both)
        )


def _fold_predictions(text: str, mentions: list[Mention], location_spans: list[LocationSpan]) -> None:
    located = [(span.start, span.end) for span in location_spans]
    head: Mention | None = None
    for left, right in zip(mentions, mentions[1:], strict=False):
        between = _mask(text, located)[left.end: right.start]
        if head is not None and left.folded and _ALTERNATIVE.match(between.replace(_MASK, "")):
            right.folded = True
            continue
        head = None
        if right.lesion_type is None or left.negative != right.negative:
            continue
        cue = _FOLDABLE_CUE.search(between)
        appositive = between.strip() == "," and left.lesion_type == "opacity" and right.tentative
        if appositive or cue and not _CONJUNCTION.search(between[: cue.start()].replace(_MASK, "")):
            left.predicted, right.folded, head = right.lesion_type, True, left
            left.tentative = left.tentative or right.tentative or bool(lexicon.UNCERTAINTY_PATTERN.search(between))


def _segments(text: str, clause: tuple[int, int], location_spans: list[LocationSpan]) -> list[tuple[int, int]]:
    masked = _mask(text, [(span.start, span.end) for span in location_spans])
    bounds, start = [], clause[0]
    for match in _COORDINATOR.finditer(masked, clause[0], clause[1]):
        bounds.append((start, match.start()))
        start = match.end()
    bounds.append((start, clause[1]))
    return bounds


def _assign_locations(text: str, clause: tuple[int, int], mentions: list[Mention], spans: list[LocationSpan],
                      non_lung: list[tuple[int, int]]) -> None:
    pending: list[Mention] = []
    previous: list[Mention] = []
    orphan: tuple[list[LocationSpan], list[tuple[int, int]]] = ([], [])
    for seg_start, seg_end in _segments(text, clause, spans):
        inside = [m for m in mentions if seg_start <= m.start < seg_end and not m.folded]
        own = [span for span in spans if seg_start <= span.start < seg_end]
        other = [part for part in non_lung if seg_start <= part[0] < seg_end]
        if not inside:
            if previous and own and all(m.spans for m in previous):  # "... right upper lobe and lingula"
                for mention in previous:
                    _add_places(mention, own, other)
                pending = []
                continue
            orphan = (own, other) if own or other else orphan
            pending, previous = [], []
            continue
        own, other = orphan[0] + own, orphan[1] + other  # "moderate right and small left effusions"
        orphan = ([], [])
        if not own and not other:
            pending.extend(inside)
            previous = inside
            continue
        # a place written after the finding is shared by the findings listed before it ("effusion and atelectasis
        # at the left base"); a place written before it ("possible left lower lobe pneumonia") is its own
        after = min(m.start for m in inside) < min([s.start for s in own] + [p[0] for p in other])
        for mention in (pending if after else []) + inside:
            _add_places(mention, own, other)
        pending, previous = [], inside


def _add_places(mention: Mention, own: list[LocationSpan], other: list[tuple[int, int]]) -> None:
    mention.spans = mention.spans + own
    mention.phrase_parts = sorted(mention.phrase_parts + [(span.start, span.end) for span in own] + other)


def _finding(sentence: str, index: int, mention: Mention) -> Finding:
    location = ", ".join(sentence[start:end].strip() for start, end in mention.phrase_parts) or None
    non_lung_place = any(NON_LUNG_PATTERN.fullmatch(sentence[s:e].lower().strip()) for s, e in mention.phrase_parts)
    lung_spans = [] if mention.entity in NON_LUNG_ENTITIES or (non_lung_place and all(
        span.side_only for span in mention.spans)) else mention.spans
    lesion_type = mention.predicted or mention.lesion_type
    return Finding(
        entity=mention.entity,
        sentence_index=index,
        presence="negative" if mention.negative else "positive",
        certainty="tentative" if mention.tentative else "definitive",
        location=location,
        predicted_lesion_type=mention.predicted,
        lesion_type=lesion_type,
        locations=labels_for_spans(lung_spans),
    )


def structure_sentence(sentence: str, index: int) -> list[Finding]:
    """Findings of one sentence (``index`` is its 1-based position in the section)."""
    text = sentence.lower()
    devices = [(m.start(), m.end()) for m in lexicon.DEVICE_PATTERN.finditer(text)]
    text = _mask(text, devices)
    mentions = find_mentions(text)
    if not mentions:
        return []
    located_text = _mask(text, [(m.start, m.end) for m in mentions])
    spans = find_location_spans(located_text)
    places = [(s.start, s.end) for s in spans if not s.side_only]
    non_lung = [(m.start(), m.end()) for m in NON_LUNG_PATTERN.finditer(located_text)
                if not _overlaps(m.start(), m.end(), places)]
    spans = [s for s in spans if not (s.side_only and _overlaps(s.start, s.end, non_lung))]
    for clause in _clauses(text):
        inside = [m for m in mentions if clause[0] <= m.start < clause[1]]
        if not inside:
            continue
        _apply_negation(text, clause, inside)
        _apply_uncertainty(text, clause, inside)
        _fold_predictions(text, inside, spans)
        _assign_locations(text, clause, inside, spans, non_lung)
    findings = [_finding(sentence, index, m) for m in mentions if not m.folded]
    return list(dict.fromkeys(findings))


class RulesBackend:
    """Lexicon + negation/uncertainty cues + rule location mapping; runs anywhere, no model."""

    name = "rules"

    def structure(self, section: Section) -> tuple[Finding, ...]:
        """Findings of a section, in sentence order (see the module docstring for the rules)."""
        findings: list[Finding] = []
        for index, sentence in enumerate(split_sentences(section.text), start=1):
            findings.extend(structure_sentence(sentence, index))
        return tuple(findings)
