"""ROSALIA (LLaVA + SAM with a ``[SEG]`` token) as a ``transformers`` model.

The package face is lazy (PEP 562): ``import rosalia_hf`` loads neither torch nor transformers; the first touch of a
name below imports the module that defines it. Each of those modules registers what it defines with the Auto
classes when it is imported: ``RosaliaConfig`` with ``AutoConfig``, ``RosaliaForSegmentation`` with ``AutoModel``,
``RosaliaProcessor`` with ``AutoProcessor``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_NAMES = {
    "RosaliaConfig": "rosalia_hf.configuration_rosalia",
    "RosaliaForSegmentation": "rosalia_hf.modeling_rosalia",
    "RosaliaOutput": "rosalia_hf.modeling_rosalia",
    "RosaliaPreTrainedModel": "rosalia_hf.modeling_rosalia",
    "RosaliaProcessor": "rosalia_hf.processing_rosalia",
    "RosaliaPredictor": "rosalia_hf.predictor",
    "RosaliaError": "rosalia_hf.errors",
}
__all__ = [
    "RosaliaConfig", "RosaliaError", "RosaliaForSegmentation", "RosaliaOutput", "RosaliaPreTrainedModel",
    "RosaliaPredictor", "RosaliaProcessor",
]

if TYPE_CHECKING:  # for type checkers and IDEs only; at run time the names resolve lazily
    from rosalia_hf.configuration_rosalia import RosaliaConfig
    from rosalia_hf.errors import RosaliaError
    from rosalia_hf.modeling_rosalia import RosaliaForSegmentation, RosaliaOutput, RosaliaPreTrainedModel
    from rosalia_hf.predictor import RosaliaPredictor
    from rosalia_hf.processing_rosalia import RosaliaProcessor


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'rosalia_hf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
