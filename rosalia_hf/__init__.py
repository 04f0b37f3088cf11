"""ROSALIA (LLaVA + SAM with a ``[SEG]`` token) as a ``transformers`` model."""

__version__ = "0.1.0"
