"""Instruction-answer pairs (paper Table 2, Sec. 3.2, Appendix C). Pure Python, no arrays.

Templates (exact strings of Table 2):

* basic: ``Segment the [Target] in the [Location].`` -> ``[SEG]`` / ``[SEG] There is no [Target] in the
  [Location].``
* global: ``Segment the [Target].`` -> ``[SEG] It is located in the [Location].`` / ``[SEG] There is no
  [Target].``
* lesion inference: ``Segment the opacity in the [Location] and predict its type.`` -> ``[SEG] It is highly
  suggestive of [Lesion].`` (definitive) / ``[SEG] It possibly reflects [Lesion].`` (tentative) / ``[SEG] There
  is no opacity in the [Location].``

Rules (Appendix C), per image of a study:

* one basic positive per grounded finding, at its grounded locations; a tentative finding's target is "opacity";
* one global positive per lesion type when every positive finding of that type is definitive and grounded at
  exactly its reported locations (its mask is the union of theirs); cardiomegaly is global only, located in the
  heart, and its mask is the heart;
* a lesion-inference positive from every basic positive of pneumonia, atelectasis and edema, whatever the
  certainty, with the answer carrying it;
* negatives, at most one per lesion type: for a type with no positive finding, a basic negative where the report
  denies it ("no effusion on the left"), else in a random lung region; for a type with basic positives, a negative
  made by putting an empty location into one of its positives' basic instruction; negatives whose target is
  "opacity" are basic or, at random, lesion-inference ("There is no opacity in ..."), and a lesion-inference
  negative is always labelled lesion "opacity" (Table 9 has them under opacity only); a type whose negative another
  positive finding contradicts (opacity while atelectasis is reported) only gets one in an empty location;
  cardiomegaly negatives (global) only when the CTR rule allows;
* no negative of an image denies a target at a place that one of the image's positives covers (a tentative
  finding's "opacity" included): such a negative moves to an empty location, or is dropped with its reason.

Across a study's images (:func:`limit_study_negatives`) at most one negative per *target* survives. Across a split
of the build (:func:`choose_global_negatives`) a share of each type's negatives becomes global ("There is no
pneumonia."), as ``PairConfig.negative_global_share`` says (Table 9's proportions by default): of the basic
negatives of types the study has no positive of, the ``round(share x negatives of the type)`` with the smallest
hash of (study, type) are rewritten as global negatives. Global is never chosen per image, so the proportion holds
for the split whatever the mix of studies.

Locations are lung labels; lobes are not valid instruction locations (Table 8), so a lobe is named by its lung,
and zones of a lung that is named as a whole are dropped. Several locations are joined as "right lung base and
left lung base" ("a, b and c" for three). All random choices come from ``numpy.random.default_rng`` seeded with a
SHA-256 hash of the study id, drawn in a fixed order, so the output does not depend on processing order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from mimic_ils.reasoning import Paraphraser, ReasoningConfig, reasoning_pairs
from mimic_ils.schema import (
    HEART_LABEL,
    LESION_TYPES,
    LUNG_LABELS,
    LUNG_REGIONS,
    ZONE_LABELS,
    ClinicalContext,
    FindingOutcome,
    Pair,
)
from rosalia_hf.table2 import (  # Table 2's strings, stated once for pairs, the release importer and the metric
    BASIC_INSTRUCTION,
    BASIC_NEGATIVE,
    BASIC_POSITIVE,
    GLOBAL_INSTRUCTION,
    GLOBAL_NEGATIVE,
    GLOBAL_POSITIVE,
    INFERENCE_DEFINITIVE,
    INFERENCE_INSTRUCTION,
    INFERENCE_NEGATIVE,
    INFERENCE_TENTATIVE,
    REASONING,
    join_locations,
)

OPACITY = "opacity"
_ORDER = {label: index for index, label in enumerate(LUNG_LABELS)}
LOBE_SIDE = {
    "lung lower lobe left": "left lung",
    "lung upper lobe left": "left lung",
    "lung lower lobe right": "right lung",
    "lung middle lobe right": "right lung",
    "lung upper lobe right": "right lung",
}
SIDE_ZONES = {
    "right lung": tuple(zone for zone in ZONE_LABELS if zone.startswith("right ")),
    "left lung": tuple(zone for zone in ZONE_LABELS if zone.startswith("left ")),
}


# Table 9 of the paper: global negatives / all negatives of each lesion type (cardiomegaly negatives are all global).
TABLE9_GLOBAL_NEGATIVE_SHARE = {"pneumonia": 0.02, "atelectasis": 0.12, "opacity": 0.004, "consolidation": 0.04,
                                "edema": 0.02, "effusion": 0.23}


@dataclass(frozen=True)
class PairConfig:
    """The pair rules of Appendix C that a build may change. ``PairConfig.from_dict(config.to_dict())`` round-trips.

    ``negative_conflicts`` lists, per lesion type, the types whose presence makes a study-level negative of it
    false ("there is no opacity" while atelectasis is reported): such a type gets negatives only in empty
    locations; types in ``conflicts_with_untyped`` are treated the same way when a positive finding outside the seven
    types sits in the lungs (a nodule is an opacity). ``opacity_inference_types`` are the types that yield
    lesion-inference pairs. ``negative_global_share`` is, per lesion type but cardiomegaly, the share of a split's
    negatives made global (:func:`choose_global_negatives`; Table 9's by default).
    """

    negative_conflicts: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {"opacity": ("pneumonia", "atelectasis", "consolidation", "edema")}
    )
    conflicts_with_untyped: tuple[str, ...] = ("opacity",)
    opacity_inference_types: tuple[str, ...] = ("pneumonia", "atelectasis", "edema")
    negative_global_share: dict[str, float] = field(default_factory=lambda: dict(TABLE9_GLOBAL_NEGATIVE_SHARE))

    def __post_init__(self) -> None:
        named = {*self.negative_conflicts, *self.conflicts_with_untyped, *self.opacity_inference_types}
        named |= {lesion for types in self.negative_conflicts.values() for lesion in types}
        unknown = named - set(LESION_TYPES)
        if unknown:
            raise ValueError(f"unknown lesion types in pair config: {sorted(unknown)}")
        _check_shares(self.negative_global_share)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/YAML-safe apart from tuples) of every rule."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PairConfig:
        """Build from a (partial) mapping; missing keys keep their defaults, unknown keys raise ``ValueError``."""
        unknown = set(data) - set(PAIR_CONFIG_KEYS)
        if unknown:
            raise ValueError(f"unknown pair config keys: {sorted(unknown)}")
        updates: dict[str, Any] = {}
        for key, value in data.items():
            if key == "negative_conflicts":
                updates[key] = {lesion: tuple(names) for lesion, names in value.items()}
            elif key in ("opacity_inference_types", "conflicts_with_untyped"):
                updates[key] = tuple(value)
            else:
                updates[key] = dict(value)
        return replace(cls(), **updates)


PAIR_CONFIG_KEYS = tuple(f.name for f in fields(PairConfig))


def _check_shares(shares: Mapping[str, float]) -> None:
    """Every lesion type but cardiomegaly (global only), each share in [0, 1]; the key at fault is named."""
    expected = set(TABLE9_GLOBAL_NEGATIVE_SHARE)
    if set(shares) != expected:
        missing, extra = sorted(expected - set(shares)), sorted(set(shares) - expected)
        raise ValueError(f"pair config negative_global_share must give every lesion type but cardiomegaly: "
                         f"missing {missing}, unknown {extra}")
    for lesion, share in shares.items():
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0.0 <= float(share) <= 1.0:
            raise ValueError(f"pair config negative_global_share.{lesion} must be a number in [0, 1], "
                             f"got {share!r}")


def study_seed(study_id: str) -> int:
    """A stable 64-bit seed from the study id (SHA-256; Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(study_id.encode("utf-8")).digest()[:8], "little")


def study_rng(study_id: str) -> np.random.Generator:
    """The generator every random choice for one study comes from."""
    return np.random.default_rng(study_seed(study_id))


def instruction_locations(labels: Iterable[str]) -> tuple[str, ...]:
    """Lung labels as valid instruction locations, in their given order: a lobe becomes its lung, zones of a lung
    that is named as a whole are dropped, repeats are dropped."""
    mapped = tuple(dict.fromkeys(LOBE_SIDE.get(label, label) for label in labels if label in _ORDER))
    covered = {zone for side, zones in SIDE_ZONES.items() if side in mapped for zone in zones}
    return tuple(label for label in mapped if label not in covered)


@dataclass
class PairPlan:
    """Pairs of one image, the union masks global positives need (new key -> keys to unite), and skips."""

    pairs: list[Pair] = field(default_factory=list)
    mask_unions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Builder:
    study_id: str
    dicom_id: str
    plan: PairPlan = field(default_factory=PairPlan)

    def add(
        self,
        instruction: str,
        answer: str,
        *,
        target: str,
        lesion: str,
        question_type: str,
        polarity: str,
        locations: tuple[str, ...],
        certainty: str | None,
        mask_key: str | None,
    ) -> Pair:
        pair = Pair(
            instruction=instruction,
            answer=answer,
            target=target,
            lesion=lesion,
            question_type=question_type,
            polarity=polarity,
            locations=locations,
            certainty=certainty,
            mask_key=mask_key,
            study_id=self.study_id,
            dicom_id=self.dicom_id,
        )
        self.plan.pairs.append(pair)
        return pair


def generate_pairs(
    outcomes: Sequence[FindingOutcome],
    *,
    study_id: str,
    dicom_id: str,
    empty_locations: Sequence[str],
    cardiomegaly_negative_reason: str | None,
    config: PairConfig | None = None,
) -> PairPlan:
    """All pairs of one image from the outcomes of its report's positive findings.

    ``empty_locations`` are the lung regions no positive finding touches; ``cardiomegaly_negative_reason`` is
    None when the CTR rule allows a cardiomegaly negative.
    """
    config = config or PairConfig()
    outcomes = sorted(outcomes, key=_outcome_key)
    positives = [outcome for outcome in outcomes if outcome.presence == "positive"]
    builder = _Builder(study_id, dicom_id)
    rng = study_rng(study_id)
    basics: dict[str, list[Pair]] = {lesion: [] for lesion in LESION_TYPES}
    for outcome in positives:
        if outcome.lesion in LESION_TYPES and outcome.lesion != "cardiomegaly" and outcome.mask_key:
            basics[outcome.lesion].append(_positives(builder, outcome, config))
    for lesion in LESION_TYPES:
        mine = [outcome for outcome in positives if outcome.lesion == lesion]
        if lesion == "cardiomegaly":
            _cardiomegaly(builder, mine, cardiomegaly_negative_reason)
            continue
        _global_positive(builder, lesion, mine)
        if mine:
            _substitution_negative(builder, rng, lesion, basics[lesion], empty_locations)
        else:
            denied = [o for o in outcomes if o.lesion == lesion and o.presence == "negative"]
            _absent_negative(builder, rng, lesion, positives, denied, empty_locations, config)
    _remove_contradictions(builder, rng, empty_locations)
    builder.plan.pairs = limit_study_negatives(builder.plan.pairs)  # one negative per target, in the image too
    return builder.plan


@dataclass(frozen=True)
class ImagePairs:
    """The pair stage's result for one image: its pairs, the masks they name (``mask_key`` -> ``HxW bool``; a global
    positive's is the union of its findings' masks), and the negatives it had to skip, as ``(what, reason)``."""

    pairs: tuple[Pair, ...] = ()
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: tuple[tuple[str, str], ...] = ()


def image_pairs(
    outcomes: Sequence[FindingOutcome],
    masks: Mapping[str, np.ndarray],
    *,
    study_id: str,
    dicom_id: str,
    empty_locations: Sequence[str],
    cardiomegaly_negative_reason: str | None,
    config: PairConfig | None = None,
    clinical: ClinicalContext | None = None,
    reasoning: ReasoningConfig | None = None,
    paraphraser: Paraphraser | None = None,
) -> ImagePairs:
    """The pair stage: :func:`generate_pairs` over a grounding's outcomes, then the reasoning pairs made from them
    and the study's clinical cues (:func:`mimic_ils.reasoning.reasoning_pairs`), with the masks the pairs name.

    ``masks`` are the grounding's finding masks by key; the result keeps only those a pair names, plus the unions.
    """
    plan = generate_pairs(outcomes, study_id=study_id, dicom_id=dicom_id, empty_locations=empty_locations,
                          cardiomegaly_negative_reason=cardiomegaly_negative_reason, config=config)
    more, skipped = reasoning_pairs(plan.pairs, clinical or ClinicalContext(), study_id=study_id, config=reasoning,
                                    paraphraser=paraphraser)
    plan.pairs += more
    plan.skipped += skipped
    available = dict(masks)
    for key, parts in plan.mask_unions.items():
        available[key] = np.logical_or.reduce([available[part] for part in parts])
    used = {pair.mask_key for pair in plan.pairs if pair.mask_key is not None}
    return ImagePairs(tuple(plan.pairs), {key: mask for key, mask in available.items() if key in used},
                      tuple(plan.skipped))


def places_overlap(a: str, b: str) -> bool:
    """Whether two instruction locations share lung (a whole lung contains its zones)."""
    return a == b or b in SIDE_ZONES.get(a, ()) or a in SIDE_ZONES.get(b, ())


def _covered(pairs: Sequence[Pair]) -> dict[str, set[str]]:
    """Per target, the places the image's positives cover (a global positive's are its grounded places)."""
    covered: dict[str, set[str]] = {}
    for pair in pairs:
        if pair.polarity == "positive":
            covered.setdefault(pair.target, set()).update(pair.locations)
    return covered


def _denies_covered(pair: Pair, covered: dict[str, set[str]]) -> bool:
    places = covered.get(pair.target)
    if pair.polarity != "negative" or not places:
        return False
    if pair.question_type == "global":
        return True
    return any(places_overlap(mine, theirs) for mine in pair.locations for theirs in places)


def _remove_contradictions(builder: _Builder, rng: np.random.Generator, empty: Sequence[str]) -> None:
    """A negative that denies a target where a positive of the image shows it moves to a free empty location."""
    covered = _covered(builder.plan.pairs)
    kept = []
    for pair in builder.plan.pairs:
        if not _denies_covered(pair, covered):
            kept.append(pair)
            continue
        free = [place for place in empty
                if not any(places_overlap(place, other) for other in covered.get(pair.target, ()))]
        if pair.question_type == "global" or not free:
            builder.plan.skipped.append((f"{pair.lesion} negative",
                                         f"a positive of this image shows {pair.target} there"))
            continue
        kept.append(_relocated(pair, (free[int(rng.integers(len(free)))],)))
    builder.plan.pairs = kept


def _relocated(pair: Pair, places: tuple[str, ...]) -> Pair:
    instruction, answer = negative_strings(pair.question_type, pair.target, places)
    return replace(pair, instruction=instruction, answer=answer, locations=places)


def _outcome_key(outcome: FindingOutcome) -> tuple:
    lesion_rank = LESION_TYPES.index(outcome.lesion) if outcome.lesion in LESION_TYPES else len(LESION_TYPES)
    return (
        outcome.presence != "positive",
        lesion_rank,
        outcome.sentence,
        outcome.reported,
        outcome.grounded,
        outcome.certainty,
        outcome.mask_key or "",
    )


def _positives(builder: _Builder, outcome: FindingOutcome, config: PairConfig) -> Pair:
    """The basic positive of a grounded finding, and its lesion-inference positive where the type allows."""
    locations = instruction_locations(outcome.grounded)
    text = join_locations(locations)
    target = outcome.lesion if outcome.certainty == "definitive" else OPACITY
    basic = builder.add(
        BASIC_INSTRUCTION.format(target=target, location=text),
        BASIC_POSITIVE,
        target=target,
        lesion=outcome.lesion,
        question_type="basic",
        polarity="positive",
        locations=locations,
        certainty=outcome.certainty,
        mask_key=outcome.mask_key,
    )
    if outcome.lesion in config.opacity_inference_types:
        template = INFERENCE_DEFINITIVE if outcome.certainty == "definitive" else INFERENCE_TENTATIVE
        builder.add(
            INFERENCE_INSTRUCTION.format(location=text),
            template.format(lesion=outcome.lesion),
            target=OPACITY,
            lesion=outcome.lesion,
            question_type="lesion_inference",
            polarity="positive",
            locations=locations,
            certainty=outcome.certainty,
            mask_key=outcome.mask_key,
        )
    return basic


def _global_positive(builder: _Builder, lesion: str, mine: Sequence[FindingOutcome]) -> None:
    """Global positive when every positive finding of the type is definitive and grounded == reported."""
    if not mine or not all(o.fully_grounded and o.certainty == "definitive" for o in mine):
        return
    locations = instruction_locations(label for outcome in mine for label in outcome.grounded)
    keys = tuple(outcome.mask_key for outcome in mine)
    mask_key = keys[0]
    if len(keys) > 1:
        mask_key = f"{builder.dicom_id}_{lesion}_global"
        builder.plan.mask_unions[mask_key] = keys
    builder.add(
        GLOBAL_INSTRUCTION.format(target=lesion),
        GLOBAL_POSITIVE.format(location=join_locations(locations)),
        target=lesion,
        lesion=lesion,
        question_type="global",
        polarity="positive",
        locations=locations,
        certainty="definitive",
        mask_key=mask_key,
    )


def _cardiomegaly(builder: _Builder, mine: Sequence[FindingOutcome], negative_reason: str | None) -> None:
    """Cardiomegaly is global only: positive on the heart mask, negative only under the CTR rule."""
    grounded = [outcome for outcome in mine if outcome.mask_key]
    if grounded:
        outcome = grounded[0]
        builder.add(
            GLOBAL_INSTRUCTION.format(target="cardiomegaly"),
            GLOBAL_POSITIVE.format(location=HEART_LABEL),
            target="cardiomegaly",
            lesion="cardiomegaly",
            question_type="global",
            polarity="positive",
            locations=(HEART_LABEL,),
            certainty=outcome.certainty,
            mask_key=outcome.mask_key,
        )
    elif mine:
        return
    elif negative_reason is not None:
        builder.plan.skipped.append(("cardiomegaly negative", negative_reason))
    else:
        _global_negative(builder, "cardiomegaly")


def _global_negative(builder: _Builder, lesion: str) -> None:
    builder.add(
        GLOBAL_INSTRUCTION.format(target=lesion),
        GLOBAL_NEGATIVE.format(target=lesion),
        target=lesion,
        lesion=lesion,
        question_type="global",
        polarity="negative",
        locations=(),
        certainty=None,
        mask_key=None,
    )


def negative_strings(question_type: str, target: str, places: Sequence[str]) -> tuple[str, str]:
    """(instruction, answer) of a basic or lesion-inference negative at ``places`` (Table 2)."""
    location = join_locations(places)
    if question_type == "lesion_inference":
        return INFERENCE_INSTRUCTION.format(location=location), INFERENCE_NEGATIVE.format(location=location)
    return (BASIC_INSTRUCTION.format(target=target, location=location),
            BASIC_NEGATIVE.format(target=target, location=location))


def _negative_at(
    builder: _Builder, rng: np.random.Generator, lesion: str, target: str, places: tuple[str, ...]
) -> None:
    """A negative at ``places``; an opacity negative is a basic or, at random, a lesion-inference one (whose lesion
    is "opacity" whatever type it was made for)."""
    inference = target == OPACITY and rng.integers(2) == 1
    question_type = "lesion_inference" if inference else "basic"
    instruction, answer = negative_strings(question_type, target, places)
    builder.add(instruction, answer, target=target, lesion=OPACITY if inference else lesion,
                question_type=question_type, polarity="negative", locations=places, certainty=None, mask_key=None)


def _substitution_negative(
    builder: _Builder, rng: np.random.Generator, lesion: str, positives: Sequence[Pair], empty: Sequence[str]
) -> None:
    """Put an empty location into the basic instruction of one of the type's positives."""
    if not positives:
        return
    if not empty:
        builder.plan.skipped.append((f"{lesion} negative", "no empty location to substitute"))
        return
    own = [pair for pair in positives if pair.target == lesion]  # its own target first: one negative per target
    positives = own or positives
    positive = positives[int(rng.integers(len(positives)))]
    _negative_at(builder, rng, lesion, positive.target, (empty[int(rng.integers(len(empty)))],))


def _conflicts(lesion: str, positives: Sequence[FindingOutcome], config: PairConfig) -> list[str]:
    """Reported types (or "an untyped lung finding") that make "there is no <lesion>" false study-wide."""
    blocking = set(config.negative_conflicts.get(lesion, ()))
    found = sorted({o.lesion for o in positives if o.lesion in blocking})
    if lesion in config.conflicts_with_untyped and any(o.lesion is None and o.reported for o in positives):
        found.append("an untyped lung finding")
    return found


def _absent_negative(
    builder: _Builder,
    rng: np.random.Generator,
    lesion: str,
    positives: Sequence[FindingOutcome],
    denied: Sequence[FindingOutcome],
    empty: Sequence[str],
    config: PairConfig,
) -> None:
    """One negative for a type with no positive finding.

    Explicitly negated at a place: a basic negative there; otherwise (negated with no place, or not mentioned) a
    basic negative in a random lung region, which :func:`choose_global_negatives` may turn global. A type whose
    negative other findings would contradict (opacity while atelectasis is reported) only gets one in an empty
    location.
    """
    conflicts = _conflicts(lesion, positives, config)
    if denied:
        places = instruction_locations(denied[0].reported)
        if places and (not conflicts or set(places) <= set(empty)):
            _negative_at(builder, rng, lesion, lesion, places)
            return
    if conflicts:
        if not empty:
            builder.plan.skipped.append((f"{lesion} negative", f"{', '.join(conflicts)} reported, no empty location"))
            return
        _negative_at(builder, rng, lesion, lesion, (empty[int(rng.integers(len(empty)))],))
        return
    _negative_at(builder, rng, lesion, lesion, (LUNG_REGIONS[int(rng.integers(len(LUNG_REGIONS)))],))


def limit_study_negatives(pairs: Iterable[Pair] | Iterable[Mapping]) -> list:
    """Keep at most one negative per (study, target) across a study's images, and one reasoning negative beside it.

    Of several, the one made for its own type wins ("no opacity ..." for opacity over a tentative effusion's
    "no opacity ..."), then the smallest dicom id, then the first made. A reasoning negative asks a kept negative
    again, implicitly: it stays only when the negative it was made from (same image, target and places) stays, one
    per (study, target). Takes :class:`Pair` objects or dataset rows (mappings with the same field names).
    """
    pairs = list(pairs)
    get = (lambda item, name: item[name]) if pairs and isinstance(pairs[0], Mapping) else getattr
    negatives = [(index, pair) for index, pair in enumerate(pairs) if get(pair, "polarity") == "negative"]
    ranked = sorted(negatives, key=lambda item: (get(item[1], "lesion") != get(item[1], "target"),
                                                 get(item[1], "dicom_id"), item[0]))
    chosen: dict[tuple[str, str], int] = {}
    for index, pair in ranked:
        if get(pair, "question_type") != REASONING:
            chosen.setdefault((get(pair, "study_id"), get(pair, "target")), index)
    sources = {(get(pairs[index], "dicom_id"), get(pairs[index], "target"), tuple(get(pairs[index], "locations")))
               for index in chosen.values()}
    implicit: dict[tuple[str, str], int] = {}
    for index, pair in ranked:
        source = (get(pair, "dicom_id"), get(pair, "target"), tuple(get(pair, "locations")))
        if get(pair, "question_type") == REASONING and source in sources:
            implicit.setdefault((get(pair, "study_id"), get(pair, "target")), index)
    keep = set(chosen.values()) | set(implicit.values())
    return [pair for index, pair in enumerate(pairs) if get(pair, "polarity") == "positive" or index in keep]


def _hash_rank(study_id: str, lesion: str) -> str:
    return hashlib.sha256(f"{study_id}\x00{lesion}\x00global".encode()).hexdigest()


def choose_global_negatives(rows: Sequence[dict], shares: Mapping[str, float]) -> list[dict]:
    """Rows of one split with ``round(shares[lesion] x negatives of the lesion)`` basic negatives made global.

    Candidates are basic negatives whose target is their own lesion, in studies with no positive of that lesion or
    target; the ones with the smallest SHA-256 of (study, lesion) are chosen, so the choice is deterministic and does
    not depend on sharding or order. Cardiomegaly (global only) and lesion-inference negatives are left alone.
    """
    rows = [dict(row) for row in rows]
    # a study that shows the type, or its target (a tentative finding's "opacity"), cannot say "there is no X"
    positive = {(row["study_id"], name) for row in rows if row["polarity"] == "positive"
                for name in (row["lesion"], row["target"])}
    for lesion, share in shares.items():
        negatives = [row for row in rows if row["polarity"] == "negative" and row["lesion"] == lesion
                     and row["question_type"] != REASONING]  # Table 9's shares are of the Table 2 negatives
        candidates = [row for row in negatives if row["question_type"] == "basic" and row["target"] == lesion
                      and (row["study_id"], lesion) not in positive]
        wanted = min(len(candidates), round(share * len(negatives)))
        for row in sorted(candidates, key=lambda item: _hash_rank(item["study_id"], lesion))[:wanted]:
            row.update(instruction=GLOBAL_INSTRUCTION.format(target=lesion),
                       answer=GLOBAL_NEGATIVE.format(target=lesion), question_type="global", locations=[])
    return rows


class GlobalNegativeChooser:
    """:func:`choose_global_negatives` in two passes over one split, for a merge that never holds the split's rows.

    Pass 1 ``observe``s the rows group by group (a group holds every row of its studies, e.g. one study); ``decide``
    then fixes, per lesion, the rank of the last chosen candidate; pass 2 ``apply``s it to the same groups in the same
    order. The result equals ``choose_global_negatives`` of the groups' rows concatenated. Pass 1 keeps 32 bytes per
    candidate (its SHA-256 rank), never a row.
    """

    def __init__(self, shares: Mapping[str, float]) -> None:
        self.shares = dict(shares)
        self._negatives = dict.fromkeys(self.shares, 0)
        self._ranks = {lesion: bytearray() for lesion in self.shares}
        self._cutoffs: dict[str, tuple[bytes, int]] | None = None
        self._taken: dict[str, int] = {}

    def observe(self, rows: Sequence[Mapping]) -> None:
        """Pass 1: count the negatives and record the candidates of one group of rows."""
        if self._cutoffs is not None:
            raise ValueError("GlobalNegativeChooser.observe after decide")
        positive = _positive_names(rows)
        for row in rows:
            lesion = row["lesion"]
            if row["polarity"] == "negative" and lesion in self._negatives and row["question_type"] != REASONING:
                self._negatives[lesion] += 1
                if _is_candidate(row, lesion, positive):
                    self._ranks[lesion] += _rank_bytes(row["study_id"], lesion)

    def decide(self) -> None:
        """Fix per lesion the cutoff rank and how many candidates of exactly that rank are chosen (ties: the first
        ones in row order, as the stable sort of ``choose_global_negatives``)."""
        self._cutoffs = {}
        for lesion, share in self.shares.items():
            ranks = np.frombuffer(bytes(self._ranks[lesion]), dtype=">u8").reshape(-1, 4)
            wanted = min(len(ranks), round(share * self._negatives[lesion]))
            if wanted:
                ordered = ranks[np.lexsort(ranks.T[::-1])[:wanted]]
                cutoff = ordered[-1]
                self._cutoffs[lesion] = (cutoff.astype(">u8").tobytes(), int(np.all(ordered == cutoff, axis=1).sum()))
            self._taken[lesion] = 0
        self._ranks = {}

    def apply(self, rows: Sequence[Mapping]) -> list[dict]:
        """Pass 2: one group's rows (copies) with the chosen basic negatives made global."""
        if self._cutoffs is None:
            raise ValueError("GlobalNegativeChooser.apply before decide")
        positive = _positive_names(rows)
        out = [dict(row) for row in rows]
        for row in out:
            lesion = row["lesion"]
            if (row["polarity"] != "negative" or lesion not in self._cutoffs
                    or not _is_candidate(row, lesion, positive)):
                continue
            rank, (cutoff, ties) = _rank_bytes(row["study_id"], lesion), self._cutoffs[lesion]
            if rank == cutoff and self._taken[lesion] < ties:
                self._taken[lesion] += 1
            elif rank >= cutoff:
                continue
            row.update(instruction=GLOBAL_INSTRUCTION.format(target=lesion),
                       answer=GLOBAL_NEGATIVE.format(target=lesion), question_type="global", locations=[])
        return out


def _positive_names(rows: Iterable[Mapping]) -> set[tuple[str, str]]:
    return {(row["study_id"], name) for row in rows if row["polarity"] == "positive"
            for name in (row["lesion"], row["target"])}


def _is_candidate(row: Mapping, lesion: str, positive: set[tuple[str, str]]) -> bool:
    return row["question_type"] == "basic" and row["target"] == lesion and (row["study_id"], lesion) not in positive


def _rank_bytes(study_id: str, lesion: str) -> bytes:
    """The digest of :func:`_hash_rank` as bytes (same order as its hex)."""
    return hashlib.sha256(f"{study_id}\x00{lesion}\x00global".encode()).digest()
