"""Agreement between two report backends (``rules`` and ``llm``) on the same sections: pure functions.

Findings of one section are paired in two passes (:func:`match_findings`): first by sentence index and normalised
lesion type (findings with a lesion type only), then the rest by sentence index and entity (case, spacing and a
plural ``s`` ignored). Each finding is used once; within a pass, findings pair in report order. What stays unpaired
is "only a" / "only b".

Per-field agreement (:func:`field_agreement`) over the pairs, one ``(agree, total)`` per field of :data:`FIELDS`:

* ``found``: paired findings over all findings of either backend (paired + only a + only b);
* ``lesion_type``, ``presence``, ``certainty``, ``predicted_lesion_type``: the same value (None equals None);
* ``side``: :func:`side_of` the mapped lung labels, ``right`` / ``left`` / ``both`` / ``none``;
* ``locations``: the same set of lung labels (order ignored).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mimic_ils.report.locations import label_side
from mimic_ils.schema import Finding

FIELDS = ("found", "lesion_type", "presence", "certainty", "side", "locations", "predicted_lesion_type")
PAIR_FIELDS = FIELDS[1:]
SIDES = ("right", "left", "both", "none")


def side_of(locations: Iterable[str]) -> str:
    """``right`` / ``left`` / ``both`` / ``none`` of a set of LUNG_LABELS (every one names its side)."""
    sides = {label_side(label) for label in locations}
    right, left = "R" in sides, "L" in sides
    return "both" if right and left else "right" if right else "left" if left else "none"


def normalize_entity(entity: str) -> str:
    """An entity for matching: lower case, single spaces, a plural ``s`` dropped from each word."""
    words = re.findall(r"[a-z0-9]+", entity.lower())
    return " ".join(word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word
                    for word in words)


@dataclass(frozen=True)
class Matching:
    """Paired findings ``(a, b)`` in a's order, and the findings each backend alone gave."""

    pairs: tuple[tuple[Finding, Finding], ...] = ()
    only_a: tuple[Finding, ...] = ()
    only_b: tuple[Finding, ...] = ()


def match_findings(a: Sequence[Finding], b: Sequence[Finding]) -> Matching:
    """Pair the findings of two backends on one section (see the module docstring)."""
    partner: dict[int, int] = {}
    used: set[int] = set()
    keys = (lambda f: (f.sentence_index, f.lesion_type) if f.lesion_type else None,
            lambda f: (f.sentence_index, normalize_entity(f.entity)))
    for key in keys:
        for i, finding in enumerate(a):
            if i in partner or key(finding) is None:
                continue
            for j, other in enumerate(b):
                if j not in used and key(other) == key(finding):
                    partner[i] = j
                    used.add(j)
                    break
    return Matching(pairs=tuple((a[i], b[partner[i]]) for i in sorted(partner)),
                    only_a=tuple(f for i, f in enumerate(a) if i not in partner),
                    only_b=tuple(f for j, f in enumerate(b) if j not in used))


def field_value(finding: Finding, name: str) -> Any:
    """The value of one compared field (JSON-friendly): ``side`` derived, ``locations`` a sorted list."""
    if name == "side":
        return side_of(finding.locations)
    if name == "locations":
        return sorted(set(finding.locations))
    return getattr(finding, name)


@dataclass
class Agreement:
    """Agreement counts, summed over any number of sections."""

    counts: dict[str, list[int]] = field(default_factory=lambda: {name: [0, 0] for name in FIELDS})
    matched: int = 0
    only_a: int = 0
    only_b: int = 0

    def add(self, matching: Matching) -> None:
        for name, (agree, total) in field_agreement(matching).items():
            self.counts[name][0] += agree
            self.counts[name][1] += total
        self.matched += len(matching.pairs)
        self.only_a += len(matching.only_a)
        self.only_b += len(matching.only_b)

    def rate(self, name: str) -> float | None:
        agree, total = self.counts[name]
        return agree / total if total else None

    def as_json(self) -> dict[str, dict[str, Any]]:
        return {name: {"agree": agree, "total": total, "rate": self.rate(name)}
                for name, (agree, total) in self.counts.items()}


def field_agreement(matching: Matching) -> dict[str, tuple[int, int]]:
    """``{field: (agree, total)}`` for every field of :data:`FIELDS` on one matching."""
    pairs = matching.pairs
    result = {"found": (len(pairs), len(pairs) + len(matching.only_a) + len(matching.only_b))}
    for name in PAIR_FIELDS:
        result[name] = (sum(field_value(x, name) == field_value(y, name) for x, y in pairs), len(pairs))
    return result


@dataclass(frozen=True)
class Disagreement:
    """One field on which the backends differ for one finding; ``a`` / ``b`` are the values (for ``found``, the
    entity the backend gave or None)."""

    sentence_index: int
    field: str
    a: Any
    b: Any


def disagreements(matching: Matching) -> list[Disagreement]:
    """Every differing field of the pairs, then the unpaired findings (``found``), in sentence order."""
    found = [Disagreement(x.sentence_index, name, field_value(x, name), field_value(y, name))
             for x, y in matching.pairs for name in PAIR_FIELDS if field_value(x, name) != field_value(y, name)]
    found += [Disagreement(f.sentence_index, "found", f.entity, None) for f in matching.only_a]
    found += [Disagreement(f.sentence_index, "found", None, f.entity) for f in matching.only_b]
    return sorted(found, key=lambda item: item.sentence_index)
