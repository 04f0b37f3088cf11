"""The rules backend on the failure classes seen on real reports (issue 13), ten or more made-up sentences each.

Each class has its own checker: location classes compare ``(lesion_type, lung labels)`` of the findings that have a
lesion type; hedge classes the certainty; presence classes the presence. Sentences are ours, written to the class,
not copied from any report.
"""

from __future__ import annotations

import pytest

from mimic_ils.report.rules import RulesBackend, structure_sentence
from mimic_ils.schema import LESION_TYPES, Section

RUL, RML, RLL = "lung upper lobe right", "lung middle lobe right", "lung lower lobe right"
LUL, LLL = "lung upper lobe left", "lung lower lobe left"
R_BASE, L_BASE, R_LUNG, L_LUNG = "right lung base", "left lung base", "right lung", "left lung"
R_MID, L_MID, R_UP, L_UP = "right mid zone lung", "left mid zone lung", "right upper zone lung", "left upper zone lung"
R_APEX, L_APEX = "right apical zone lung", "left apical zone lung"
BASES, LUNGS = {R_BASE, L_BASE}, {R_LUNG, L_LUNG}


def lesions(sentence: str) -> list[tuple[str, set[str]]]:
    return [(f.lesion_type, set(f.locations)) for f in structure_sentence(sentence, 1) if f.lesion_type]


def section_lesions(text: str) -> list[tuple[str, set[str]]]:
    found = RulesBackend().structure(Section("findings", text))
    return [(f.lesion_type, set(f.locations)) for f in found if f.lesion_type and f.is_positive]


