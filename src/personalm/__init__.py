"""personalm: make language models personal, and measure it."""

from personalm.errors import PersonalmError
from personalm.models.base import Generation, SamplingParams, TextModel, TokenScores
from personalm.models.registry import load_model

__version__ = "0.1.0"

__all__ = [
    "Generation",
    "PersonalmError",
    "SamplingParams",
    "TextModel",
    "TokenScores",
    "__version__",
    "load_model",
]
