"""The errors of ``rosalia_hf``: each carries one line that a command prints as it is (no traceback).

``mimic_ils`` commands catch :class:`RosaliaError` beside their own ``MimicIlsError``; the model half never imports
the dataset half.
"""

from __future__ import annotations


class RosaliaError(Exception):
    """Base class of every error ``rosalia_hf`` reports as a one-line reason."""


class NotLocalError(RosaliaError):
    """A model, processor, dataset or metric given by a name that is not a local path, while downloads are off."""


class CheckpointConversionError(RosaliaError):
    """A checkpoint that cannot be converted: a missing or mismatched weight file, an unreadable tokenizer."""


class EvaluationError(RosaliaError):
    """An evaluation that cannot start: a model, processor or dataset that cannot be loaded, a missing split."""


class DicomError(RosaliaError):
    """A DICOM file that cannot be turned into an image (corrupt, truncated, no pixel data, unknown photometry)."""


class ImageReadError(RosaliaError):
    """An image file or array that cannot be read as an X-ray (undecodable, empty, of an unsupported shape)."""


class NotAModelError(RosaliaError):
    """A folder given as ``--model`` that is not a saved ``RosaliaForSegmentation`` (no config, another model)."""
