"""Word lists of the rule backend: findings (lesion and non-lesion), devices, negation and uncertainty cues.

All terms are lower case and matched on whole words against a lower-cased sentence, longest term first, so
"pulmonary vascular congestion" (not edema) wins over "edema"-free shorter terms and "pericardial effusion" (not a
lung lesion) wins over "effusion". Each finding term maps to a canonical entity name and to its lesion type among
:data:`mimic_ils.schema.LESION_TYPES`, or None for findings outside the seven types.
"""

from __future__ import annotations

import re

from mimic_ils.schema import LESION_TYPES

# canonical entity -> (lesion type or None, surface terms)
FINDING_TERMS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "cardiomegaly": ("cardiomegaly", (
        "cardiomegaly", "enlarged heart", "enlarged cardiac silhouette", "cardiac enlargement",
        "enlargement of the cardiac silhouette", "enlargement of the heart", "heart enlargement",
        "enlarged cardiac contour", "enlarged heart size", "enlarged cardiomediastinal silhouette",
    )),
    "pneumonia": ("pneumonia", (
        "pneumonia", "pneumonias", "bronchopneumonia", "infection", "infectious process", "pneumonic infiltrate",
        "pneumonitis", "aspiration pneumonitis", "aspiration pneumonia", "infectious pneumonia",
    )),
    "atelectasis": ("atelectasis", (
        "atelectasis", "atelectases", "atelectatic change", "atelectatic changes", "atelectatic", "collapse",
        "lobar collapse",
    )),
    "opacity": ("opacity", (
        "opacity", "opacities", "opacification", "opacifications", "airspace disease", "air space disease",
        "airspace process", "air space process", "airspace opacity", "airspace opacities", "density", "densities",
        "infiltrate", "infiltrates", "infiltration", "haziness", "opaque", "opacified", "hazy opacity",
        "hazy opacities",
    )),
    "consolidation": ("consolidation", (
        "consolidation", "consolidations", "consolidative opacity", "consolidative opacities",
        "consolidative process", "airspace consolidation",
    )),
    "edema": ("edema", (
        "edema", "oedema", "pulmonary edema", "interstitial edema", "alveolar edema", "fluid overload",
        "interstitial pulmonary edema", "pulmonary interstitial edema",
    )),
    "effusion": ("effusion", (
        "effusion", "effusions", "pleural effusion", "pleural effusions", "pleural fluid", "hydrothorax",
        "blunting of the costophrenic angle", "blunting of the costophrenic angles", "costophrenic angle blunting",
        "blunting",
    )),
    # findings outside the seven lesion types: kept (they matter for empty locations), lesion_type None
    "vascular congestion": (None, (
        "pulmonary vascular congestion", "vascular congestion", "pulmonary venous congestion", "venous congestion",
        "vascular engorgement", "pulmonary vascular engorgement", "cephalization",
    )),
    "pericardial effusion": (None, ("pericardial effusion", "pericardial effusions")),
    "soft tissue edema": (None, ("soft tissue edema", "chest wall edema", "subcutaneous edema")),
    "pneumothorax": (None, ("pneumothorax", "pneumothoraces", "hydropneumothorax")),
    "nodule": (None, ("nodule", "nodules", "nodular opacity", "nodular opacities", "micronodules")),
    "mass": (None, ("mass", "masses")),
    "fracture": (None, ("fracture", "fractures")),
    "hilar enlargement": (None, (
        "hilar enlargement", "enlarged hila", "enlarged hilum", "hilar prominence", "prominent hila",
        "hilar fullness", "hilar adenopathy",
    )),
    "lymphadenopathy": (None, ("lymphadenopathy", "adenopathy")),
    "emphysema": (None, ("emphysema", "emphysematous changes")),
    "subcutaneous emphysema": (None, ("subcutaneous emphysema", "subcutaneous air")),
    "pneumomediastinum": (None, ("pneumomediastinum",)),
    "scarring": (None, ("scarring", "scar", "scars", "fibrosis", "fibrotic changes", "fibrotic change")),
    "granuloma": (None, ("granuloma", "granulomas", "calcified granuloma", "calcified granulomas")),
    "calcification": (None, ("calcification", "calcifications")),
    "pleural thickening": (None, ("pleural thickening", "pleural plaques", "pleural plaque", "thickening")),
    "bronchiectasis": (None, ("bronchiectasis",)),
    "hernia": (None, ("hernia", "hiatal hernia", "hiatus hernia")),
    "hyperinflation": (None, ("hyperinflation", "hyperinflated", "hyperexpanded", "hyperexpansion")),
    "widened mediastinum": (None, ("widened mediastinum", "mediastinal widening", "widening of the mediastinum")),
    "degenerative changes": (None, ("degenerative changes", "degenerative change", "spondylosis")),
    "free air": (None, ("free air", "pneumoperitoneum", "free intraperitoneal air")),
    "aortic tortuosity": (None, ("tortuous aorta", "aortic tortuosity", "tortuosity of the aorta", "unfolded aorta")),
    "cavitation": (None, ("cavitation", "cavity", "cavitary lesion")),
    "pulmonary hypertension": (None, ("pulmonary hypertension", "pulmonary arterial hypertension")),
}

