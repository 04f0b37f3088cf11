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
   labels through :mod:`locations` (findings of the heart, mediastinum, bones ... keep their phrase but map to no
   lung label);
6. places reach findings that have none of their own: a finding coordinated with, or "with adjacent / associated"
   to, a located one shares its side (its whole place when nothing stands between them); a place written after a
   comma goes back to the unlocated findings before it; a hedged finding in a later clause, or a later sentence that
   refers back ("This likely reflects atelectasis."), takes the place of the opacity it explains (``location_source``
   ``"context"``); with no place at all, the entity decides as in the paper's Fig. 10 (edema and vascular
   congestion: both lungs; plural effusions: both bases; ``"entity"``);
7. effusions sit at the lung base of their side (Appendix E.4: "small right pleural effusion" -> right lung base);
   infections called old, healed, prior or sequelae are not pneumonia; densities over bone, breast, vessels or soft
   tissue are not lung opacities; "evaluation for X" states nothing about X.

``RULES_VERSION`` changes whenever these rules do, so a build never reuses reports structured by older rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import NamedTuple

from mimic_ils.report import lexicon
from mimic_ils.report.locations import (
    LATERAL_VIEW_PATTERN,
    NON_LUNG_PATTERN,
    LocationSpan,
    drop_covered,
    find_location_spans,
    label_side,
    labels_for_spans,
)
from mimic_ils.report.sections import split_sentences
from mimic_ils.schema import Finding, Section

RULES_VERSION = 2

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
_ALTERNATIVE = re.compile(r"^(?:[\s,]*(?:or|versus|vs\.?|and/or|(?:less|more) likely|or less likely)\s+|\s*,\s*)"
                          r"(?:[\w-]+\s+){0,3}$")
_COORDINATOR = re.compile(
    r",|(?<![\w-])(?:and|or|(?<!consistent )(?<!compatible )with|as well as|along with|plus|versus|vs)(?![\w-])"
)
_CONJUNCTION = re.compile(r"(?<![\w-])(?:and|or|with|as well as|along with|plus|but)(?![\w-])")
_BACKWARD_UNCERTAINTY = re.compile(
    r"(?<![\w-])(?:(?<!there )(?:is|are|be|was|were|remains?)\s+"
    r"(?:(?:also|still|more|most|less|quite|very|now|felt|thought)\s+)?(?:possible|likely|probable|suspected|"
    r"questionable|questioned|favou?red|considered|not excluded)|cannot be (?:entirely |completely |fully )?"
    r"(?:excluded|ruled out)|(?:could|may|might) (?:also )?be present|"
    r"not (?:be )?(?:entirely |completely )?(?:excluded|ruled out)|unlikely|versus|vs|"
    r"(?:suspected|questioned)(?=\s*(?:[.,;?!]|$)))(?![\w-])"
)
_BOTH_WAYS_UNCERTAINTY = re.compile(
    r"(?<![\w-])(?:versus|vs|can ?not (?:entirely |completely )?(?:exclude|rule out)|"
    r"difficult to (?:exclude|rule out))(?![\w-])")
_MASK = "#"
# Lesions whose place is the whole lung when the report gives none (Fig. 10: the entity decides).
DIFFUSE_ENTITIES = frozenset({"edema", "vascular congestion"})
NON_SPECIFIC_TYPES = frozenset({"opacity", "consolidation"})
LUNG_LESIONS = frozenset({"pneumonia", "atelectasis", "opacity", "consolidation", "edema", "effusion"})
_PLACE_PHRASE = re.compile(r"(?:(?<![\w-])(?:at|in|within|over|on|of|involving|along)\s+)?#+")
_APPOSITIVE = re.compile(r"^\s*,\s*(?:either\s+)?$")
_ASSOCIATED = re.compile(r"^[\s,]*(?:with|and)\s+(?:(?:an?|the|some)\s+)?(?:[\w-]+\s+){0,2}?(?:adjacent|associated|"
                         r"surrounding|underlying|overlying|accompanying|ipsilateral|parapneumonic|compressive)\b")
