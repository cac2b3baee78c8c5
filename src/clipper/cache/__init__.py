"""The prediction cache."""

from .prediction_cache import CacheStatistics, PredictionCache, input_digest

__all__ = ["CacheStatistics", "PredictionCache", "input_digest"]