LOCATION_CLASSES = {
    "inferred type keeps the opacity's place": [
        ("Subtle right base opacity, perhaps scarring or atelectasis.", [("atelectasis", {R_BASE})]),
        ("Left lower lobe opacity, likely atelectasis or pneumonia.", [("atelectasis", {LLL})]),
        ("Right basilar opacity, atelectasis versus pneumonia.", [("atelectasis", {R_BASE})]),
        ("Patchy left basilar opacity which may represent atelectasis or early pneumonia.",
         [("atelectasis", {L_BASE})]),
        ("Opacity in the right lower lobe could be atelectasis versus consolidation.", [("atelectasis", {RLL})]),
        ("Increased right perihilar opacity, likely edema or infection.", [("edema", {R_MID})]),
        ("Left mid lung opacity, possibly scarring versus pneumonia.", [("pneumonia", {L_MID})]),
        ("Streaky left base opacities, most likely atelectasis.", [("atelectasis", {L_BASE})]),
        ("Right upper lobe opacity may reflect pneumonia or aspiration.", [("pneumonia", {RUL})]),
        ("Hazy opacity at the left base, either atelectasis or pneumonia.", [("atelectasis", {L_BASE})]),
        ("Left lower lobe consolidation, infection versus aspiration.", [("pneumonia", {LLL})]),
        ("Right lower lobe opacity, scarring, atelectasis or pneumonia.", [("atelectasis", {RLL})]),
    ],
    "a side word is not eaten by a non-lung place": [
        ("Left pleural opacity is unchanged.", [("opacity", {L_LUNG})]),
        ("There is a right pleural-based opacity.", [("opacity", {R_LUNG})]),
        ("Small left pleural effusion.", [("effusion", {L_BASE})]),
        ("Loculated right pleural effusion.", [("effusion", {R_BASE})]),
        ("Left hilar opacity.", [("opacity", {L_MID})]),
        ("Right hilar consolidation.", [("consolidation", {R_MID})]),
        ("Left costophrenic angle opacity.", [("opacity", {L_BASE})]),
        ("Opacity along the right pleural surface.", [("opacity", {R_LUNG})]),
        ("Left pleural fluid is again seen.", [("effusion", {L_BASE})]),
        ("Right-sided pleural effusion.", [("effusion", {R_BASE})]),
        ("Right paratracheal opacity.", [("opacity", set())]),  # mediastinum: no lung label
        ("Left juxtahilar opacity.", [("opacity", {L_MID})]),
    ],
    "a coordinated finding after a place shares its side": [
        ("Right basal consolidation and a small effusion.", [("consolidation", {R_BASE}), ("effusion", {R_BASE})]),
        ("Left lower lobe atelectasis and small effusion.", [("atelectasis", {LLL}), ("effusion", {L_BASE})]),
        ("Left basilar opacity and small pleural effusion.", [("opacity", {L_BASE}), ("effusion", {L_BASE})]),
        ("Left base atelectasis and trace effusion.", [("atelectasis", {L_BASE}), ("effusion", {L_BASE})]),
        ("Right upper lobe opacity and a small effusion.", [("opacity", {RUL}), ("effusion", {R_BASE})]),
        ("Bibasilar atelectasis and small effusions.", [("atelectasis", BASES), ("effusion", BASES)]),
        ("Left lower lobe collapse and a moderate effusion.", [("atelectasis", {LLL}), ("effusion", {L_BASE})]),
        ("Right lower lobe consolidation and atelectasis.", [("consolidation", {RLL}), ("atelectasis", {RLL})]),
        ("Left upper lobe pneumonia and a small effusion.", [("pneumonia", {LUL}), ("effusion", {L_BASE})]),
        ("Right middle lobe opacity and small effusion.", [("opacity", {RML}), ("effusion", {R_BASE})]),
        # diffuse findings and the heart keep their own places
        ("Right lower lobe pneumonia and mild pulmonary edema.", [("pneumonia", {RLL}), ("edema", LUNGS)]),
        ("Left lower lobe atelectasis and cardiomegaly.", [("atelectasis", {LLL}), ("cardiomegaly", set())]),
    ],
    "a place after a comma or at the end": [
        ("Discoid atelectasis, seen in the left mid zone.", [("atelectasis", {L_MID})]),
        ("Atelectasis is noted, predominantly at the right base.", [("atelectasis", {R_BASE})]),
        ("Patchy opacity, right lower lobe.", [("opacity", {RLL})]),
        ("Linear atelectasis, left lung base.", [("atelectasis", {L_BASE})]),
        ("Small effusion, left.", [("effusion", {L_BASE})]),
        ("Consolidation has developed, most prominent in the right upper lobe.", [("consolidation", {RUL})]),
        ("New opacity, also at the left base.", [("opacity", {L_BASE})]),
        ("Plate-like atelectasis, seen at both bases.", [("atelectasis", BASES)]),
        ("Subsegmental atelectasis, noted in the lingula.", [("atelectasis", {LUL})]),
        ("Focal consolidation, right middle lobe, concerning for pneumonia.", [("pneumonia", {RML})]),
        ("An effusion is present on the right.", [("effusion", {R_BASE})]),
        ("Minimal atelectasis, left lower lobe.", [("atelectasis", {LLL})]),
    ],
    "with adjacent / associated X": [
        ("Large left effusion with adjacent compressive atelectasis.",
         [("effusion", {L_BASE}), ("atelectasis", {L_BASE})]),
        ("Right lower lobe pneumonia with associated small effusion.", [("pneumonia", {RLL}), ("effusion", {R_BASE})]),
        ("Moderate right pleural effusion with adjacent atelectasis.",
         [("effusion", {R_BASE}), ("atelectasis", {R_BASE})]),
        ("Left effusion with associated basilar atelectasis.", [("effusion", {L_BASE}), ("atelectasis", {L_BASE})]),
        ("Right upper lobe mass with surrounding consolidation.", [("consolidation", {RUL})]),
        ("Small left effusion with overlying atelectasis.", [("effusion", {L_BASE}), ("atelectasis", {L_BASE})]),
        ("Right basilar consolidation with accompanying effusion.",
         [("consolidation", {R_BASE}), ("effusion", {R_BASE})]),
        ("Left lower lobe collapse with an adjacent effusion.", [("atelectasis", {LLL}), ("effusion", {L_BASE})]),
        ("Bilateral effusions with adjacent atelectasis.", [("effusion", BASES), ("atelectasis", BASES)]),
        ("Right middle lobe pneumonia with an associated parapneumonic effusion.",
         [("pneumonia", {RML}), ("effusion", {R_BASE})]),
        ("Moderate left pleural effusion with underlying consolidation.",
         [("effusion", {L_BASE}), ("consolidation", {L_BASE})]),
    ],
    "comparatives mean both sides": [
        ("Small effusions, left more than right.", [("effusion", BASES)]),
        ("Bilateral opacities, right greater than left.", [("opacity", LUNGS)]),
        ("Small effusions, right larger than left.", [("effusion", BASES)]),
        ("Atelectasis at both bases, left worse than right.", [("atelectasis", BASES)]),
        ("Pleural effusions, R > L.", [("effusion", BASES)]),
        ("Small effusions, left greater than right.", [("effusion", BASES)]),
        ("Effusions are left more than right.", [("effusion", BASES)]),
        ("Small left greater than right effusions.", [("effusion", BASES)]),
        ("Bibasilar opacities, left more than right.", [("opacity", BASES)]),
        ("Mild edema and small effusions, right more than left.", [("edema", LUNGS), ("effusion", BASES)]),
        ("Effusions, larger on the left than the right.", [("effusion", BASES)]),
        ("Basilar atelectasis, left greater than right.", [("atelectasis", BASES)]),
    ],
    "a side-less adjective takes the given side": [
        ("Minimal basilar infiltrate at the left base.", [("opacity", {L_BASE})]),
        ("Basilar atelectasis on the right.", [("atelectasis", {R_BASE})]),
        ("Patchy basal opacity in the left lower lung.", [("opacity", {L_BASE})]),
        ("Basilar opacity, right side.", [("opacity", {R_BASE})]),
        ("Mild perihilar edema on the right.", [("edema", {R_MID})]),
        ("Basal atelectasis seen on the left.", [("atelectasis", {L_BASE})]),
        ("Infrahilar opacity on the left.", [("opacity", {L_BASE})]),
        ("Patchy basilar opacities at the right base.", [("opacity", {R_BASE})]),
        ("Perihilar opacity in the right mid lung.", [("opacity", {R_MID})]),
        ("Basilar atelectasis at the left lung base.", [("atelectasis", {L_BASE})]),
        ("Mild basal opacity in the right lower zone.", [("opacity", {R_BASE})]),
        ("Subtle apical opacity on the right.", [("opacity", {R_APEX})]),
        ("Bibasilar atelectasis, greater on the left.", [("atelectasis", BASES)]),  # "bi-" keeps both
    ],
    "split sides": [
        ("Haziness over the right mid and left lower zones.", [("opacity", {R_MID, L_BASE})]),
        ("Opacities in the right upper and left lower lobes.", [("opacity", {RUL, LLL})]),
        ("Consolidation in the right lower and left upper lobes.", [("consolidation", {RLL, LUL})]),
        ("Atelectasis in the left lower and right middle lobes.", [("atelectasis", {LLL, RML})]),
        ("Opacities in the right upper and left mid lung zones.", [("opacity", {R_UP, L_MID})]),
        ("Patchy opacities in the right lower and left lower lobes.", [("opacity", {RLL, LLL})]),
        ("Infiltrates in the left upper and right lower lung fields.", [("opacity", {L_UP, R_BASE})]),
        ("Airspace disease in the right middle and left lower lobes.", [("opacity", {RML, LLL})]),
        ("Opacities at the right apex and left base.", [("opacity", {R_APEX, L_BASE})]),
        ("Consolidation in the right mid and left upper lung zones.", [("consolidation", {R_MID, L_UP})]),
        ("Atelectasis in the right and left lower lobes.", [("atelectasis", {RLL, LLL})]),
    ],
    "bilateral is not overridden by the worst place": [
        ("Diffuse bilateral opacities, worst at the right base.", [("opacity", LUNGS)]),
        ("Bilateral airspace opacities, most pronounced in the left lower lobe.", [("opacity", LUNGS)]),
        ("Bilateral pleural effusions, larger on the right.", [("effusion", BASES)]),
        ("Bilateral opacities, greatest at the lung bases.", [("opacity", LUNGS)]),
        ("Multifocal bilateral opacities, predominantly in the right upper lobe.", [("opacity", LUNGS)]),
        ("Bilateral interstitial opacities, most marked at the left base.", [("opacity", LUNGS)]),
        ("Diffuse bilateral infiltrates, especially in the right lung.", [("opacity", LUNGS)]),
        ("Bilateral patchy consolidation, more prominent on the right.", [("consolidation", LUNGS)]),
        ("Widespread bilateral opacities, particularly in the lower lobes.", [("opacity", LUNGS)]),
        ("Bilateral edema, worse on the left.", [("edema", LUNGS)]),
        ("Bilateral effusions, left greater than right.", [("effusion", BASES)]),
    ],
    "a side-only effusion is at the lung base (Appendix E.4)": [
        ("There is a small right pleural effusion.", [("effusion", {R_BASE})]),
        ("Small left effusion.", [("effusion", {L_BASE})]),
        ("Moderate bilateral pleural effusions.", [("effusion", BASES)]),
        ("Trace right effusion.", [("effusion", {R_BASE})]),
        ("Large left pleural effusion is unchanged.", [("effusion", {L_BASE})]),
        ("Small right-sided pleural effusion.", [("effusion", {R_BASE})]),
        ("Left effusion has increased.", [("effusion", {L_BASE})]),
        ("Right pleural effusion, moderate in size.", [("effusion", {R_BASE})]),
        ("Bilateral small effusions.", [("effusion", BASES)]),
        ("Small effusion on the left.", [("effusion", {L_BASE})]),
        ("Pleural effusion in the right hemithorax.", [("effusion", {R_BASE})]),
        ("Small left apical pleural effusion.", [("effusion", {L_APEX})]),  # a place it names is kept
    ],
    "no location at all: the entity decides": [
        ("Mild pulmonary edema.", [("edema", LUNGS)]),
        ("Moderate interstitial edema.", [("edema", LUNGS)]),
        ("Small effusions.", [("effusion", BASES)]),
        ("Edema has worsened.", [("edema", LUNGS)]),
        ("Mild fluid overload.", [("edema", LUNGS)]),
        ("Findings consistent with mild edema.", [("edema", LUNGS)]),
        ("Pleural effusions have decreased.", [("effusion", BASES)]),
        ("Diffuse opacities.", [("opacity", LUNGS)]),
        ("Multifocal pneumonia.", [("pneumonia", LUNGS)]),
        ("Widespread airspace disease.", [("opacity", LUNGS)]),
        ("Pneumonia.", [("pneumonia", set())]),  # truly unplaceable
        ("Atelectasis.", [("atelectasis", set())]),
    ],
}

