"""Why the film was taken: clinical cues read from a report's INDICATION and HISTORY sections, and the documented
mapping from each cue to the lesion types it could be explained by (the ``reasoning`` question type,
``mimic_ils.reasoning``; ``docs/reasoning.md``).

MIMIC-CXR reports open with a header block: ``INDICATION: ___F with fever and productive cough // eval for
pneumonia``, ``HISTORY: ___-year-old man with shortness of breath``, ``REASON FOR EXAMINATION: ...``. The official
section parser (:func:`mimic_ils.report.sections.split_sections`) names them ``indication`` and ``history`` (the
clinical-information variants included). :func:`clinical_cues` reads them into *cue keys* from a fixed table
(:data:`CUES`), never keeping the report's words: a symptom ("fever", "shortness of breath"), a sign ("crackles"), a
history ("heart failure", "recent surgery"), or a clinical question about one of the seven lesion types ("eval for
pneumonia" → ``suspected:pneumonia``). A cue negated in its clause ("no fever", "denies cough"; "afebrile" is simply
not fever) is dropped. The reasoning generator renders each cue with its own fixed phrase (:data:`CUE_PHRASES`), so
nothing of the report text reaches an instruction.

:data:`CUE_LESIONS` is the mapping from cues to lesion types: the lesions a radiologist would look for first when the
film was requested for that reason. A cue that maps to no lesion (chest pain, a fall, a line check) is kept, so that
the ledger can say the indication maps to no lesion. Pure Python; no model.
"""

from __future__ import annotations

import re

from mimic_ils.report.lexicon import FINDING_PATTERN, lesion_type_of
from mimic_ils.report.sections import split_sections
from mimic_ils.schema import LESION_TYPES, ClinicalContext

CLINICAL_SECTIONS = ("indication", "history")
SUSPECTED = "suspected:"

# cue key -> regular expression (lower-cased text, whole words)
CUES: dict[str, str] = {
    "fever": r"fevers?|febrile|pyrexia|temperature of \d+|temp(?:erature)? (?:to|of) \d+|t ?max \d+",
    "chills": r"chills|rigors",
    "productive cough": r"productive cough|cough(?:ing)? (?:productive of|with|up) (?:\w+ )?sputum|sputum",
    "cough": r"cough(?:s|ing)?",
    "leukocytosis": r"leukocytosis|elevated (?:wbc|white (?:blood )?(?:cell )?count)|(?:high|rising) white count",
    "sepsis": r"sepsis|septic|bacteremia",
    "dyspnea": r"shortness of breath|short of breath|sob|dyspnea|dyspnoea|dyspneic|doe|breathless(?:ness)?"
               r"|difficulty breathing|respiratory distress",
    "hypoxia": r"hypoxi[ac]|hypoxemi[ac]|desat(?:uration|urations|urating|s)?|low (?:o2|oxygen) sat(?:uration)?s?"
               r"|(?:new|increas(?:ed|ing)) (?:o2|oxygen) requirements?",
    "tachypnea": r"tachypnea|tachypneic|tachypnoea",
    "heart failure": r"chf|heart failure|cardiomyopathy|(?:reduced|low|depressed) ef|hfref|hfpef",
    "volume overload": r"volume overload(?:ed)?|fluid overload(?:ed)?|overloaded|volume up",
    "leg swelling": r"(?:leg|lower extremity|le|bilateral lower extremity|peripheral|pedal) (?:swelling|edema)"
                    r"|anasarca",
    "weight gain": r"weight gain",
    "orthopnea": r"orthopnea|pnd|paroxysmal nocturnal dyspnea",
    "raised bnp": r"(?:elevated|high|rising|increased) (?:bnp|pro-?bnp)|bnp (?:of )?\d+",
    "crackles": r"crackles|rales|crepitations",
    "reduced breath sounds": r"(?:decreased|diminished|absent|reduced) breath sounds|dullness(?: to percussion)?",
    "recent surgery": r"post-?op(?:erative)?(?: day \d+)?|pod ?\d+|s/p (?:\w+ ){0,3}(?:surgery|resection|cabg|repair"
                      r"|lobectomy|thoracotomy|sternotomy|esophagectomy|avr|mvr)|after surgery|cabg|thoracotomy",
    "ventilation": r"intubat(?:ed|ion)|mechanically ventilated|on (?:the )?vent(?:ilator)?",
    "aspiration": r"aspirat(?:ion|ed|ing)|choking",
    "pleuritic pain": r"pleuritic(?: chest)?(?: pain)?",
    "murmur": r"murmur",
    "hypertension": r"hypertension|htn",
    "chest pain": r"chest pain|chest discomfort|chest pressure",
    "trauma": r"fall|falls|fell|trauma|mvc|motor vehicle (?:collision|accident)|assault",
    "device check": r"(?:line|tube|picc|ett|catheter|port) (?:placement|position|positioning)|placement of",
}

