"""ROSALIA (LLaVA + SAM with a ``[SEG]`` token) as a ``transformers`` model.

Importing the package registers ``RosaliaConfig`` with ``AutoConfig``, ``RosaliaForSegmentation`` with
``AutoModel`` and ``RosaliaProcessor`` with ``AutoProcessor``.
"""

from rosalia_hf.configuration_rosalia import RosaliaConfig
from rosalia_hf.modeling_rosalia import RosaliaForSegmentation, RosaliaOutput, RosaliaPreTrainedModel
from rosalia_hf.processing_rosalia import RosaliaProcessor

__version__ = "0.1.0"

__all__ = ["RosaliaConfig", "RosaliaForSegmentation", "RosaliaOutput", "RosaliaPreTrainedModel", "RosaliaProcessor"]