_BARE_COORDINATION = re.compile(r"^[\s,]*(?:and|with|as well as|plus)\s*$")
_COORDINATION = re.compile(r"^[\s,]*(?:and|with|as well as|plus|along with)\b")
_HISTORICAL = re.compile(
    r"(?<![\w-])(?:old|healed|prior|previous|remote|history of|sequelae? of|residua of|post-?infectious)(?![\w-])"
    r"(?:[\s-]+(?!(?:radiograph|study|exam|examination|film|image|imaging|comparison|chest)\b)[\w-]+){0,3}?[\s-]*$")
_LIMITED = re.compile(r"(?<![\w-])(?:limit\w*|difficult|suboptimal|obscur\w*|preclud\w*|hinder\w*|hamper\w*)(?![\w-])")
_EXTRAPULMONARY = re.compile(
    r"(?<![\w-])(?:sclerotic|bony|bone|osseous|calcific|lytic|blastic|nipple|nipples|breast|breasts|mammary|"
    r"humeral|humerus|scapulae?|scapular|clavicles?|clavicular|ribs?|costal|spine|spinal|vertebrae?|vertebral|"
    r"sternum|sternal|axillae?|axillary|soft tissues?|skin|aortic|aorta|shoulder|glenohumeral|"
    r"abdomen|abdominal|upper quadrant|bowel|stomach)(?![\w-])")
_EVALUATION_FOR = re.compile(
    r"(?<![\w-])(?:evaluat(?:e|es|ed|ing|ion)|assess(?:es|ed|ing|ment)?|to exclude|to rule out)\s+"
    r"(?:(?:of|in)\s+(?:[\w-]+\s+){0,5}?)?(?:for|of)(?![\w-])")
_QUESTION_END = re.compile(r"\?\s*$")
_ANAPHOR = re.compile(
    r"^\s*(?:this|these|that|those|it|they|which|the latter|"
    r"(?:the|these|this|such)\s+(?:findings?|abnormalit(?:y|ies)|"
    r"changes?|opacit(?:y|ies)|densit(?:y|ies)|consolidations?|areas?)|findings?)(?![\w-])")


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
    inherited: tuple[str, ...] = ()  # lung labels taken from the finding it goes with
    plural: bool = False
    refers_back: bool = False  # "This likely reflects X": X is the predicted type of the previous sentence's finding
    anaphor: bool = False  # "The consolidation likely ...": the same finding as in the previous sentence
    clause: int = 0
    dropped: bool = False
    side_lent: bool = False  # its side came from the finding it goes with
    own_cache: tuple = ()  # (key, labels) of _own_labels, recomputed only when its places change

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
        Mention(lexicon.TERM_TO_ENTITY[" ".join(match.group(0).split())], match.start(), match.end(),
                plural=match.group(0).endswith("s") and not match.group(0).endswith(("sis", "ss")))
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
            or bool(_QUESTION_END.search(text, clause[0], clause[1]))
        )


def _chain(text: str, mentions: list[Mention], first: int) -> list[Mention]:
    """``mentions[first]`` and the alternatives listed after it ("atelectasis or pneumonia", "A, B or C")."""
    chain = [mentions[first]]
    for left, right in zip(mentions[first:], mentions[first + 1:], strict=False):
        if (not _ALTERNATIVE.match(text[left.end: right.start].replace(_MASK, "")) or right.negative != left.negative
                or right.clause != left.clause):
            break
        chain.append(right)
    return chain


def _fold_predictions(text: str, mentions: list[Mention], location_spans: list[LocationSpan]) -> None:
    """"X likely represents A or B", "X, A versus B": A (the first lesion type of the chain) becomes X's predicted
    type; A and B are not findings of their own, and X keeps its place."""
    masked = _mask(text, [(span.start, span.end) for span in location_spans])
    index = 0
    while index < len(mentions) - 1:
        head, first = mentions[index], mentions[index + 1]
        if head.folded or head.negative != first.negative:
            index += 1
            continue
        between = masked[head.end: first.start]
        chain = _chain(masked, mentions, index + 1)
        cue = _FOLDABLE_CUE.search(between)
        by_cue = cue is not None and not _CONJUNCTION.search(between[: cue.start()].replace(_MASK, ""))
        differential = len(chain) > 1 or first.tentative
        bare = _PLACE_PHRASE.sub("", between)  # "opacity at the left base, either A or B"
        appositive = (_APPOSITIVE.match(bare) and head.lesion_type in NON_SPECIFIC_TYPES and differential
                      and not head.negative)  # "no consolidation, effusion, or edema" is a list
        typed = [m for m in chain if m.lesion_type]
        if not (by_cue or appositive) or not typed:
            index += 1
            continue
        head.predicted = typed[0].lesion_type
        for mention in chain:
            mention.folded = True
        head.tentative = head.tentative or differential or any(m.tentative for m in chain) or bool(
            lexicon.UNCERTAINTY_PATTERN.search(between))
        index += len(chain) + 1


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
            if pending and (own or other):  # "discoid atelectasis, seen in the left mid zone"
                for mention in pending:
                    _add_places(mention, own, other)
                pending, previous = [], pending
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