CROSS_SENTENCE = [
    ("There is a left basilar opacity. This likely reflects atelectasis.", [("atelectasis", {L_BASE})]),
    ("Right lower lobe consolidation is seen. This is concerning for pneumonia.", [("pneumonia", {RLL})]),
    ("Patchy opacity in the right upper lobe. These findings may represent pneumonia.", [("pneumonia", {RUL})]),
    ("There is a new right perihilar opacity. It may represent edema.", [("edema", {R_MID})]),
    ("Opacity at the left lung base. This could be atelectasis or pneumonia.", [("atelectasis", {L_BASE})]),
    ("A right basilar opacity is present. Findings likely represent aspiration pneumonia.", [("pneumonia", {R_BASE})]),
    ("Left lower lobe consolidation. No effusion.", [("consolidation", {LLL})]),
    ("Increased left basilar opacification. This may reflect worsening atelectasis, although pneumonia cannot be "
     "excluded.", [("atelectasis", {L_BASE}), ("pneumonia", {L_BASE})]),
    ("Right middle lobe opacity. This is new and concerning for pneumonia.", [("pneumonia", {RML})]),
    ("There is consolidation in the left lower lobe. The consolidation likely represents pneumonia.",
     [("consolidation", {LLL}), ("pneumonia", {LLL})]),
    ("Left base opacity. Atelectasis is favored.", [("opacity", {L_BASE}), ("atelectasis", {L_BASE})]),
    ("Bibasilar opacities. These may be due to atelectasis.", [("atelectasis", BASES)]),
]

