"""The ``conversations`` configuration: an image's pairs as multi-turn conversations (beyond the paper).

Every pair of an image is used once: the pairs are dealt into conversations of 2 to 4 turns, each turn a pair of the
``pairs`` config with its own ``[SEG]`` and mask, so that a model learns to answer follow-up questions about the same
image ("Segment the effusion in the left lung base." → "Segment the opacity in the right lung base and predict its
type." → "The patient presents with fever. Segment the finding that could explain it."). The question types are
mixed: the pairs of each type are shuffled, then taken in turn from each type (in a shuffled order of types) before
the sequence is cut into conversations; an image with a single pair has no conversation. The sizes are drawn from
2, 3 and 4, never leaving a single pair over. Every draw comes from a generator seeded by the image's dicom id, so
the conversations do not depend on the build's order, shards or engine.

A conversation with a positive turn opens with one (its first positive is moved to the front). This is what
``datasets`` needs: it encodes and decodes the images of a list (``turns[*].mask``) only when the first element of the
list has one, so a conversation that opened with a negative (no mask) would load its later masks as bare paths (and
the ``images`` config's pairs open with the image's positives for the same reason). ``tests/test_conversations.py``
loads a folder of more than one writer batch to hold this.

All the turns of a conversation are true of its image at once (they are pairs of one image, after Appendix C's
rules), so no turn contradicts another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from mimic_ils.rows import ConversationRow, PairRow

MIN_TURNS, MAX_TURNS = 2, 4


def _rng(dicom_id: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{dicom_id}\x00conversations".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def conversation_sizes(count: int, rng: np.random.Generator) -> list[int]:
    """Sizes in [2, 4] that add up to ``count`` (none for fewer than two pairs), drawn so that no pair is left."""
    sizes, left = [], count
    while left >= MIN_TURNS:
        allowed = [size for size in range(MIN_TURNS, MAX_TURNS + 1) if size == left or left - size >= MIN_TURNS]
        size = allowed[int(rng.integers(len(allowed)))]
        sizes.append(size)
        left -= size
    return sizes


def mixed_order(pairs: Sequence[PairRow], rng: np.random.Generator) -> list[PairRow]:
    """The pairs with their question types interleaved: each type's pairs shuffled, the types in a shuffled order,
    then one pair of each type in turn."""
    types = sorted({pair.question_type for pair in pairs})
    groups = {kind: [pair for pair in pairs if pair.question_type == kind] for kind in types}
    for kind in types:
        groups[kind] = [groups[kind][int(i)] for i in rng.permutation(len(groups[kind]))]
    order = [types[int(i)] for i in rng.permutation(len(types))]
    out = []
    while any(groups.values()):
        for kind in order:
            if groups[kind]:
                out.append(groups[kind].pop(0))
    return out


def image_conversations(pairs: Sequence[PairRow]) -> list[ConversationRow]:
    """The conversations of one image from its pairs (rows of one dicom id, in the pairs config's order)."""
    if not pairs:
        return []
    if len({pair.dicom_id for pair in pairs}) != 1:
        raise ValueError("image_conversations takes the pairs of one image")
    rng = _rng(pairs[0].dicom_id)
    ordered = mixed_order(pairs, rng)
    first = pairs[0]
    rows, start = [], 0
    for number, size in enumerate(conversation_sizes(len(ordered), rng)):
        rows.append(ConversationRow(f"{first.dicom_id}-c{number:02d}", first.image_file_name, first.study_id,
                                    first.dicom_id, first.split, positive_first(ordered[start:start + size])))
        start += size
    return rows


def positive_first(turns: Sequence[PairRow]) -> tuple[PairRow, ...]:
    """The turns with the first one that has a mask moved to the front (see the module docstring)."""
    index = next((i for i, turn in enumerate(turns) if turn.mask_file_name is not None), 0)
    return (turns[index], *turns[:index], *turns[index + 1:])