def _sides_of(labels: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(label_side(label) for label in labels))


def _own_labels(sentence: str, mention: Mention) -> tuple[str, ...]:
    key = (len(mention.spans), len(mention.phrase_parts), mention.entity)
    if mention.own_cache and mention.own_cache[0] == key:
        return mention.own_cache[1]
    labels = _compute_own_labels(sentence, mention)
    mention.own_cache = (key, labels)
    return labels


def _compute_own_labels(sentence: str, mention: Mention) -> tuple[str, ...]:
    parts = [sentence[s:e].lower().strip() for s, e in mention.phrase_parts if s >= 0]
    non_lung_place = any(NON_LUNG_PATTERN.fullmatch(part) for part in parts)
    if mention.entity in NON_LUNG_ENTITIES or (non_lung_place and all(span.side_only for span in mention.spans)):
        return ()
    if any(LATERAL_VIEW_PATTERN.search(part) for part in parts):  # Fig. 10: never a lung label
        return ()
    return labels_for_spans(mention.spans)


def _lend_places(text: str, mentions: list[Mention], sentence: str) -> None:
    """A lung lesion without a side of its own, coordinated with or "with adjacent / associated" to the located
    finding before it, shares that finding's place (nothing between them) or its side (an article or size between);
    a hedged lesion in a later clause takes the place of the opacity the sentence starts with."""
    located: Mention | None = None
    subject: Mention | None = None
    for mention in mentions:
        if mention.folded or mention.dropped:
            continue
        own = _own_labels(sentence, mention)
        sided = any(span.sides for span in mention.spans)
        if (located is not None and not mention.negative and mention.entity not in DIFFUSE_ENTITIES
                and mention.lesion_type in LUNG_LESIONS and not sided):
            between = text[located.end: mention.start].replace(_MASK, "")
            labels = _final_labels(sentence, located)
            whole = _ASSOCIATED.match(between) or _BARE_COORDINATION.match(between)
            if whole and mention.entity != "effusion" and not mention.spans:
                mention.inherited = labels
            elif (whole and mention.entity != "effusion") or ((whole or _COORDINATION.match(between))
                                                               and not mention.spans):
                # its own place with the head's side ("with associated basilar atelectasis"), or the side only (an
                # article or size between; an effusion, which then sits at the base)
                mention.spans = mention.spans + [LocationSpan(-1, -1, _sides_of(labels), (), ())]
                mention.side_lent = True
            own = _own_labels(sentence, mention)
        if (subject is not None and not own and not mention.inherited and not mention.spans and mention.tentative
                and not mention.negative and mention.clause > subject.clause and mention.entity not in DIFFUSE_ENTITIES
                and mention.lesion_type in LUNG_LESIONS):
            mention.inherited = _own_labels(sentence, subject) or subject.inherited
        if (own or mention.inherited) and not mention.negative:
            located = mention
            if subject is None and (mention.lesion_type in NON_SPECIFIC_TYPES or mention.predicted):
                subject = mention
        elif mention.lesion_type is not None:
            located = None


def _final_labels(sentence: str, mention: Mention) -> tuple[str, ...]:
    labels = _own_labels(sentence, mention) or mention.inherited
    return _effusion_at_bases(labels) if mention.entity == "effusion" else labels


def _effusion_at_bases(labels: tuple[str, ...]) -> tuple[str, ...]:
    """Appendix E.4: an effusion given a side only is at that side's lung base."""
    bases = {"right lung": "right lung base", "left lung": "left lung base"}
    return tuple(dict.fromkeys(bases.get(label, label) for label in labels))