TENTATIVE = [
    "Cannot exclude a tiny left pleural effusion.",
    "There is suspected right basilar airspace opacity.",
    "Question mild interstitial edema?",
    "There is a suggestion of minimal basilar atelectasis.",
    "Small bilateral effusions suspected.",
    "Can not rule out early pneumonia.",
    "Difficult to exclude a small left effusion.",
    "Questionable left basilar opacity.",
    "There may be a small right effusion.",
    "Suspect mild pulmonary edema.",
    "Equivocal left basilar opacity.",
    "Trace left effusion is questioned.",
    "Possible trace effusion on the right?",
]
DEFINITIVE = ["There is a small right effusion.", "Mild pulmonary edema.", "Left lower lobe atelectasis."]

NOT_ACTIVE_PNEUMONIA = [
    "Calcified nodes reflect an old healed fungal infection.",
    "Calcified granulomas from prior granulomatous infection.",
    "Sequela of prior infection in the right upper lobe.",
    "Scarring from remote infection at the left apex.",
    "Findings consistent with prior tuberculous infection.",
    "Postinfectious scarring in the right lung.",
    "Chronic changes from previous pneumonia.",
    "History of pneumonia.",
    "Residua of old infection at the right base.",
    "Granulomatous disease from prior histoplasmosis infection.",
    "Sequelae of remote pneumonia in the left lower lobe.",
]
ACTIVE_PNEUMONIA = ["New right lower lobe pneumonia.", "Infection is likely.", "Worsening pneumonia."]

