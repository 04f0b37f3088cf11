"""The splits of a MIMIC-ILS folder and their other names, once for both packages.

A build writes ``train``, ``validation`` and ``test`` (the Hugging Face names). ``validate`` (MIMIC-CXR's split
CSV, and folders built before the rename) and ``val`` (the authors' release) name the validation split too, wherever
a user names a split or a folder stores one.
"""

from __future__ import annotations

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"validate": "validation", "val": "validation"}


def canonical_split(name: str) -> str:
    """The dataset's name of a split: ``validate`` and ``val`` are ``validation``; any other name is unchanged."""
    return SPLIT_ALIASES.get(name, name)


def split_names(split: str) -> tuple[str, ...]:
    """Every name a split may be stored under, its dataset name first (``validation``, ``validate``, ``val``)."""
    split = canonical_split(split)
    return (split, *(alias for alias, name in SPLIT_ALIASES.items() if name == split))


__all__ = ["SPLITS", "SPLIT_ALIASES", "canonical_split", "split_names"]