# Support devices: never findings. Their phrases are masked before findings are matched ("chest tube for
# effusion drainage" still reports the effusion; "pleural catheter" never becomes pleural thickening).
DEVICE_TERMS = (
    "endotracheal tube", "et tube", "ett", "nasogastric tube", "ng tube", "orogastric tube", "og tube",
    "feeding tube", "dobhoff", "dobhoff tube", "enteric tube", "chest tube", "chest tubes", "pigtail catheter",
    "pleural catheter", "pleurx catheter", "drain", "drains", "tracheostomy tube", "tracheostomy",
    "central venous catheter", "central line", "central venous line", "picc", "picc line", "port-a-cath",
    "port", "swan-ganz catheter", "pulmonary artery catheter", "catheter", "catheters", "line", "lines",
    "internal jugular line", "ij line", "subclavian line", "pacemaker", "pacer", "pacemaker leads", "pacer leads",
    "leads", "lead", "aicd", "icd", "defibrillator", "cardiac device", "loop recorder", "sternotomy wires",
    "sternal wires", "median sternotomy wires", "surgical clips", "clips", "staples", "stent", "stents",
    "valve replacement", "prosthetic valve", "lvad", "balloon pump", "intra-aortic balloon pump", "iabp",
    "electrode", "electrodes", "monitoring leads", "ecg leads", "wires", "hardware", "orthopedic hardware",
)