# cue -> lesion types it could be explained by (docs/reasoning.md states this table)
PNEUMONIA_LIKE = ("pneumonia", "consolidation", "opacity")
CUE_LESIONS: dict[str, tuple[str, ...]] = {
    "fever": PNEUMONIA_LIKE,
    "chills": PNEUMONIA_LIKE,
    "productive cough": PNEUMONIA_LIKE,
    "cough": PNEUMONIA_LIKE,
    "leukocytosis": PNEUMONIA_LIKE,
    "sepsis": PNEUMONIA_LIKE,
    "dyspnea": ("edema", "effusion", "cardiomegaly", "pneumonia", "atelectasis", "consolidation", "opacity"),
    "hypoxia": ("atelectasis", "pneumonia", "edema", "effusion", "consolidation", "opacity"),
    "tachypnea": ("pneumonia", "edema", "atelectasis", "consolidation"),
    "heart failure": ("edema", "effusion", "cardiomegaly"),
    "volume overload": ("edema", "effusion"),
    "leg swelling": ("edema", "effusion", "cardiomegaly"),
    "weight gain": ("edema", "effusion"),
    "orthopnea": ("edema", "effusion", "cardiomegaly"),
    "raised bnp": ("edema", "effusion", "cardiomegaly"),
    "crackles": ("edema", "pneumonia", "consolidation"),
    "reduced breath sounds": ("effusion", "atelectasis"),
    "recent surgery": ("atelectasis", "effusion"),
    "ventilation": ("atelectasis", "pneumonia"),
    "aspiration": ("pneumonia", "atelectasis", "consolidation", "opacity"),
    "pleuritic pain": ("effusion", "pneumonia"),
    "murmur": ("cardiomegaly",),
    "hypertension": ("cardiomegaly",),
    "chest pain": (),
    "trauma": (),
    "device check": (),
    **{f"{SUSPECTED}{lesion}": (lesion,) for lesion in LESION_TYPES},
}

# cue -> the words an instruction or an answer uses for it (never the report's own words)
CUE_PHRASES: dict[str, str] = {
    "fever": "fever", "chills": "chills", "productive cough": "a productive cough", "cough": "a cough",
    "leukocytosis": "a raised white cell count", "sepsis": "signs of sepsis", "dyspnea": "shortness of breath",
    "hypoxia": "low oxygen saturation", "tachypnea": "rapid breathing", "heart failure": "known heart failure",
    "volume overload": "suspected volume overload", "leg swelling": "swollen legs", "weight gain": "weight gain",
    "orthopnea": "breathlessness when lying flat", "raised bnp": "a raised natriuretic peptide",
    "crackles": "crackles on auscultation", "reduced breath sounds": "reduced breath sounds",
    "recent surgery": "recent surgery", "ventilation": "mechanical ventilation", "aspiration": "possible aspiration",
    "pleuritic pain": "pleuritic chest pain", "murmur": "a heart murmur", "hypertension": "long-standing hypertension",
    "chest pain": "chest pain", "trauma": "a fall or trauma", "device check": "a check of a tube or line",
}

_NEGATED = re.compile(r"\b(?:no|not|denies|denying|without|negative for|resolved|free of)\b[^,;.]*$")
_CLAUSE_END = re.compile(r"[.;,]|//|\?|\bbut\b|\band\b")
_QUESTION = re.compile(r"\b(?:eval(?:uate|uation)?|r/o|rule out|assess(?:ment)?|concern|question|suspect(?:ed)?|"
                       r"worrisome|c/f|\?|h/o|history of|recent|known|likely|possible|presumed)\b")
_PATTERNS = {key: re.compile(rf"(?<![\w/-])(?:{pattern})(?![\w-])") for key, pattern in CUES.items()}


def mapped_lesions(clinical: ClinicalContext) -> set[str]:
    """Every lesion type a cue of ``clinical`` maps to."""
    return {lesion for cue in clinical.cues for lesion in CUE_LESIONS.get(cue, ())}


def cues_for(clinical: ClinicalContext, lesion: str) -> tuple[str, ...]:
    """The cues of ``clinical`` that map to ``lesion``, in the order they were found."""
    return tuple(cue for cue in clinical.cues if lesion in CUE_LESIONS.get(cue, ()))


def clinical_text(report: str) -> str | None:
    """The report's indication and history sections joined (None when it has neither)."""
    sections = split_sections(report)
    texts = [text.strip() for text, name in zip(sections.texts, sections.names, strict=True)
             if name in CLINICAL_SECTIONS and text.strip()]
    return "\n".join(texts) if texts else None


def clinical_cues(report: str) -> ClinicalContext:
    """The clinical cues of a raw report (its indication and history sections; see the module docstring)."""
    text = clinical_text(report)
    if text is None:
        return ClinicalContext()
    return ClinicalContext(cues_of_text(text), True)


def cues_of_text(text: str) -> tuple[str, ...]:
    """Cue keys found in an indication or history text, not negated in their clause."""
    lowered = " ".join(text.lower().split())
    found = []
    taken: list[tuple[int, int]] = []
    for key, pattern in _PATTERNS.items():  # CUES order: "productive cough" claims its words before "cough"
        for match in pattern.finditer(lowered):
            if any(start < match.end() and match.start() < end for start, end in taken):
                continue
            if _negated(lowered, match.start()):
                continue
            taken.append(match.span())
            if key not in found:
                found.append(key)
    for match in FINDING_PATTERN.finditer(lowered):  # a lesion named in the indication: the clinical question
        lesion = lesion_type_of(match.group(0))
        clause = _clause(lowered, match.start())
        if lesion is None or _NEGATED.search(clause) and not _QUESTION.search(clause):
            continue
        key = f"{SUSPECTED}{lesion}"
        if key not in found:
            found.append(key)
    return tuple(found)


def _clause(text: str, position: int) -> str:
    """The text from the start of the clause holding ``position`` up to it."""
    head = text[:position]
    ends = list(_CLAUSE_END.finditer(head))
    return head[ends[-1].end():] if ends else head


def _negated(text: str, position: int) -> bool:
    return _NEGATED.search(_clause(text, position)) is not None