NON_LUNG_DENSITY = [
    "A sclerotic density overlies the right humeral head.",
    "Calcified density in the left breast.",
    "Dense opacity projecting over the thoracic spine.",
    "Nipple shadow density over the left lower chest.",
    "Sclerotic density in the T8 vertebral body.",
    "Density overlying the right clavicle.",
    "Opacity projecting over the left scapula.",
    "Soft tissue density in the right axilla.",
    "Bony density at the right sixth rib.",
    "Calcific density in the aortic knob.",
    "Osseous density along the left humerus.",
]
LUNG_DENSITY = ["Dense opacity in the right lower lobe.", "Increased density at the left lung base."]

EVALUATION_FOR = [
    ("Rotation limits evaluation for a small effusion.", "effusion"),
    ("Evaluation for pneumonia is limited by motion.", "pneumonia"),
    ("Limited evaluation of the left base for consolidation.", "consolidation"),
    ("Assessment for small effusions is limited by positioning.", "effusion"),
    ("Low lung volumes limit evaluation for atelectasis.", "atelectasis"),
    ("Please evaluate for edema.", "edema"),
    ("Study obtained to evaluate for pneumonia.", "pneumonia"),
    ("To assess for effusion, a lateral view would help.", "effusion"),
    ("Underpenetrated film limits assessment of the left base for consolidation.", "consolidation"),
    ("Evaluation of the lung bases for atelectasis is limited.", "atelectasis"),
    ("Patient rotation limits assessment for cardiomegaly.", "cardiomegaly"),
]

LEXICON = [
    ("Findings suggest aspiration pneumonitis in the right lower lobe.", ("pneumonia", "positive", "tentative")),
    ("Left lower lobe pneumonitis.", ("pneumonia", "positive", "definitive")),
    ("The left lung base is opaque.", ("opacity", "positive", "definitive")),
    ("The right hemithorax is completely opacified.", ("opacity", "positive", "definitive")),
    ("Opacified right lower lobe.", ("opacity", "positive", "definitive")),
    ("Cardiac size moderately increased on this portable film.", ("cardiomegaly", "positive", "definitive")),
    ("Heart size is borderline normal or slightly enlarged.", ("cardiomegaly", "positive", "tentative")),
    ("Heart size mildly enlarged.", ("cardiomegaly", "positive", "definitive")),
    ("Cardiac silhouette top normal to mildly enlarged.", ("cardiomegaly", "positive", "tentative")),
    ("Heart moderately enlarged.", ("cardiomegaly", "positive", "definitive")),
    ("Heart size is normal.", ("cardiomegaly", "negative", "definitive")),
    ("The cardiac silhouette is at the upper limits of normal.", ("cardiomegaly", "negative", "definitive")),
]

NEGATION_WITH = [
    ("No pneumothorax with trace bilateral effusions.", "effusion"),
    ("No pneumothorax, with small left effusion.", "effusion"),
    ("No consolidation with persistent small right effusion.", "effusion"),
    ("No edema, with stable mild cardiomegaly.", "cardiomegaly"),
    ("No focal consolidation with mild bibasilar atelectasis.", "atelectasis"),
    ("No pneumothorax with moderate left effusion.", "effusion"),
    ("No new consolidation with unchanged left basilar atelectasis.", "atelectasis"),
    ("No effusion with minimal right basilar atelectasis.", "atelectasis"),
    ("No pulmonary edema with small bilateral effusions.", "effusion"),
    ("No pneumothorax with residual small left effusion.", "effusion"),
]
STILL_NEGATED = [
    ("No consolidation or effusion.", {"consolidation", "effusion"}),
    ("No pneumothorax with no effusion.", {"effusion"}),
    ("No effusion with or without loculation.", {"effusion"}),
]

LOCATION_CASES = [(name, sentence, expected) for name, cases in LOCATION_CLASSES.items()
                  for sentence, expected in cases]


def test_every_class_has_ten_sentences():
    counts = {name: len(cases) for name, cases in LOCATION_CLASSES.items()}
    counts.update({"cross-sentence": len(CROSS_SENTENCE), "hedges": len(TENTATIVE),
                   "historical": len(NOT_ACTIVE_PNEUMONIA), "non-lung density": len(NON_LUNG_DENSITY),
                   "evaluation for": len(EVALUATION_FOR), "lexicon": len(LEXICON), "with": len(NEGATION_WITH)})
    assert min(counts.values()) >= 10, counts


@pytest.mark.parametrize(("kind", "sentence", "expected"), LOCATION_CASES, ids=[c[1][:50] for c in LOCATION_CASES])
def test_location_classes(kind, sentence, expected):
    assert lesions(sentence) == expected, kind