# Cues (regular-expression fragments, matched on whole words in a lower-cased clause).
PSEUDO_NEGATIONS = (
    r"no (?:(?:significant|interval|definite|appreciable|substantial|major|other) )*(?:change|changes|increase|"
    r"worsening)",
    r"not (?:significantly |substantially )?(?:changed|increased|worsened)",
    r"without (?:significant |interval )?(?:change|worsening)", r"not only", r"no further",
    r"cannot be (?:entirely |completely |fully )?(?:excluded|ruled out)", r"can ?not (?:exclude|rule out)",
    r"not (?:be )?(?:entirely |completely )?(?:excluded|ruled out)", r"could not be excluded",
    r"difficult to (?:exclude|rule out)",
)
PRE_NEGATIONS = (
    r"no evidence of",
    r"no(?: (?:radiographic|definite|convincing|obvious|new|focal|frank|acute|signs? of|residual|significant|other"
    r"|definitive|discrete|overt|large|gross))+",
    r"no", r"without", r"free of", r"clear of", r"negative for", r"absence of", r"absent", r"not",
    r"resolution of", r"resolved", r"interval resolution of", r"clearing of", r"nor", r"neither", r"rather than",
    r"no longer (?:any|a|an)?", r"there is no", r"there are no", r"ruled out",
)
POST_NEGATIONS = (
    r"(?:has|have|had) (?:\w+ )?(?:resolved|cleared|disappeared)", r"resolved", r"(?:is|are) (?:now )?absent",
    r"(?:is|are|was|were) (?:not|no longer) (?:seen|present|identified|visualized|evident|appreciated|detected|"
    r"demonstrated|visible|noted|apparent|enlarged)",
    r"no longer (?:seen|present|identified|visualized|evident|appreciated|visible|apparent)", r"unlikely",
    r"(?:is|are) not (?:clearly |definitely )?(?:seen|present|identified|visualized|evident|appreciated)",
)
UNCERTAINTY = (
    r"possible", r"possibly", r"may", r"might", r"could", r"likely", r"probable", r"probably", r"suspicious",
    r"suspected", r"suspect", r"concerning", r"concern", r"suggestive", r"suggests", r"suggesting", r"suggest",
    r"questionable", r"question of", r"equivocal", r"versus", r"vs", r"presumed", r"presumably", r"perhaps",
    r"cannot be (?:entirely |completely |fully )?(?:excluded|ruled out)", r"can ?not (?:exclude|rule out)",
    r"not (?:be )?(?:entirely |completely )?(?:excluded|ruled out)", r"could not be excluded",
    r"difficult to (?:exclude|rule out)", r"borderline", r"unlikely", r"worrisome", r"raises? the possibility",
    r"differential", r"would be difficult", r"potential", r"uncertain", r"indeterminate", r"question",
    r"questioned", r"suggestion of", r"(?:top|upper|high|borderline)[- ]normal (?:to|or)", r"favou?red",
    r"not excluded",
)
# "X reflects / likely represents Y": the relation words between a finding X and a lesion type Y.
PREDICTION_CUES = (
    r"(?:which |that )?(?:most |more )?(?:likely |probably |possibly |may |might |could |can |would )?"
    r"(?:represents?|representing|reflects?|reflecting|be|is|are|indicates?|indicating|suggests?|suggesting|"
    r"due to|related to|from|secondary to)",
    r"(?:is |are |which is |which are )?(?:concerning|suspicious|worrisome|suggestive|compatible|consistent)"
    r" (?:for|of|with)",
    r"(?:likely|probably|possibly|presumably|perhaps|representing|reflecting|(?:raising )?concern for)",
)
# Words that end a negation's reach inside a clause (NegEx termination terms).
SCOPE_TERMINATORS = (
    r"but", r"however", r"although", r"though", r"which", r"whereas", r"while", r"except", r"aside from",
    r"apart from", r"other than", r"persistent", r"persists", r"persisting", r"remains?", r"there (?:is|are)",
    r"unchanged", r"stable", r"again (?:seen|noted|demonstrated)", r"now", r"new",
    r"with (?:(?:a|an|some)\s+)?(?:trace|small|tiny|mild|minimal|moderate|large|persistent|residual|stable|"
    r"unchanged|increased|decreased|increasing|decreasing|bilateral|left|right|bibasilar|slight|subtle|"
    r"improved|improving|worsened|worsening|layering|loculated)",
)
# Clause boundaries: negation and uncertainty never cross them.
CLAUSE_BREAKS = r";|:|\bbut\b|\bhowever\b|\balthough\b|\bthough\b|\bwhereas\b|\bexcept\b|,\s*(?:and\s+)?there\b" \
                r"|\band there\b|\bwith (?:the )?exception of\b"

# Heart size statements that name no lexicon term: (pattern, presence forced or None).
HEART_SIZE_PATTERNS: tuple[tuple[str, str | None], ...] = (
    (r"(?:heart|cardiac silhouette|cardiac contours?|heart size|cardiac size|size of the heart|cardiomediastinal"
     r" silhouette)(?: size)?(?: (?:is|are|remains|appears?|seems?|has|(?:may|might|could|would) be))?"
     r"(?: [\w-]+){0,5}? (?:enlarged|increased|large)",
     None),
    (r"(?:heart size|heart|cardiac silhouette|cardiac size|size of the heart|cardiomediastinal silhouette|"
     r"cardiomediastinal contours?|cardiac contours?)(?: size)? (?:is|are|remains|appears?)(?: \w+){0,2}? "
     r"(?:normal|within normal limits|upper normal|top normal|top-normal|upper limits? of normal|unremarkable)",
     "negative"),
    (r"normal (?:heart size|cardiac size|size of the heart|cardiac silhouette|cardiomediastinal silhouette|"
     r"cardiomediastinal contours?|heart)", "negative"),
)


