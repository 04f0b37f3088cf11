"""Rule location mapper: a location phrase → coarse category (step 1) → the 15 lung categories (step 2).

The paper maps each finding's location term, with its entity, in two LLM steps (Fig. 10): first to the 17 coarse
categories of :data:`COARSE_CATEGORIES`, and only terms placed in ``lung`` go on to the second step, which picks
among the 15 lung categories of :data:`mimic_ils.schema.LUNG_LABELS` (CXAS label names). This module is the rule
twin of both steps; the entity-dependent parts (effusions at the base, diffuse findings in both lungs) live in
:mod:`mimic_ils.report.rules`.

Step 1 (:func:`coarse_category`): places seen mainly on the lateral view (retrocardiac, retrosternal, middle
mediastinum, posterior sulcus) are always ``lateral view location``; a lung place, a bare side, hilar, costophrenic
angle and lingula are ``lung``; otherwise the first of heart, vessels, mediastinum, pleura, trachea, diaphragm,
abdomen, cervical / lumbar / thoracic spine, rib, clavicle, scapula, sternum, breast whose keyword the term
contains; a term unrelated to chest anatomy (humerus, axilla, chest wall) is None.

Step 2 (:func:`map_lung_labels`): a phrase is read as sides x places; the full table, with every example checked by
a test, is in ``docs/report_rules.md``. In short: lobes map to lobes (lingula: left upper lobe), upper / mid /
lower lung (zone, field) to zones, base / basilar / basal / costophrenic angle to the lung base, apex / apical to
the apical zone, perihilar / hilar / hilum to the mid zone, a side alone or a hemithorax to the whole lung;
"bilateral", "bi-", plural anchors and "diffuse / multifocal / widespread / scattered" mean both sides; "right mid
and left lower zones" gives each side its own place; "left more than right", "R > L" mean both sides; a place said
as an emphasis ("worst at the right base") adds nothing to a finding given both sides; a side said anywhere in the
phrase goes to its side-less places ("basilar infiltrate at the left base": the left base); a whole lung absorbs its
own parts (the broader category, not the broad one plus its parts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mimic_ils.schema import LUNG_LABELS

COARSE_CATEGORIES = (
    "thoracic spine", "cervical spine", "lumbar spine", "clavicle", "scapula", "rib", "sternum", "diaphragm",
    "mediastinum", "abdomen", "heart", "breast", "trachea", "vessels", "lung", "pleura", "lateral view location",
)  # the paper's 17 (Fig. 10, step 1)
LATERAL_VIEW_PATTERN = re.compile(
    r"(?<![\w-])(?:(?:right|left|bilateral)\s+)?(?:retrocardiac|retrosternal|middle mediastin\w*|"
    r"posterior (?:costophrenic )?(?:sulcus|sulci|angles?)|anterior clear space|retrosternal clear space)(?![\w-])")
# Step 1 keywords for the non-lung categories, tried in this order after the lateral view places and lung places.
_COARSE_KEYWORDS = (
    ("heart", r"heart|cardiac|pericardial|pericardium|atrium|atrial|ventricle|ventricular|myocardium|myocardial"),
    ("vessels", r"aorta|aortic|pulmonary arter(?:y|ies)|vena cava|svc|ivc|vascular|vasculature|vessels?|"
                r"azygos|brachiocephalic|subclavian vein"),
    ("mediastinum", r"mediastin\w*|cardiomediastinal|paratracheal|subcarinal|aortopulmonary|esophag\w*"),
    ("pleura", r"pleura|pleural|fissures?"),
    ("trachea", r"trachea|tracheal|carina"),
    ("diaphragm", r"hemidiaphragms?|diaphragms?|diaphragmatic|subdiaphragmatic"),
    ("abdomen", r"abdomen|abdominal|stomach|bowel|liver|hepatic|spleen|splenic|upper quadrant|colon|colonic|gastric|"
                r"duodenum|duodenal|pancreas|kidneys?|renal"),
    ("cervical spine", r"cervical spine|cervical vertebrae?|c-spine"),
    ("lumbar spine", r"lumbar spine|lumbar vertebrae?|l-spine"),
    ("thoracic spine", r"thoracic spine|thoracolumbar|spine|vertebrae?|vertebral(?: bod(?:y|ies))?|spinal"),
    ("rib", r"ribs?"),
    ("clavicle", r"clavicles?|clavicular"),
    ("scapula", r"scapulae?|scapular"),
    ("sternum", r"sternum|sternal|manubri\w*"),
    ("breast", r"breasts?|nipples?|mammary"),
)
# Places outside the 17 categories (their findings get no lung label either).
_UNRELATED_KEYWORDS = r"shoulders?|humerus|humeral|glenohumeral|acromioclavicular|soft tissues?|chest wall|axillae?|" \
                      r"axillary|neck|subcutaneous|skin"
_NON_LUNG_WORDS = "|".join([pattern for name, pattern in _COARSE_KEYWORDS if name != "pleura"] + [_UNRELATED_KEYWORDS])
NON_LUNG_PATTERN = re.compile(rf"(?<![\w-])(?:(?:right|left|bilateral)\s+)?(?:{_NON_LUNG_WORDS})(?![\w-])")
_LUNG_WORDS = re.compile(r"(?<![\w-])(?:hilar|hilum|hila|perihilar|lingula|lingular|lungs?|pulmonary|"
                         r"costophrenic|bronch\w*|parenchyma\w*|lobes?|lobar)(?![\w-])")
_UNRELATED = re.compile(rf"(?<![\w-])(?:{_UNRELATED_KEYWORDS})(?![\w-])")
_COARSE_REGEXES = tuple((name, re.compile(rf"(?<![\w-])(?:{pattern})(?![\w-])")) for name, pattern in _COARSE_KEYWORDS)

_SIDE = r"(?:right|left|bilateral|both|b/l)"
_SIDES = rf"{_SIDE}(?:\s*(?:and|/|,|or)\s*{_SIDE})?"
_LEVEL = r"(?:upper|middle|mid|lower|apical|basilar|basal)"
_LEVELS = rf"{_LEVEL}(?:\s*(?:,\s*and|,|and|/|or|-?to-?|through|-)\s*{_LEVEL})*"
_ANCHOR = (r"lobes?|lungs?(?:\s+(?:zones?|fields?|bases?|apex|apices|regions?))?|zones?|fields?|hemithora(?:x|ces)"
           r"|bases?|apex|apices|costophrenic\s+angles?|cp\s+angles?|lingula|hilum|hila")
_ADJECTIVE = (r"bibasilar|bibasal|bibasally|basilar|basally|basal|biapical|apical|perihilar|juxtahilar|infrahilar"
              r"|suprahilar|hilar|lingular|midlung|mid-lung")
_SIDE_ONLY = (r"bilaterally|bilateral|both sides|right-sided|left-sided|right|left|b/l|diffuse|diffusely|"
              r"multifocal|widespread|scattered|throughout both lungs")
LOCATION_PATTERN = re.compile(
    rf"(?<![\w-])(?:(?:(?:the\s+)?(?P<sides>{_SIDES})\s+)?(?:(?P<levels>{_LEVELS})\s+)?(?:(?:lung|lobar)\s+)?"
    rf"(?P<anchor>{_ANCHOR})|(?:(?P<asides>{_SIDES})\s+)?(?P<adjective>{_ADJECTIVE})|(?P<side_only>{_SIDE_ONLY}))"
    r"(?![\w-])"
)

_LEVEL_PLACE = {"upper": "upper", "middle": "mid", "mid": "mid", "lower": "base", "basilar": "base",
                "basal": "base", "apical": "apical"}
_ADJECTIVE_PLACE = {"bibasilar": "base", "bibasal": "base", "bibasally": "base", "basilar": "base", "basally": "base",
                    "basal": "base", "biapical": "apical", "apical": "apical", "perihilar": "mid",
                    "juxtahilar": "mid", "hilar": "mid", "infrahilar": "base", "suprahilar": "upper",
                    "lingular": "upper lobe", "midlung": "mid", "mid-lung": "mid"}
_ZONE_LABEL = {("R", "apical"): "right apical zone lung", ("R", "upper"): "right upper zone lung",
               ("R", "mid"): "right mid zone lung", ("R", "base"): "right lung base", ("R", "lung"): "right lung",
               ("L", "apical"): "left apical zone lung", ("L", "upper"): "left upper zone lung",
               ("L", "mid"): "left mid zone lung", ("L", "base"): "left lung base", ("L", "lung"): "left lung",
               ("R", "upper lobe"): "lung upper lobe right", ("R", "middle lobe"): "lung middle lobe right",
               ("R", "lower lobe"): "lung lower lobe right", ("L", "upper lobe"): "lung upper lobe left",
               ("L", "lower lobe"): "lung lower lobe left"}
_LOBE_OF_LEVEL = {"upper": "upper lobe", "middle": "middle lobe", "mid": "middle lobe", "lower": "lower lobe",
                  "apical": "upper lobe", "basilar": "lower lobe", "basal": "lower lobe"}
BOTH = ("R", "L")
assert set(_ZONE_LABEL.values()) == set(LUNG_LABELS)


@dataclass(frozen=True)
class LocationSpan:
    """One location mention: its character span, explicit sides (None when unsaid), default sides and places."""

    start: int
    end: int
    sides: tuple[str, ...] | None
    default_sides: tuple[str, ...]
    places: tuple[str, ...]
    emphasis: bool = False  # "worst at the right base": a part of a place given elsewhere

    @property
    def side_only(self) -> bool:
        return not self.places

    @property
    def both_sides(self) -> bool:
        return set(self.sides or ()) == set(BOTH)


def _parse_sides(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    if any(word in text for word in ("bilateral", "both", "b/l")) or ("right" in text and "left" in text):
        return BOTH
    return ("R",) if "right" in text else ("L",) if "left" in text else None


def _split_levels(text: str | None) -> list[str]:
    return re.findall(_LEVEL, text) if text else []


_PLACE_PREPOSITION = re.compile(r"(?:in|within|throughout|through|of|involving|at|across|over)\s+(?:the\s+)?$")


def _anchor_span(match: re.Match) -> LocationSpan | None:
    anchor = " ".join(match.group("anchor").split())
    sides, levels = _parse_sides(match.group("sides")), _split_levels(match.group("levels"))
    if anchor in ("lung", "lungs") and not sides and not levels and not _PLACE_PREPOSITION.search(
            match.string[max(0, match.start() - 20): match.start()]):
        return None  # "the lungs are clear": a subject, not the place of a finding
    plural = bool(re.search(r"(?:lobes|lungs|zones|fields|bases|apices|angles|hemithoraces)$", anchor))
    default = BOTH if plural else ()
    if anchor == "lingula":
        return LocationSpan(match.start(), match.end(), sides, ("L",), ("upper lobe",))
    if anchor in ("hilum", "hila"):
        return LocationSpan(match.start(), match.end(), sides, BOTH if anchor == "hila" else (), ("mid",))
    if anchor.startswith("lobe"):
        places = tuple(dict.fromkeys(_LOBE_OF_LEVEL[level] for level in levels)) or ("lung",)
        if places == ("middle lobe",):
            default = ("R",)
    elif anchor.endswith(("base", "bases")) or "angle" in anchor:
        places = ("base",)
    elif anchor.endswith(("apex", "apices")):
        places = ("apical",)
    else:
        places = tuple(dict.fromkeys(_LEVEL_PLACE[level] for level in levels)) or ("lung",)
    return LocationSpan(match.start(), match.end(), sides, default, places)


def _adjective_span(match: re.Match) -> LocationSpan:
    adjective = match.group("adjective")
    sides = _parse_sides(match.group("asides"))
    if adjective.startswith("bi"):
        sides = BOTH
    default = ("L",) if adjective == "lingular" else BOTH
    return LocationSpan(match.start(), match.end(), sides, default, (_ADJECTIVE_PLACE[adjective],))


# "right mid and left lower zones", "right upper and left lower lobes": each side with its own level.
SPLIT_SIDES_PATTERN = re.compile(
    rf"(?<![\w-])(?P<s1>right|left)\s+(?P<l1>{_LEVELS})\s*(?:,\s*and|and|,|/|&)\s*(?P<s2>right|left)\s+"
    rf"(?P<l2>{_LEVELS})\s+(?:lung\s+)?(?P<anchor>lobes|zones|fields|lungs|lung zones|lung fields)(?![\w-])")
# "left more than right", "R > L", "larger on the left than the right": both sides.
COMPARATIVE_PATTERN = re.compile(
    r"(?<![\w-])(?:(?:right|left)\s+(?:(?:is|are|much|slightly|somewhat|side)\s+)?(?:more|greater|larger|worse|bigger|"
    r"higher|>)\s+(?:than\s+)?(?:the\s+)?(?:right|left)|[rl]\s*>\s*[rl]|(?:larger|greater|more|worse|bigger)\s+"
    r"(?:on|in)\s+the\s+(?:right|left)\s+than\s+(?:on\s+|in\s+)?the\s+(?:right|left))(?![\w-])")
# "worst at the right base", "predominantly in the left lower lobe": the next place is an emphasis.
EMPHASIS_PATTERN = re.compile(
    r"(?<![\w-])(?:worst|most|more|greatest|greater|larger|predominantly|predominant|especially|particularly|mainly|"
    r"maximal|worse)(?:\s+(?:pronounced|marked|prominent|notable|conspicuous|severe|evident|dense))?"
    r"(?:\s+(?:at|in|on|over|within|along|involving|toward|towards))?(?:\s+the)?\s*$")


def _split_side_spans(text: str) -> list[LocationSpan]:
    spans = []
    for match in SPLIT_SIDES_PATTERN.finditer(text):
        anchor = match.group("anchor")
        for side_group, level_group in (("s1", "l1"), ("s2", "l2")):
            side = ("R",) if match.group(side_group) == "right" else ("L",)
            levels = _split_levels(match.group(level_group))
            table = _LOBE_OF_LEVEL if anchor == "lobes" else _LEVEL_PLACE
            places = tuple(dict.fromkeys(table[level] for level in levels))
            spans.append(LocationSpan(match.start(side_group), match.end(level_group), side, side, places))
    return spans


def find_location_spans(text: str) -> list[LocationSpan]:
    """All lung location mentions in lower-cased ``text``, left to right."""
    spans = _split_side_spans(text) + [LocationSpan(m.start(), m.end(), BOTH, BOTH, ())
                                       for m in COMPARATIVE_PATTERN.finditer(text)]
    taken = [m.span() for m in SPLIT_SIDES_PATTERN.finditer(text)] + [(span.start, span.end) for span in spans]
    if taken:  # the phrases above are read as a whole
        chars = list(text)
        for start, end in taken:
            chars[start:end] = " " * (end - start)
        text = "".join(chars)
    for match in LOCATION_PATTERN.finditer(text):
        if match.group("anchor"):
            span = _anchor_span(match)
            if span is not None:
                spans.append(span)
        elif match.group("adjective"):
            spans.append(_adjective_span(match))
        else:
            word = match.group("side_only")
            sides = BOTH if word in _DIFFUSE_WORDS else _parse_sides(word)
            if sides:
                spans.append(LocationSpan(match.start(), match.end(), sides, sides, ()))
    spans = [_with_emphasis(span, text) for span in spans]
    return sorted(spans, key=lambda span: span.start)


_DIFFUSE_WORDS = frozenset({"diffuse", "diffusely", "multifocal", "widespread", "scattered", "throughout both lungs"})


def _with_emphasis(span: LocationSpan, text: str) -> LocationSpan:
    if EMPHASIS_PATTERN.search(text[max(0, span.start - 40): span.start]):
        return LocationSpan(span.start, span.end, span.sides, span.default_sides, span.places, emphasis=True)
    return span


def labels_for_spans(spans: list[LocationSpan]) -> tuple[str, ...]:
    """Lung labels of a finding's location spans.

    A side-only span lends its side to side-less places, and so does a place with an explicit side ("basilar
    infiltrate at the left base": the left base only). A place said as an emphasis ("worst at the right base") adds
    nothing to a finding given both sides elsewhere. A whole lung absorbs its own parts (the paper lists the broader
    category, not the broad one plus its parts).
    """
    plain = [span for span in spans if not span.emphasis]
    if any(span.both_sides for span in plain):
        spans = plain
    explicit = tuple(dict.fromkeys(side for span in spans if span.sides for side in span.sides))
    lent = tuple(dict.fromkeys(side for span in spans if span.side_only for side in span.sides)) or explicit or None
    labels: list[str] = []
    for span in spans:
        if span.side_only:
            continue
        borrowing = lent if len(span.default_sides) != 1 else None  # the lingula is left whatever else is said
        sides = span.sides or borrowing or span.default_sides
        for side in sides:
            for place in span.places:
                labels.append(_ZONE_LABEL.get((side, place)) or _ZONE_LABEL[(side, "lung")])
    if not labels and lent and all(span.side_only for span in spans):
        labels = [_ZONE_LABEL[(side, "lung")] for side in lent]
    return drop_covered(tuple(dict.fromkeys(labels)))


def drop_covered(labels: tuple[str, ...]) -> tuple[str, ...]:
    """Without the zones and lobes of a side whose whole lung is listed."""
    whole = {side for side, lung in (("R", "right lung"), ("L", "left lung")) if lung in labels}
    return tuple(label for label in labels
                 if label in ("right lung", "left lung") or label_side(label) not in whole)


def label_side(label: str) -> str:
    """``"R"`` or ``"L"``: the side of a LUNG_LABELS name ("right lung base", "lung lower lobe left")."""
    return "R" if label.startswith("right") or label.endswith("right") else "L"


def coarse_category(phrase: str | None) -> str | None:
    """Step 1: the coarse category (one of the paper's 17 COARSE_CATEGORIES) of a location phrase; None for no
    phrase or one unrelated to chest anatomy. Places seen mainly on the lateral view (retrocardiac, retrosternal,
    middle mediastinum) are always "lateral view location"; hilar, costophrenic angle, lingula, a bare side are lung.
    """
    if not phrase or not phrase.strip():
        return None
    text = " ".join(phrase.lower().split())
    if LATERAL_VIEW_PATTERN.search(text):
        return "lateral view location"
    spans = find_location_spans(text)
    if any(not span.side_only and labels_for_spans([span]) for span in spans):
        return "lung"
    for name, regex in _COARSE_REGEXES:
        if regex.search(text):
            return name
    return "lung" if (spans or _LUNG_WORDS.search(text)) and not _UNRELATED.search(text) else None


def map_lung_labels(phrase: str) -> tuple[str, ...]:
    """Step 2: the LUNG_LABELS a lung location phrase names (see the module table)."""
    return labels_for_spans(find_location_spans(" ".join(phrase.lower().split())))


def map_location(phrase: str | None) -> tuple[str, ...]:
    """Both steps: LUNG_LABELS for a free location phrase; empty for no phrase or a non-lung place."""
    if coarse_category(phrase) != "lung":
        return ()
    return map_lung_labels(phrase)
