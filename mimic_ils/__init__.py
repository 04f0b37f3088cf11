"""MIMIC-ILS: regenerate the instruction-guided lesion segmentation dataset from a local MIMIC-CXR copy."""

__version__ = "0.1.0"