def _finding(sentence: str, index: int, mention: Mention) -> Finding:
    location = ", ".join(sentence[start:end].strip() for start, end in mention.phrase_parts if start >= 0) or None
    labels = _own_labels(sentence, mention)
    source = ("context" if mention.side_lent and not any(span.sides for span in mention.spans if span.start >= 0)
              else "report") if labels else None
    if not labels and mention.inherited:
        labels, source = mention.inherited, "context"
    if not labels and location is None and not mention.negative:
        if mention.entity in DIFFUSE_ENTITIES:
            labels, source = ("right lung", "left lung"), "entity"
        elif mention.entity == "effusion" and mention.plural:
            labels, source = ("right lung base", "left lung base"), "entity"
    if mention.entity == "effusion":
        labels = _effusion_at_bases(labels)
    lesion_type = mention.predicted or mention.lesion_type
    return Finding(
        entity=mention.entity,
        sentence_index=index,
        presence="negative" if mention.negative else "positive",
        certainty="tentative" if mention.tentative else "definitive",
        location=location,
        predicted_lesion_type=mention.predicted,
        lesion_type=lesion_type,
        locations=drop_covered(labels),
        predicted_lesion_sentence_index=index if mention.predicted else None,
        location_source=source,
    )


def _reclassify(text: str, clause: tuple[int, int], mentions: list[Mention], spans: list[LocationSpan]) -> None:
    """Old infections are not pneumonia; densities over bone, breast, vessels or soft tissue are not lung
    opacities; a finding after "evaluation for" is not stated at all."""
    clause_text = text[clause[0]: clause[1]]
    lung_place = any(not span.side_only and clause[0] <= span.start < clause[1] for span in spans)
    extrapulmonary = _EXTRAPULMONARY.search(clause_text) and not lung_place and not LATERAL_VIEW_PATTERN.search(
        clause_text)
    limited = _LIMITED.search(clause_text)
    cues = [m for m in _EVALUATION_FOR.finditer(text, clause[0], clause[1])
            if m.group(0).endswith("for") or limited]
    for mention in mentions:
        if mention.lesion_type == "pneumonia" and _HISTORICAL.search(text, clause[0], mention.start):
            mention.entity = "prior infection"
        elif mention.lesion_type == "opacity" and extrapulmonary:
            mention.entity = "extrapulmonary density"
        if any(cue.end() <= mention.start for cue in cues):
            mention.dropped = True


def _mark_anaphora(text: str, mentions: list[Mention]) -> None:
    """A sentence that opens by pointing back ("This likely reflects atelectasis", "The consolidation likely
    represents pneumonia") explains or repeats the previous sentence's finding."""
    anaphor = _ANAPHOR.match(text)
    live = [m for m in mentions if not m.folded and not m.dropped]
    if anaphor is None or not live:
        return
    first = live[0]
    if first.start < anaphor.end():
        first.anaphor = True
        return
    if _FOLDABLE_CUE.search(text[anaphor.end(): first.start]) and first.lesion_type and not first.negative:
        first.refers_back = True
        position = mentions.index(first)
        for alternative in _chain(text, mentions, position)[1:]:
            alternative.folded = True
            first.tentative = True


class SentenceRole(NamedTuple):
    """How a sentence's finding relates to the previous sentence (see ``_mark_anaphora``)."""

    refers_back: bool = False
    anaphor: bool = False


SENTENCE_CACHE_SIZE = 1 << 16


@lru_cache(maxsize=SENTENCE_CACHE_SIZE)
def _analyse_text(sentence: str) -> tuple[tuple[Finding, SentenceRole], ...]:
    """The sentence's findings at index 0; MIMIC reports repeat their sentences, so this is cached (pure)."""
    return tuple((finding, SentenceRole(mention.refers_back, mention.anaphor))
                 for finding, mention in _analyse(sentence, 0))


def clear_sentence_cache() -> None:
    _analyse_text.cache_clear()


def analyse_sentence(sentence: str, index: int) -> list[tuple[Finding, SentenceRole]]:
    """Findings of one sentence with their role towards the previous sentence (for the section-level steps)."""
    return [(replace(finding, sentence_index=index,
                     predicted_lesion_sentence_index=index if finding.predicted_lesion_type else None), role)
            for finding, role in _analyse_text(sentence)]


