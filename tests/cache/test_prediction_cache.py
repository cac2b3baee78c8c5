import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipper.cache import PredictionCache, input_digest
from clipper.cache.prediction_cache import ENTRY_OVERHEAD, approx_size


def test_lru_eviction_by_bytes():
    size = ENTRY_OVERHEAD + approx_size("x" * 100)
    cache = PredictionCache(max_bytes=3 * size)
    for i in range(3):
        cache.put(("m", "1", bytes([i])), "x" * 100)
    assert cache.get(("m", "1", b"\x00"))[0]  # touch 0: now 1 is the oldest
    cache.put(("m", "1", b"\x03"), "x" * 100)
    assert not cache.get(("m", "1", b"\x01"))[0]
    assert cache.get(("m", "1", b"\x00")) == (True, "x" * 100)
    stats = cache.statistics()
    assert stats.evictions == 1 and stats.entries == 3 and stats.bytes <= stats.max_bytes


def test_an_output_bigger_than_the_cache_is_not_stored():
    cache = PredictionCache(max_bytes=100)
    assert not cache.put(("m", "1", b"k"), "y" * 1000)
    assert len(cache) == 0


def test_retain_models_drops_deleted_versions():
    cache = PredictionCache()
    cache.put(("m", "1", b"a"), 1)
    cache.put(("m", "2", b"a"), 2)
    assert cache.retain_models({("m", "2")}) == 1
    assert cache.get(("m", "2", b"a")) == (True, 2)


def test_digests_tell_types_shapes_and_values_apart():
    a = np.array([1.0, 2.0])
    assert input_digest(a) == input_digest(np.array([1.0, 2.0]))
    assert input_digest(a) != input_digest(a.astype(np.float32))
    assert input_digest(a) != input_digest(a.reshape(2, 1))
    assert input_digest(b"ab") != input_digest("ab")
    assert input_digest({"a": 1, "b": 2}) == input_digest({"b": 2, "a": 1})


outputs = st.recursive(
    st.none() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    max_bytes=st.integers(min_value=0, max_value=5000),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 20), outputs), max_size=80),
)
def test_never_over_the_bound_and_never_another_inputs_output(max_bytes, ops):
    cache = PredictionCache(max_bytes)
    truth: dict[bytes, object] = {}
    for is_put, k, value in ops:
        key = ("m", "1", input_digest(k))
        if is_put:
            if cache.put(key, value):
                truth[key[2]] = value
        else:
            hit, got = cache.get(key)
            if hit:
                assert got == truth[key[2]]
        assert cache.bytes <= max_bytes
        assert cache.bytes == sum(
            ENTRY_OVERHEAD + approx_size(v) for v in (cache._entries[k][0] for k in cache._entries)
        )


@pytest.mark.parametrize("make_output", [lambda i: i + 1000, lambda i: f"label-{i}"])
def test_the_byte_bound_counts_what_entries_really_take(make_output):
    """The bound is in bytes of memory: the accounting must match what the
    entries really hold (tracemalloc), within a quarter. As in serving, each
    key (its digest) and output is made per query and then held by the cache."""
    import os
    import tracemalloc

    cache = PredictionCache(1 << 40)
    count = 5000
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(count):
            cache.put(("model", "1", os.urandom(16)), make_output(i))
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    real = sum(d.size_diff for d in after.compare_to(before, "filename"))
    assert 0.75 * real <= cache.bytes <= 1.25 * real, (real / count, cache.bytes / count)
