"""A replica's latency estimate and its probing, on times the test chooses (no clock)."""

import pytest

from clipper.batching.estimate import PROBE_AFTER_S, PROBE_MAX_S, LatencyEstimate


def test_the_first_batch_is_left_out_then_the_estimate_is_weighted():
    e = LatencyEstimate()
    e.observe(5.0)  # the first: it may have loaded the model
    assert e.latency == 0.0 and e.answered
    e.observe(0.1)  # the second seeds it
    assert e.latency == pytest.approx(0.1)
    e.observe(0.2)
    assert e.latency == pytest.approx(0.8 * 0.1 + 0.2 * 0.2)


def test_a_replica_probes_only_when_slower_than_the_fastest_and_idle_long_enough():
    e = LatencyEstimate()
    e.observe(0.0)
    e.observe(0.05)
    e.idle(100.0)
    assert not e.may_probe(100.0 + PROBE_AFTER_S - 0.001, fastest_s=0.005)
    assert e.may_probe(100.0 + PROBE_AFTER_S, fastest_s=0.005)
    assert not e.may_probe(100.0 + PROBE_AFTER_S, fastest_s=0.05)  # it is the fastest


def test_a_probe_restarts_the_estimate_from_its_batch():
    e = LatencyEstimate()
    e.observe(0.0)
    e.observe(0.05)
    e.probed(True)
    e.observe(0.004)  # it has become fast: taken as it is, not averaged in
    assert e.latency == pytest.approx(0.004) and not e.probing
    e.observe(0.004)
    assert e.latency == pytest.approx(0.004)


def test_each_probe_in_a_row_doubles_the_wait_up_to_the_cap_and_a_batch_resets_it():
    e = LatencyEstimate()
    waits = []
    for _ in range(10):
        waits.append(e.probe_wait)
        e.probed(True)
        e.observe(0.05)
    assert waits[:4] == [PROBE_AFTER_S, 2 * PROBE_AFTER_S, 4 * PROBE_AFTER_S, 8 * PROBE_AFTER_S]
    assert max(waits) == e.probe_wait == PROBE_MAX_S
    e.probed(False)  # nothing to probe with: the wait stays, and it is not probing
    assert e.probe_wait == PROBE_MAX_S and not e.probing
    e.took_batch()
    assert e.probe_wait == PROBE_AFTER_S


def test_shrink_halves_the_estimate():
    e = LatencyEstimate()
    e.observe(0.0)
    e.observe(0.4)
    e.shrink()
    e.shrink()
    assert e.latency == pytest.approx(0.1)