def _analyse(sentence: str, index: int) -> list[tuple[Finding, Mention]]:
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
    non_lung = sorted(non_lung + [m.span() for m in LATERAL_VIEW_PATTERN.finditer(located_text)])
    spans = [s for s in spans if not (s.side_only and _overlaps(s.start, s.end, non_lung))]
    for number, clause in enumerate(_clauses(text)):
        inside = [m for m in mentions if clause[0] <= m.start < clause[1]]
        if not inside:
            continue
        for mention in inside:
            mention.clause = number
        _reclassify(text, clause, inside, spans)
        inside = [m for m in inside if not m.dropped]
        _apply_negation(text, clause, inside)
        _apply_uncertainty(text, clause, inside)
        _fold_predictions(text, inside, spans)
        _assign_locations(text, clause, inside, spans, non_lung)
    _mark_anaphora(text, mentions)
    _lend_places(_mask(text, [(s.start, s.end) for s in spans]), mentions, sentence)
    pairs = [(_finding(sentence, index, m), m) for m in mentions if not m.folded and not m.dropped]
    seen, unique = set(), []
    for finding, mention in pairs:
        if finding not in seen:
            seen.add(finding)
            unique.append((finding, mention))
    return unique


def structure_sentence(sentence: str, index: int) -> list[Finding]:
    """Findings of one sentence (``index`` is its 1-based position in the section)."""
    return [finding for finding, _ in analyse_sentence(sentence, index)]


def _carries_place(finding: Finding) -> bool:
    """A positive lung lesion the report gives no place to at all, that could point back to an earlier one."""
    return (finding.is_positive and finding.location is None and not finding.locations
            and finding.lesion_type in LUNG_LESIONS and finding.entity not in DIFFUSE_ENTITIES)


def _antecedent(previous: list[Finding]) -> int | None:
    """Index of the finding a later sentence explains: the last positive opacity or consolidation without a
    predicted type, else the last positive located finding."""
    for wanted in (lambda f: f.lesion_type in NON_SPECIFIC_TYPES and not f.predicted_lesion_type,
                   lambda f: bool(f.locations)):
        for position in range(len(previous) - 1, -1, -1):
            if previous[position].is_positive and wanted(previous[position]):
                return position
    return None


def _resolve_across_sentences(previous: list[Finding], current: list[tuple[Finding, SentenceRole]],
                              index: int) -> list[Finding]:
    """The section-level step: predicted types and places that a sentence gives to the previous sentence's finding."""
    kept = []
    target = _antecedent(previous)
    for finding, role in current:
        if role.refers_back and target is not None and previous[target].lesion_type in NON_SPECIFIC_TYPES:
            old = previous[target]
            previous[target] = replace(old, predicted_lesion_type=finding.lesion_type,
                                       lesion_type=finding.lesion_type, predicted_lesion_sentence_index=index,
                                       certainty="tentative" if finding.certainty == "tentative" else old.certainty)
            continue
        if target is not None and _carries_place(finding) and (
                role.refers_back or role.anaphor or finding.certainty == "tentative"):
            source = previous[target]
            if role.anaphor:  # "The consolidation ...": the previous finding of that entity
                same = [f for f in previous if f.entity == finding.entity and f.locations]
                source = same[-1] if same else source
            if source.locations:
                finding = replace(finding, locations=source.locations, location_source="context")
        kept.append(finding)
    return kept


class RulesBackend:
    """Lexicon + negation/uncertainty cues + rule location mapping; runs anywhere, no model."""

    name = "rules"

    def structure(self, section: Section) -> tuple[Finding, ...]:
        """Findings of a section, in sentence order (see the module docstring for the rules)."""
        per_sentence: list[list[Finding]] = []  # the last one may still gain a predicted type from the next
        for index, sentence in enumerate(split_sentences(section.text), start=1):
            current = analyse_sentence(sentence, index)
            if current:
                previous = per_sentence[-1] if per_sentence else []
                per_sentence.append(_resolve_across_sentences(previous, current, index))
        return tuple(finding for findings in per_sentence for finding in findings)
