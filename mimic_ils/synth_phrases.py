"""The sentence phrase bank of the synthetic cohort's radiology reports, as plain data.

The generator (:mod:`mimic_ils.synth`) writes every lesion of a phantom as exactly one sentence built from these
tables, so the report stage can be checked against the ground truth: a rule-based parser must recover each
lesion's type, presence (positive), certainty and lung side from the sentence (``phrase`` in the sidecar).

Conventions the generator keeps (the report-stage tests may rely on them):

* one lesion per sentence; every lesion sentence names its lesion type with a word of ``LESION_WORDS``;
* a lesion sentence is ``definitive`` unless its template contains one of ``HEDGE_CUES`` (then ``tentative``);
* the lung side of a focal lesion comes from its location phrase (``LOCATIONS``); effusions name their side
  ("right", "left", "bilateral"); edema always names both lungs ("bilateral", "both lungs"); cardiomegaly has no
  lung side;
* "X may represent atelectasis" / "opacity concerning for pneumonia": the lesion is the *inferred* type (the
  sentence's last lesion word), tentative;
* ``NEGATIONS`` are only written for lesion types the study does not have (they form the sidecar's ``negated``);
* ``OTHER_FINDINGS`` and ``NORMAL_SENTENCES`` never mention a lesion type in the positive.

Templates are ``str.format`` strings with ``{adj}`` (a location adjective, e.g. "right lower lobe", "bibasilar"),
``{noun}`` (a location noun phrase after "the", e.g. "right lung base"), ``{side}`` ("right"/"left"/"bilateral")
and ``{size}`` ("small", "moderate"). The first letter of a sentence is capitalised after formatting.
"""

from __future__ import annotations

# Location keys of focal lesions: lung labels occupied (schema.LUNG_LABELS), lung side, adjective forms, noun forms,
# and the region of the phantom the lesion is drawn in ("zone:<label>" or "lobe:<label>" or "lung:<label>",
# "retrocardiac" = the medial half of the left lung base).
LOCATIONS: dict[str, dict[str, object]] = {
    "right_base": {
        "labels": ("right lung base",), "side": "right", "region": ("right lung base",),
        "adj": ("right basilar", "right base"), "noun": ("right lung base", "right base"),
    },
    "left_base": {
        "labels": ("left lung base",), "side": "left", "region": ("left lung base",),
        "adj": ("left basilar", "left base"), "noun": ("left lung base", "left base"),
    },
    "bibasilar": {
        "labels": ("right lung base", "left lung base"), "side": "bilateral",
        "region": ("right lung base", "left lung base"),
        "adj": ("bibasilar",), "noun": ("lung bases bilaterally", "bilateral lung bases"),
    },
    "right_upper_zone": {
        "labels": ("right upper zone lung",), "side": "right", "region": ("right upper zone lung",),
        "adj": ("right upper lung",), "noun": ("right upper lung", "right upper zone"),
    },
    "left_upper_zone": {
        "labels": ("left upper zone lung",), "side": "left", "region": ("left upper zone lung",),
        "adj": ("left upper lung",), "noun": ("left upper lung", "left upper zone"),
    },
    "right_mid_zone": {
        "labels": ("right mid zone lung",), "side": "right", "region": ("right mid zone lung",),
        "adj": ("right mid lung",), "noun": ("right mid lung", "right mid lung zone"),
    },
    "left_mid_zone": {
        "labels": ("left mid zone lung",), "side": "left", "region": ("left mid zone lung",),
        "adj": ("left mid lung",), "noun": ("left mid lung", "left mid lung zone"),
    },
    "right_apex": {
        "labels": ("right apical zone lung",), "side": "right", "region": ("right apical zone lung",),
        "adj": ("right apical",), "noun": ("right apex", "right lung apex"),
    },
    "left_apex": {
        "labels": ("left apical zone lung",), "side": "left", "region": ("left apical zone lung",),
        "adj": ("left apical",), "noun": ("left apex", "left lung apex"),
    },
    "right_upper_lobe": {
        "labels": ("lung upper lobe right",), "side": "right", "region": ("lung upper lobe right",),
        "adj": ("right upper lobe",), "noun": ("right upper lobe",),
    },
    "right_middle_lobe": {
        "labels": ("lung middle lobe right",), "side": "right", "region": ("lung middle lobe right",),
        "adj": ("right middle lobe",), "noun": ("right middle lobe",),
    },
    "right_lower_lobe": {
        "labels": ("lung lower lobe right",), "side": "right", "region": ("lung lower lobe right",),
        "adj": ("right lower lobe",), "noun": ("right lower lobe",),
    },
    "left_upper_lobe": {
        "labels": ("lung upper lobe left",), "side": "left", "region": ("lung upper lobe left",),
        "adj": ("left upper lobe",), "noun": ("left upper lobe",),
    },
    "left_lower_lobe": {
        "labels": ("lung lower lobe left",), "side": "left", "region": ("lung lower lobe left",),
        "adj": ("left lower lobe",), "noun": ("left lower lobe",),
    },
    "retrocardiac": {
        "labels": ("left lung base",), "side": "left", "region": ("retrocardiac",),
        "adj": ("retrocardiac",), "noun": ("retrocardiac region",),
    },
    "right_lung": {
        "labels": ("right lung",), "side": "right", "region": ("right lung",),
        "adj": ("right-sided",), "noun": ("right lung",),
    },
    "left_lung": {
        "labels": ("left lung",), "side": "left", "region": ("left lung",),
        "adj": ("left-sided",), "noun": ("left lung",),
    },
}

