"""Grounding: anomaly map (Eq. 1), Algorithm 1 lesion masks, location verification, quality control.

Pure NumPy / SciPy; nothing here imports torch. The build calls :func:`ground_image` once per frontal image.
"""

from mimic_ils.grounding.config import GroundingConfig, QcConfig, RefineConfig, Thresholds
from mimic_ils.grounding.pipeline import ImageGrounding, ground_image

__all__ = ["GroundingConfig", "ImageGrounding", "QcConfig", "RefineConfig", "Thresholds", "ground_image"]