def _alternation(terms: tuple[str, ...] | list[str]) -> str:
    return "|".join(sorted(terms, key=len, reverse=True))


def _whole_words(pattern: str) -> re.Pattern:
    return re.compile(rf"(?<![\w-])(?:{pattern})(?![\w-])")


TERM_TO_ENTITY = {term: entity for entity, (_, terms) in FINDING_TERMS.items() for term in terms}
ENTITY_LESION_TYPE = {entity: lesion for entity, (lesion, _) in FINDING_TERMS.items()}
FINDING_PATTERN = _whole_words(_alternation(list(TERM_TO_ENTITY)).replace(" ", r"\s+"))
DEVICE_PATTERN = _whole_words(_alternation(DEVICE_TERMS))
PSEUDO_NEGATION_PATTERN = _whole_words(_alternation(PSEUDO_NEGATIONS))
PRE_NEGATION_PATTERN = _whole_words(_alternation(PRE_NEGATIONS))
POST_NEGATION_PATTERN = _whole_words(_alternation(POST_NEGATIONS))
UNCERTAINTY_PATTERN = _whole_words(_alternation(UNCERTAINTY))
PREDICTION_PATTERN = re.compile(rf"^[\s,]*(?:{_alternation(PREDICTION_CUES)})(?:\s+(?:an?|the|either|early))?[\s,]*$")
SCOPE_TERMINATOR_PATTERN = _whole_words(_alternation(SCOPE_TERMINATORS))
CLAUSE_BREAK_PATTERN = re.compile(CLAUSE_BREAKS)
HEART_SIZE = tuple((re.compile(rf"\b(?:{pattern})\b"), presence) for pattern, presence in HEART_SIZE_PATTERNS)


def lesion_type_of(entity: str | None) -> str | None:
    """Lesion type among LESION_TYPES for an entity name or surface term (any case), or None."""
    if not entity:
        return None
    key = " ".join(entity.lower().split())
    if key in LESION_TYPES:
        return key
    if key in TERM_TO_ENTITY:
        return ENTITY_LESION_TYPE[TERM_TO_ENTITY[key]]
    found = [match for match in FINDING_PATTERN.finditer(key)]
    types = {ENTITY_LESION_TYPE[TERM_TO_ENTITY[" ".join(match.group(0).split())]] for match in found}
    types.discard(None)
    return types.pop() if len(types) == 1 else None


def lexicon_markdown() -> str:
    """The whole lexicon as Markdown (``docs/report_lexicon.md`` is this text; a test keeps them equal)."""
    lines = ["# Rules backend lexicon", "",
             "Generated from `mimic_ils/report/lexicon.py` by `python -m mimic_ils.report.lexicon`; do not edit.", "",
             "## Finding terms", "", "| entity | lesion type | surface terms |", "|---|---|---|"]
    for entity, (lesion, terms) in FINDING_TERMS.items():
        lines.append(f"| {entity} | {lesion or '—'} | {', '.join(terms)} |")
    cue_lists = (("Devices (never findings; masked first)", DEVICE_TERMS),
                 ("Pseudo-negations (not negations)", PSEUDO_NEGATIONS), ("Negations before a finding", PRE_NEGATIONS),
                 ("Negations after a finding", POST_NEGATIONS), ("Uncertainty cues", UNCERTAINTY),
                 ("Prediction cues (X represents Y)", PREDICTION_CUES),
                 ("Negation scope terminators", SCOPE_TERMINATORS))
    for title, terms in cue_lists:
        lines += ["", f"## {title}", "", ", ".join(f"`{term}`" for term in terms)]
    lines += ["", "## Clause breaks (regular expression)", "", f"`{CLAUSE_BREAKS}`", "",
              "## Heart size statements", "", "| pattern | presence |", "|---|---|"]
    lines += [f"| `{pattern.replace('|', chr(92) + '|')}` | {presence or 'positive (negation cues apply)'} |"
              for pattern, presence in HEART_SIZE_PATTERNS]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(lexicon_markdown(), end="")