# Which location keys each focal lesion type may be drawn in (weights follow how often radiologists use them).
# "retrocardiac" is not drawn: the paper's location mapping (Fig. 10) calls it a lateral view location, so a lesion
# described that way is never grounded on the frontal image.
FOCAL_LOCATIONS: dict[str, tuple[str, ...]] = {
    "atelectasis": ("bibasilar", "right_base", "left_base", "left_lower_lobe", "right_middle_lobe"),
    "pneumonia": ("right_lower_lobe", "left_lower_lobe", "right_upper_lobe", "right_middle_lobe", "right_base",
                  "left_base", "left_upper_lobe"),
    "consolidation": ("right_lower_lobe", "left_lower_lobe", "right_upper_lobe", "right_base", "left_base",
                      "bibasilar", "right_mid_zone"),
    "opacity": ("right_upper_zone", "left_upper_zone", "right_mid_zone", "left_mid_zone", "right_base", "left_base",
                "right_apex", "left_apex", "right_lung", "left_lung", "bibasilar"),
}

# Lesion sentences: type -> certainty -> templates. Focal types use {adj}/{noun}; effusion uses {side}/{size};
# edema and cardiomegaly use {size} only. Comparison wording ("unchanged", "new", "increased") keeps a lesion positive.
LESION_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "atelectasis": {
        "definitive": (
            "There is {adj} atelectasis.",
            "{adj} atelectasis is present.",
            "Atelectasis is seen in the {noun}.",
            "{adj} atelectasis is unchanged from the prior study.",
        ),
        "tentative": (
            "{adj} opacities may represent atelectasis.",
            "Possible {adj} atelectasis.",
            "Streaky opacity in the {noun} likely reflects atelectasis.",
        ),
    },
    "pneumonia": {
        "definitive": (
            "There is a {adj} pneumonia.",
            "Findings in the {noun} are consistent with pneumonia.",
            "{adj} pneumonia has increased since the prior study.",
        ),
        "tentative": (
            "Possible pneumonia in the {noun}.",
            "{adj} opacity is concerning for pneumonia.",
            "Pneumonia in the {noun} cannot be excluded.",
        ),
    },
    "consolidation": {
        "definitive": (
            "There is {adj} consolidation.",
            "Focal consolidation is seen in the {noun}.",
            "New consolidation in the {noun}.",
        ),
        "tentative": (
            "Possible {adj} consolidation.",
            "Probable early consolidation in the {noun}.",
        ),
    },
    "opacity": {
        "definitive": (
            "There is a patchy opacity in the {noun}.",
            "{adj} airspace opacity is again seen.",
            "A new opacity is present in the {noun}.",
        ),
        "tentative": (
            "There is a possible opacity in the {noun}.",
            "Subtle {adj} opacity may be present.",
        ),
    },
    "effusion": {
        "definitive": (
            "There is a {size} {side} pleural effusion.",
            "{size} {side} pleural effusion is unchanged.",
            "A {size} {side} pleural effusion is present.",
        ),
        "tentative": (
            "Possible {size} {side} pleural effusion.",
            "Blunting of the {side} costophrenic angle may reflect a {size} pleural effusion.",
        ),
    },
    "edema": {
        "definitive": (
            "There is {size} bilateral pulmonary edema.",
            "{size} pulmonary edema is present in both lungs.",
            "Diffuse bilateral interstitial edema has increased since the prior study.",
        ),
        "tentative": (
            "Bilateral hazy opacities may represent {size} pulmonary edema.",
            "Possible {size} bilateral pulmonary edema.",
        ),
    },
    "cardiomegaly": {
        "definitive": (
            "There is {size} cardiomegaly.",
            "The heart is enlarged.",
            "{size} cardiomegaly is unchanged.",
        ),
        "tentative": (
            "Possible {size} cardiomegaly.",
            "The cardiac silhouette may be mildly enlarged, suggesting cardiomegaly.",
        ),
    },
}

# Side words of effusion sentences, and the lung labels an effusion occupies per side.
EFFUSION_SIDES: dict[str, tuple[str, ...]] = {
    "right": ("right lung base",),
    "left": ("left lung base",),
    "bilateral": ("right lung base", "left lung base"),
}
SIZES = {"effusion": ("small", "moderate"), "edema": ("mild", "moderate"), "cardiomegaly": ("mild", "moderate")}