@pytest.mark.parametrize(("text", "expected"), CROSS_SENTENCE, ids=[c[0][:50] for c in CROSS_SENTENCE])
def test_place_carried_from_the_sentence_referred_to(text, expected):
    assert section_lesions(text) == expected


def test_predicted_type_records_its_own_sentence():
    (opacity,) = RulesBackend().structure(Section("findings", "There is a left basilar opacity. This likely "
                                                              "reflects atelectasis."))
    assert (opacity.entity, opacity.sentence_index, opacity.predicted_lesion_type) == ("opacity", 1, "atelectasis")
    assert opacity.predicted_lesion_sentence_index == 2 and opacity.certainty == "tentative"
    (same,) = structure_sentence("Left basilar opacity likely reflects atelectasis.", 4)
    assert same.predicted_lesion_sentence_index == 4
    (plain,) = structure_sentence("Left basilar opacity.", 4)
    assert plain.predicted_lesion_sentence_index is None


@pytest.mark.parametrize("sentence", TENTATIVE)
def test_hedge_before_or_after_the_finding(sentence):
    found = [f for f in structure_sentence(sentence, 1) if f.lesion_type]
    assert found and all(f.is_positive and f.certainty == "tentative" for f in found), found


@pytest.mark.parametrize("sentence", DEFINITIVE)
def test_plain_statements_stay_definitive(sentence):
    found = [f for f in structure_sentence(sentence, 1) if f.lesion_type]
    assert found and all(f.certainty == "definitive" for f in found)


@pytest.mark.parametrize("sentence", NOT_ACTIVE_PNEUMONIA)
def test_historical_infection_is_not_pneumonia(sentence):
    assert not [f for f in structure_sentence(sentence, 1) if f.lesion_type == "pneumonia" and f.is_positive]


@pytest.mark.parametrize("sentence", ACTIVE_PNEUMONIA)
def test_active_infection_is_pneumonia(sentence):
    assert [f for f in structure_sentence(sentence, 1) if f.lesion_type == "pneumonia" and f.is_positive]


@pytest.mark.parametrize("sentence", NON_LUNG_DENSITY)
def test_densities_of_bone_soft_tissue_and_vessels_are_not_lung_opacities(sentence):
    assert not [f for f in structure_sentence(sentence, 1) if f.lesion_type == "opacity"]


@pytest.mark.parametrize("sentence", LUNG_DENSITY)
def test_lung_densities_are_opacities(sentence):
    assert [f.lesion_type for f in structure_sentence(sentence, 1)] == ["opacity"]


@pytest.mark.parametrize(("sentence", "lesion"), EVALUATION_FOR)
def test_evaluation_for_x_states_nothing_about_x(sentence, lesion):
    assert not [f for f in structure_sentence(sentence, 1) if f.lesion_type == lesion and f.is_positive]


@pytest.mark.parametrize(("sentence", "expected"), LEXICON)
def test_lexicon_gaps(sentence, expected):
    found = [(f.lesion_type, f.presence, f.certainty) for f in structure_sentence(sentence, 1) if f.lesion_type]
    assert found == [expected]


@pytest.mark.parametrize(("sentence", "lesion"), NEGATION_WITH)
def test_negation_stops_at_with_and_a_new_finding(sentence, lesion):
    found = {f.lesion_type: f.presence for f in structure_sentence(sentence, 1) if f.lesion_type}
    assert found[lesion] == "positive", found


@pytest.mark.parametrize(("sentence", "negated"), STILL_NEGATED)
def test_negation_still_covers_lists(sentence, negated):
    found = {f.lesion_type: f.presence for f in structure_sentence(sentence, 1) if f.lesion_type}
    assert all(found[lesion] == "negative" for lesion in negated), found


def test_location_source_is_recorded():
    (own,) = structure_sentence("Small left pleural effusion.", 1)
    (entity,) = structure_sentence("Mild pulmonary edema.", 1)
    (none,) = structure_sentence("Pneumonia.", 1)
    assert (own.location_source, entity.location_source, none.location_source) == ("report", "entity", None)
    carried = RulesBackend().structure(Section("findings", "Left base opacity. Atelectasis is favored."))
    assert [f.location_source for f in carried] == ["report", "context"]


def test_all_lesion_types_are_known():
    for cases in LOCATION_CLASSES.values():
        for _, expected in cases:
            assert all(lesion in LESION_TYPES for lesion, _ in expected)
