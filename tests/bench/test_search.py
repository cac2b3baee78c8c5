"""The benchmarks' goodput search (bench/batching.py ``search_rate``), on passing
curves the test chooses: no server."""

from __future__ import annotations

from bench.batching import search_rate


def run(curve, start, hinted=False):
    tried: list[float] = []

    def passes(rate: float) -> bool:
        tried.append(rate)
        return curve(rate)

    found = search_rate(passes, start, hinted=hinted, precision=0.08, max_probes=8)
    return found, tried


def test_a_monotonic_server_is_bracketed_and_bisected_and_rechecked_once():
    found, tried = run(lambda r: r <= 1234, 500)
    assert 1234 * 0.92 <= found <= 1234
    above = [r for r in tried if r > 1234]
    assert tried[-1] == round(found * 1.5 / 10) * 10  # the recheck above: it failed
    assert len(above) <= 4  # the bracket's first miss, the bisect's, the recheck


def test_a_band_that_fails_below_the_limit_does_not_end_the_search():
    # Fails between 450 and 600 only (lone queries keep the replica busy there),
    # passes again up to 1,400: the goodput is the highest rate that passes.
    def curve(rate: float) -> bool:
        return not 450 < rate < 600 and rate <= 1400

    found, tried = run(curve, 150)
    assert 1400 * 0.85 <= found <= 1400, tried
    assert any(450 < r < 600 for r in tried)  # it did meet the band


def test_nothing_passes():
    found, tried = run(lambda r: False, 400)
    assert found == 0 and min(tried) == 10
