"""The prediction cache."""

from .coalesce import Coalescer
from .prediction_cache import CacheStatistics, PredictionCache, input_digest

__all__ = ["CacheStatistics", "Coalescer", "PredictionCache", "input_digest"]
