"""A prediction cache bounded by bytes, with least-recently-used eviction (pure).

Keys are (model name, version, digest of the input's bytes); values are
model outputs. Coalescing of concurrent identical queries (a pending entry
that later queries attach to) is ``coalesce.Coalescer``, in front of this
cache; this module holds only finished outputs.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import orjson

CacheKey = tuple[str, str, bytes]
# Bytes an entry costs besides its output: the key tuple and its digest, the
# (output, size) tuple and the size, the ordered dict's slot and link. Measured
# with tracemalloc (tests/cache: an int output costs 275 bytes in all).
ENTRY_OVERHEAD = 248


@dataclass(frozen=True)
class CacheStatistics:
    hits: int
    misses: int
    entries: int
    bytes: int
    max_bytes: int
    evictions: int

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def to_json(self) -> dict[str, int]:
        """As ``/admin/status`` and the dashboard report it (``cache``)."""
        return asdict(self)

    def __add__(self, other: CacheStatistics) -> CacheStatistics:
        """Two worker processes' caches together (``--workers``: one cache each)."""
        mine, theirs = asdict(self), asdict(other)
        return CacheStatistics(**{k: v + theirs[k] for k, v in mine.items()})

    def counters_only(self) -> CacheStatistics:
        """Its counters, its size gauges zero (an exited worker's, kept in the sums)."""
        return replace(self, entries=0, bytes=0, max_bytes=0)


def input_digest(value: Any) -> bytes:
    """A 16-byte digest of one validated input.

    Arrays hash their dtype, shape and raw bytes, so ``[1, 2]`` as int32 and
    as float64 differ; JSON values hash their canonical encoding.
    """
    h = hashlib.blake2b(digest_size=16)
    if isinstance(value, np.ndarray):
        h.update(f"{value.dtype.str}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).data)
    elif isinstance(value, bytes):
        h.update(b"b")
        h.update(value)
    elif isinstance(value, str):
        h.update(b"s")
        h.update(value.encode("utf-8", "surrogatepass"))
    else:
        h.update(b"j")
        h.update(orjson.dumps(value, option=orjson.OPT_SORT_KEYS))
    return h.digest()


def approx_size(value: Any) -> int:
    """A cheap estimate of an output's memory, for the byte bound."""
    if isinstance(value, (str, bytes)):
        return 49 + len(value)
    if isinstance(value, (list, tuple)):
        return 56 + 8 * len(value) + sum(approx_size(v) for v in value)
    if isinstance(value, dict):
        return 232 + sum(approx_size(k) + approx_size(v) for k, v in value.items())
    return 32


class PredictionCache:
    """LRU over finished outputs, never more than ``max_bytes`` in total."""

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[CacheKey, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: CacheKey) -> tuple[bool, Any]:
        """``(True, output)`` on a hit (and mark it recently used), else ``(False, None)``."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return False, None
        self._entries.move_to_end(key)
        self.hits += 1
        return True, entry[0]

    def put(self, key: CacheKey, output: Any) -> bool:
        """Store an output; False if it alone exceeds the bound (not stored)."""
        size = ENTRY_OVERHEAD + approx_size(output)
        if size > self.max_bytes:
            return False
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        self._entries[key] = (output, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._bytes -= evicted
            self.evictions += 1
        return True

    def retain_models(self, keep: set[tuple[str, str]]) -> int:
        """Drop the entries of model versions not in ``keep`` (deleted ones,
        whose name may be reused by a new artifact); returns how many."""
        doomed = [k for k in self._entries if (k[0], k[1]) not in keep]
        for key in doomed:
            self._bytes -= self._entries.pop(key)[1]
        return len(doomed)

    def statistics(self) -> CacheStatistics:
        return CacheStatistics(
            self.hits, self.misses, len(self._entries), self._bytes, self.max_bytes, self.evictions
        )
