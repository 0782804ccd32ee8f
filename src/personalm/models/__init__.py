"""Text generation, log-prob scoring and embeddings behind one interface."""

from personalm.models.base import Generation, SamplingParams, TextModel, TokenScores
from personalm.models.cache import CachedModel, GenerationCache
from personalm.models.registry import list_models, load_model

__all__ = [
    "CachedModel",
    "Generation",
    "GenerationCache",
    "SamplingParams",
    "TextModel",
    "TokenScores",
    "list_models",
    "load_model",
]
