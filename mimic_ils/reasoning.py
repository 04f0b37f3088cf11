"""The ``reasoning`` question type (beyond the paper): implicit clinical instructions that never name their target.

Reasoning pairs are made from an image's own Table 2 pairs (:mod:`mimic_ils.pairs`), so their masks are exactly as
trustworthy as the basic ones, and from the report's clinical cues (:mod:`mimic_ils.report.indication`):

* **positives**, per lesion type the image has a positive of: its global positive when there is one (every finding
  of the type definitive and grounded where the report places it; the instruction then names no place) or else its
  first basic positive (the instruction names the grounded place, as the basic instruction does). Two candidates:

  - ``indication``: the study's indication and history, when one of their cues maps to the type
    ("The patient presents with fever and a productive cough. Segment the finding that could explain it.");
  - ``description``: a clinical description of the type ("Segment fluid collecting in the pleural space.");

  the answer is ``[SEG]`` + the lesion + its place + one sentence of reasoning
  (``rosalia_hf.table2.REASONING_DEFINITIVE`` / ``REASONING_TENTATIVE``);
* **negatives**, from the negatives of the image whose target is their own lesion type (basic or global, chosen
  under Appendix C's rules): the same place asked implicitly ("If there is fluid collecting in the pleural space in
  the left lung base, segment it." → ``[SEG] There is no such finding: no effusion is seen in the left lung
  base.``); at most ``ReasoningConfig.max_negatives`` per image, of distinct types, the indication's candidates
  first ("The patient presents with fever. If air spaces filled with inflammatory exudate in the right lung base
  could explain it, segment it.": the clinical question answered "no").

Every instruction is checked by :func:`named_term` before it is kept: one that contains its target's name or any of
its synonyms in the lexicon (``mimic_ils.report.lexicon.FINDING_TERMS``), whole words and their plurals, is dropped
and the ledger says so, as it does for a candidate that has no usable description, an indication that maps to no
lesion type, or an LLM paraphrase that does not parse. The study's other pairs stay.

Two backends render the instructions: ``templates`` (default, deterministic: the phrasing is drawn with the study's
seeded generator) and ``llm`` (:class:`LlmParaphraser`: the report stage's local transports, loopback only, asked to
paraphrase the template's instruction; its answer passes the same checks). Answers are always the fixed templates.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mimic_ils.report.indication import CUE_PHRASES, SUSPECTED, cues_for, mapped_lesions
from mimic_ils.report.lexicon import FINDING_TERMS
from mimic_ils.schema import HEART_LABEL, LESION_TYPES, ClinicalContext, MimicIlsError, Pair, ReportError
from rosalia_hf.table2 import (
    REASONING,
    REASONING_DEFINITIVE,
    REASONING_GLOBAL_NEGATIVE,
    REASONING_NEGATIVE,
    REASONING_TENTATIVE,
    join_locations,
)

INDICATION, DESCRIPTION = "indication", "description"
REASONING_KINDS = (INDICATION, DESCRIPTION)
BACKENDS = ("templates", "llm")

# Clinical descriptions of each lesion type: noun phrases that fit "Segment {d}." and "If there is {d}, segment it."
DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("a heart shadow wider than half of the chest", "a heart that is too large for the chest"),
    "pneumonia": ("an inflammatory process filling the air spaces", "air spaces filled with inflammatory exudate"),
    "atelectasis": ("collapsed lung tissue", "a part of the lung that has lost its air and volume"),
    "opacity": ("an area of the lung that looks whiter than it should", "a region of increased lung whiteness"),
    "consolidation": ("air spaces filled with fluid or cells so that the lung looks solid",
                      "lung tissue that has turned solid on the radiograph"),
    "edema": ("fluid leaking into the lung tissue", "fluid in the lung interstitium and air spaces"),
    "effusion": ("fluid collecting in the pleural space", "fluid between the lung and the chest wall"),
}
# One sentence of reasoning per lesion type for a description answer ("{Lesion} is {description}." reads oddly for
# some): what the mask shows.
EXPLANATIONS: dict[str, str] = {
    "cardiomegaly": "The cardiac silhouette is enlarged.",
    "pneumonia": "The air spaces are filled by an inflammatory process.",
    "atelectasis": "This part of the lung has lost its air and volume.",
    "opacity": "This area of the lung is whiter than it should be.",
    "consolidation": "The air spaces are filled, so the lung looks solid.",
    "edema": "Fluid has leaked into the lung tissue.",
    "effusion": "Fluid has collected in the pleural space.",
}

_CONTEXT_OPENERS = ("The patient presents with {cues}.", "Clinical history: {cues}.",
                    "This radiograph was requested for {cues}.")
_QUESTION_OPENER = "The referring clinician asks about {description}."
_INDICATION_ASKS = ("Segment the finding{where} that could explain it.",
                    "Segment what{where} could account for this.")
_DESCRIPTION_ASKS = ("Segment {description}{where}.", "Show {description}{where} on this radiograph.")
_NEGATIVE_ASKS = ("If there is {description}{where}, segment it.",
                  "Segment {description}{where}, if there is any.")
_INDICATION_NEGATIVE_ASK = "If {description}{where} could explain it, segment it."


@dataclass(frozen=True)
class ReasoningConfig:
    """The reasoning rules a build may change (``reasoning:`` of the build config).

    ``enabled``: make reasoning pairs at all. ``backend``: ``templates`` or ``llm``; ``options`` go to
    :class:`LlmParaphraser` (``url`` or ``model_path``, ``model_name``, ``cache_dir``, ``allow_remote``,
    ``timeout``). ``kinds``: the candidates made (``indication``, ``description``). ``max_cues``: cues an
    indication instruction lists at most. ``max_negatives``: reasoning negatives per image at most (of distinct
    lesion types, the indication's first), so that they do not outnumber the positives as Table 2's negatives do.
    """

    enabled: bool = True
    backend: str = "templates"
    options: dict[str, Any] = field(default_factory=dict)
    kinds: tuple[str, ...] = REASONING_KINDS
    max_cues: int = 3
    max_negatives: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"reasoning enabled must be true or false, got {self.enabled!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"reasoning backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend == "templates" and self.options:
            raise ValueError("the templates reasoning backend takes no options "
                             f"(got {', '.join(sorted(self.options))})")
        unknown = set(self.kinds) - set(REASONING_KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"reasoning kinds must be some of {', '.join(REASONING_KINDS)}, got {list(self.kinds)}")
        for name in ("max_cues", "max_negatives"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "max_cues" else 0):
                raise ValueError(f"reasoning {name} must be an integer >= {1 if name == 'max_cues' else 0}, "
                                 f"got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kinds"] = list(self.kinds)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ReasoningConfig:
        data = dict(data or {})
        unknown = set(data) - {"enabled", "backend", "options", "kinds", "max_cues", "max_negatives"}
        if unknown:
            raise ValueError(f"unknown reasoning config keys: {sorted(unknown)}")
        if "kinds" in data:
            data["kinds"] = tuple(data["kinds"])
        if "options" in data:
            data["options"] = dict(data["options"] or {})
        return cls(**data)


# ---------------------------------------------------------------------------------------------------- the check


def forbidden_terms(lesion: str) -> tuple[str, ...]:
    """The lesion's name and every surface term the lexicon maps to it, longest first."""
    terms = {lesion}
    for entity, (lesion_type, surfaces) in FINDING_TERMS.items():
        if lesion_type == lesion:
            terms.add(entity)
            terms.update(surfaces)
    return tuple(sorted(terms, key=lambda term: (-len(term), term)))


_FORBIDDEN = {lesion: re.compile(r"(?<![\w-])(?:" + "|".join(
    re.escape(term).replace(r"\ ", r"\s+") for term in forbidden_terms(lesion)) + r")(?:s|es)?(?![\w-])",
    re.IGNORECASE) for lesion in LESION_TYPES}


def named_term(text: str, lesion: str) -> str | None:
    """The first term of ``lesion`` (its name or a lexicon synonym, or their plural) that ``text`` contains."""
    match = _FORBIDDEN[lesion].search(text)
    return match.group(0) if match else None


# ---------------------------------------------------------------------------------------------------- paraphrases


class Paraphraser(Protocol):
    """Rewrites one reasoning instruction; raises ReportError when its answer is unusable."""

    def paraphrase(self, instruction: str, *, lesion: str, location: str | None) -> str: ...


PARAPHRASE_PROMPT = (
    "You rewrite one instruction given to a model that segments findings on chest radiographs. Keep its meaning: "
    "the same clinical question, the same place if one is named (keep the place's words exactly), and the request "
    "to segment. Do not name the finding that is sought, nor any synonym of it ({forbidden}), nor any diagnosis. "
    "Write one or two plain English sentences, at most 40 words. Answer with JSON only: {{\"instruction\": \"...\"}}."
)


def parse_paraphrase(answer: str, *, lesion: str, location: str | None) -> str:
    """The paraphrase in an LLM answer, checked as a template's instruction is; ValueError says why it is unusable."""
    from mimic_ils.report.llm import extract_json

    data = extract_json(answer)
    if not isinstance(data, dict) or not isinstance(data.get("instruction"), str):
        raise ValueError('the answer must be a JSON object {"instruction": "..."}')
    text = " ".join(data["instruction"].split())
    if not text or len(text) > 400:
        raise ValueError(f"the instruction must hold 1 to 400 characters, got {len(text)}")
    if "[SEG]" in text or not text.endswith((".", "?")):
        raise ValueError("the instruction must be plain sentences ending in '.' or '?', with no [SEG]")
    term = named_term(text, lesion)
    if term:
        raise ValueError(f"the paraphrase names its target ({term!r})")
    if location and location not in text:
        raise ValueError(f"the paraphrase dropped its place ({location!r})")
    return text


class LlmParaphraser:
    """Paraphrases through the report stage's transports (``mimic_ils.report.llm``): a local ``transformers`` folder
    (``model_path``) or an OpenAI-compatible server on loopback (``url``; a remote one only with ``allow_remote``),
    answers cached on disk (``cache_dir``), one retry on a bad answer, then :class:`ReportError`."""

    def __init__(self, model_path: str | None = None, url: str | None = None, *, model_name: str = "default",
                 cache_dir: str | None = None, allow_remote: bool = False, timeout: float = 120.0,
                 transport=None) -> None:
        from mimic_ils.report.llm import LlmBackend

        self._llm = LlmBackend(model_path, url, model_name=model_name, cache_dir=cache_dir,
                               allow_remote=allow_remote, timeout=timeout, max_new_tokens=256, transport=transport,
                               mapping="rules")

    @property
    def calls(self) -> int:
        return self._llm.calls

    def paraphrase(self, instruction: str, *, lesion: str, location: str | None) -> str:
        prompt = PARAPHRASE_PROMPT.format(forbidden=", ".join(forbidden_terms(lesion)))
        return self._llm.ask(prompt, instruction,
                             lambda answer: parse_paraphrase(answer, lesion=lesion, location=location))


def check_paraphraser_options(config: ReasoningConfig) -> None:
    """Refuse, before any work, the ``llm`` options that would fail every image: unknown keys, neither or both of
    ``url`` and ``model_path``, a URL off loopback without ``allow_remote``, a model folder that is not there."""
    if config.backend != "llm":
        return
    import inspect

    from mimic_ils.report.llm import is_loopback_url

    options = config.options
    known = set(inspect.signature(LlmParaphraser).parameters) - {"transport"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise MimicIlsError(f"reasoning options: unknown keys {', '.join(unknown)} (expected some of "
                            f"{', '.join(sorted(known))})")
    if (options.get("url") is None) == (options.get("model_path") is None):
        raise MimicIlsError("reasoning options: the llm backend needs exactly one of url or model_path")
    url = options.get("url")
    if url is not None and not is_loopback_url(str(url)) and not options.get("allow_remote"):
        raise MimicIlsError(f"reasoning options: url {url} is not on loopback; report-derived text may not leave "
                            "the machine (set allow_remote: true only for a server the data use agreement covers)")
    path = options.get("model_path")
    if path is not None and not Path(str(path)).is_dir():
        raise MimicIlsError(f"reasoning options: model_path {path} is not a folder")


def make_paraphraser(config: ReasoningConfig) -> Paraphraser | None:
    """The config's paraphraser (None for ``templates``)."""
    if config.backend == "templates":
        return None
    try:
        return LlmParaphraser(**config.options)
    except TypeError as error:
        raise MimicIlsError(f"reasoning options: {error}") from None


# ---------------------------------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class _Candidate:
    kind: str
    lesion: str
    polarity: str
    instruction: str
    answer: str
    source: Pair

    @property
    def what(self) -> str:
        return f"reasoning {self.polarity} {self.lesion} ({self.kind})"


def reasoning_pairs(
    pairs: Sequence[Pair],
    clinical: ClinicalContext,
    *,
    study_id: str,
    config: ReasoningConfig | None = None,
    paraphraser: Paraphraser | None = None,
) -> tuple[list[Pair], list[tuple[str, str]]]:
    """The reasoning pairs of one image from its Table 2 ``pairs`` (after Appendix C's rules) and the study's cues;
    returns ``(pairs, skipped)``, ``skipped`` as ``(what, reason)`` for the ledger."""
    config = config or ReasoningConfig()
    if not config.enabled or not pairs:
        return [], []
    rng = np.random.default_rng(_seed(study_id, pairs[0].dicom_id))
    candidates, skipped = [], []
    for source in _positive_sources(pairs):
        for kind in config.kinds:
            made = _positive(kind, source, clinical, rng, config)
            (candidates if isinstance(made, _Candidate) else skipped).append(made)
    negatives = []
    for source in _negative_sources(pairs):
        for kind in config.kinds:
            made = _negative(kind, source, clinical, rng, config)
            if made is not None:
                (negatives if isinstance(made, _Candidate) else skipped).append(made)
    candidates += _some_negatives(negatives, rng, config.max_negatives)
    out = []
    for candidate in candidates:
        made = _checked(candidate, paraphraser)
        if isinstance(made, Pair):
            out.append(made)
        else:
            skipped.append(made)
    return out, skipped


def _some_negatives(negatives: list[_Candidate], rng: np.random.Generator, limit: int) -> list[_Candidate]:
    """At most ``limit`` negatives of distinct lesion types: the indication's first (the clinical question answered
    "no"), then descriptions, each kind in a random order."""
    order = [int(i) for i in rng.permutation(len(negatives))]
    ranked = sorted(order, key=lambda i: negatives[i].kind != INDICATION)
    chosen, types = [], set()
    for index in ranked:
        if len(chosen) < limit and negatives[index].lesion not in types:
            chosen.append(negatives[index])
            types.add(negatives[index].lesion)
    return chosen


def _seed(study_id: str, dicom_id: str) -> int:
    digest = hashlib.sha256(f"{study_id}\x00{dicom_id}\x00reasoning".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _positive_sources(pairs: Sequence[Pair]) -> list[Pair]:
    """Per lesion type (LESION_TYPES order): its global positive, else its first basic positive."""
    sources = []
    for lesion in LESION_TYPES:
        mine = [pair for pair in pairs if pair.polarity == "positive" and pair.lesion == lesion
                and pair.question_type in ("global", "basic") and pair.mask_key]
        chosen = next((pair for pair in mine if pair.question_type == "global"), None) or next(iter(mine), None)
        if chosen is not None:
            sources.append(chosen)
    return sources


def _negative_sources(pairs: Sequence[Pair]) -> list[Pair]:
    """The image's negatives that deny their own lesion type (basic or global)."""
    return [pair for pair in pairs if pair.polarity == "negative" and pair.lesion in LESION_TYPES
            and pair.target == pair.lesion and pair.question_type in ("basic", "global")]


def _where(source: Pair) -> tuple[str, str | None]:
    """``(" in the right lung base", "right lung base")`` for a located source; ``("", None)`` for a global one."""
    if source.question_type == "global" or not source.locations or source.locations == (HEART_LABEL,):
        return "", None
    location = join_locations(source.locations)
    return f" in the {location}", location


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _context(lesion: str, clinical: ClinicalContext, rng: np.random.Generator, config: ReasoningConfig
             ) -> str | tuple[str, str]:
    """The instruction's opening sentence from the cues that map to ``lesion``, or the reason there is none."""
    if not clinical.has_section:
        return ("indication", "the report has no indication or history")
    if not mapped_lesions(clinical):
        return ("indication", "the indication and history map to no lesion type")
    cues = cues_for(clinical, lesion)
    if not cues:
        return ("indication", f"the indication and history do not relate to {lesion}")
    symptoms = [cue for cue in cues if not cue.startswith(SUSPECTED)][:config.max_cues]
    if symptoms:
        return _pick(rng, _CONTEXT_OPENERS).format(cues=_and([CUE_PHRASES[cue] for cue in symptoms]))
    return _QUESTION_OPENER.format(description=_pick(rng, DESCRIPTIONS[lesion]))


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _positive_answer(source: Pair, reason: str) -> str:
    template = REASONING_TENTATIVE if source.certainty == "tentative" else REASONING_DEFINITIVE
    return template.format(lesion=source.lesion, location=join_locations(source.locations), reason=reason)


def _negative_answer(source: Pair) -> str:
    if source.question_type == "global" or not source.locations:
        return REASONING_GLOBAL_NEGATIVE.format(lesion=source.lesion)
    return REASONING_NEGATIVE.format(lesion=source.lesion, location=join_locations(source.locations))


def _positive(kind: str, source: Pair, clinical: ClinicalContext, rng: np.random.Generator,
              config: ReasoningConfig) -> _Candidate | tuple[str, str]:
    lesion = source.lesion
    what = f"reasoning positive {lesion} ({kind})"
    descriptions = DESCRIPTIONS.get(lesion)
    if not descriptions:
        return (what, f"no usable description of {lesion}")
    where, _ = _where(source)
    if kind == DESCRIPTION:
        instruction = _pick(rng, _DESCRIPTION_ASKS).format(description=_pick(rng, descriptions), where=where)
        return _Candidate(kind, lesion, "positive", instruction, _positive_answer(source, EXPLANATIONS[lesion]),
                          source)
    context = _context(lesion, clinical, rng, config)
    if isinstance(context, tuple):
        return (what, context[1])
    cues = [CUE_PHRASES[cue] for cue in cues_for(clinical, lesion) if not cue.startswith(SUSPECTED)]
    reason = (f"{lesion.capitalize()} can explain {_and(cues[:config.max_cues])}." if cues
              else f"This answers the clinical question: {EXPLANATIONS[lesion][0].lower()}{EXPLANATIONS[lesion][1:]}")
    instruction = f"{context} {_pick(rng, _INDICATION_ASKS).format(where=where)}"
    return _Candidate(kind, lesion, "positive", instruction, _positive_answer(source, reason), source)


def _negative(kind: str, source: Pair, clinical: ClinicalContext, rng: np.random.Generator,
              config: ReasoningConfig) -> _Candidate | tuple[str, str] | None:
    lesion = source.lesion
    descriptions = DESCRIPTIONS.get(lesion)
    if not descriptions:
        return (f"reasoning negative {lesion} ({kind})", f"no usable description of {lesion}")
    where, _ = _where(source)
    description = _pick(rng, descriptions)
    if kind == DESCRIPTION:
        instruction = _pick(rng, _NEGATIVE_ASKS).format(description=description, where=where)
        return _Candidate(kind, lesion, "negative", instruction, _negative_answer(source), source)
    context = _context(lesion, clinical, rng, config)
    if isinstance(context, tuple):
        return None  # an indication negative is a candidate only where a cue maps to the type
    instruction = f"{context} {_INDICATION_NEGATIVE_ASK.format(description=description, where=where)}"
    return _Candidate(kind, lesion, "negative", instruction, _negative_answer(source), source)


def _checked(candidate: _Candidate, paraphraser: Paraphraser | None) -> Pair | tuple[str, str]:
    """The candidate as a pair when its instruction passes the checks (after the paraphrase, if any)."""
    instruction = candidate.instruction
    _, location = _where(candidate.source)
    if paraphraser is not None:
        try:
            instruction = paraphraser.paraphrase(instruction, lesion=candidate.lesion, location=location)
        except ReportError as error:
            return (candidate.what, f"LLM paraphrase unusable: {error}")
    term = named_term(instruction, candidate.lesion)
    if term:
        return (candidate.what, f"the instruction names its target ({term!r})")
    source = candidate.source
    return replace(source, instruction=instruction, answer=candidate.answer, target=candidate.lesion,
                   question_type=REASONING, certainty=source.certainty if candidate.polarity == "positive" else None)


def reasoning_kind(instruction: str) -> str:
    """``indication`` or ``description``: which candidate a template-made reasoning instruction came from."""
    openers = [opener.split("{")[0] for opener in (*_CONTEXT_OPENERS, _QUESTION_OPENER)]
    return INDICATION if instruction.startswith(tuple(openers)) else DESCRIPTION


def rules_markdown() -> str:
    """The cue table and the descriptions, as docs/reasoning.md shows them."""
    from mimic_ils.report.indication import CUE_LESIONS, CUES

    lines = ["| cue | read from (regular expression, lower case) | instruction words | lesion types |",
             "|---|---|---|---|"]
    for cue, pattern in CUES.items():
        lesions = ", ".join(CUE_LESIONS[cue]) or "— (maps to no lesion)"
        escaped = pattern.replace("|", " \\| ")  # a pipe inside a table cell, code span or not
        lines.append(f"| {cue} | `{escaped}` | {CUE_PHRASES[cue]} | {lesions} |")
    lines.append(f"| {SUSPECTED}<type> | a lesion term of the lexicon in the indication | the type's description "
                 "| that type |")
    lines += ["", "| lesion type | descriptions | explanation |", "|---|---|---|"]
    for lesion in LESION_TYPES:
        lines.append(f"| {lesion} | {'; '.join(DESCRIPTIONS[lesion])} | {EXPLANATIONS[lesion]} |")
    return "\n".join(lines)