# Words that name each lesion type in the sentences above (a parser's lexicon needs at least these).
LESION_WORDS: dict[str, tuple[str, ...]] = {
    "atelectasis": ("atelectasis",),
    "pneumonia": ("pneumonia",),
    "consolidation": ("consolidation",),
    "opacity": ("opacity", "opacities"),
    "effusion": ("pleural effusion", "effusion", "effusions"),
    "edema": ("pulmonary edema", "interstitial edema", "edema"),
    "cardiomegaly": ("cardiomegaly", "heart is enlarged"),
}
HEDGE_CUES = ("possible", "may represent", "may reflect", "likely reflects", "concerning for", "cannot be excluded",
              "probable", "may be", "suggesting")

# Negation sentences: each negates the listed lesion types (written only when none of them is present).
NEGATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("No pleural effusion.", ("effusion",)),
    ("There is no pleural effusion.", ("effusion",)),
    ("No focal consolidation.", ("consolidation",)),
    ("There is no focal consolidation, pleural effusion or pneumothorax.", ("consolidation", "effusion")),
    ("No pleural effusion, pulmonary edema or pneumothorax.", ("effusion", "edema")),
    ("No pulmonary edema.", ("edema",)),
    ("There is no evidence of pneumonia.", ("pneumonia",)),
    ("No cardiomegaly.", ("cardiomegaly",)),
    ("No atelectasis.", ("atelectasis",)),
    ("No focal airspace opacity.", ("opacity",)),
)

# Non-lesion findings (name in the sidecar's ``other_findings``, sentence in the report).
OTHER_FINDINGS: tuple[tuple[str, str], ...] = (
    ("pacemaker", "A left-sided pacemaker is in place with leads in the right atrium and right ventricle."),
    ("degenerative changes", "Mild degenerative changes are noted in the thoracic spine."),
    ("sternotomy wires", "Median sternotomy wires are intact."),
    ("endotracheal tube", "An endotracheal tube terminates 4 cm above the carina."),
    ("nasogastric tube", "A nasogastric tube courses below the diaphragm, tip not seen."),
    ("hiatal hernia", "A small hiatal hernia is noted."),
    ("tortuous aorta", "The thoracic aorta is tortuous."),
)

# Statements of normality; the ``requires_absent`` lesion types must be absent for the sentence to be written.
NORMAL_SENTENCES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("No pneumothorax.", ()),
    ("There is no pneumothorax.", ()),
    ("Hilar contours are normal.", ()),
    ("No acute osseous abnormality.", ()),
    ("The cardiomediastinal silhouette is normal.", ("cardiomegaly",)),
    ("Heart size is normal.", ("cardiomegaly",)),
    ("The lungs are clear.", ("atelectasis", "pneumonia", "consolidation", "opacity", "edema", "effusion")),
)
NO_ACUTE_IMPRESSION = ("No acute cardiopulmonary process.", "No acute intrathoracic abnormality.")

# Indications that relate to none of the seven lesion types in particular, or to several (shortness of breath)
INDICATIONS = (
    "___M with cough and fever, evaluate for pneumonia.",
    "___F with shortness of breath.",
    "History: ___M with chest pain.",
    "___F with hypoxia, assess for edema.",
    "___M status post fall, evaluate for acute process.",
    "___F with new oxygen requirement.",
)
# Indications and histories written for a study that shows the lesion type (``compose_report`` draws one of them for
# most studies with lesions): the reasoning pairs (mimic_ils.reasoning) map their cues back to lesion types.
INDICATIONS_BY_LESION = {
    "cardiomegaly": ("___M with known heart failure and a new murmur.", "___F with hypertension and dyspnea on "
                     "exertion.", "___M with leg swelling, elevated BNP."),
    "pneumonia": ("___F with fever and productive cough // eval for pneumonia", "___M with fevers, chills and "
                  "leukocytosis.", "___F with cough and fever."),
    "atelectasis": ("___M post-operative day 2, desaturation.", "___F s/p CABG with hypoxia.", "___M intubated, "
                    "assess lungs."),
    "opacity": ("___F with cough.", "___M with possible aspiration.", "___F with fever."),
    "consolidation": ("___M with fever and cough, rule out infiltrate.", "___F with productive cough."),
    "edema": ("___F with history of CHF, shortness of breath.", "___M with volume overload and orthopnea.",
              "___F with weight gain and crackles."),
    "effusion": ("___M with decreased breath sounds at the left base.", "___F with shortness of breath, evaluate "
                 "for effusion.", "___M with pleuritic chest pain."),
}
CLINICAL_HEADERS = ("INDICATION", "HISTORY", "REASON FOR EXAMINATION")
EXAMINATIONS = {"PA": "CHEST (PA AND LAT)", "AP": "CHEST (PORTABLE AP)"}
COMPARISONS = ("None.", "___.", "Chest radiograph from ___.", "Prior chest radiographs ___ through ___.")
COMPARISON_OPENERS = ("Compared to the prior study, ", "As compared to the previous radiograph, ", "")
