"""What overload looks like in /metrics and the log (issue #28): the shed counter, the
latency of default answers apart from computed ones, and one log line per episode."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from prometheus_client import CollectorRegistry

from clipper.metrics import Metrics
from clipper.shed_log import ShedLog
from clipper.types import DefaultReason, ModelId
from tests.observability.test_metrics import FakeServer, default, model_stats, ok, scrape

MODEL = ModelId("m", "1")


def test_answer_latency_is_split_into_computed_and_default_per_query() -> None:
    metrics = Metrics(FakeServer().statistics, registry=CollectorRegistry())
    metrics.observe_predictions("a", 0.004, [ok(), ok()])
    metrics.observe_predictions("a", 0.0008, [default(DefaultReason.OVERLOADED)])
    metrics.observe_predictions("a", 0.019, [ok(), default(DefaultReason.SLO)])
    got = scrape(metrics)
    count = got["clipper_app_answer_latency_seconds_count"]
    assert count[(("answer", "computed"), ("app", "a"))] == 3
    assert count[(("answer", "default"), ("app", "a"))] == 2
    total = got["clipper_app_answer_latency_seconds_sum"]
    assert total[(("answer", "computed"), ("app", "a"))] == pytest.approx(2 * 0.004 + 0.019)
    assert total[(("answer", "default"), ("app", "a"))] == pytest.approx(0.0008 + 0.019)
    buckets = got["clipper_app_answer_latency_seconds_bucket"]
    assert buckets[(("answer", "default"), ("app", "a"), ("le", "0.001"))] == 1
    assert buckets[(("answer", "computed"), ("app", "a"), ("le", "0.005"))] == 2
    # The per-request histogram is unchanged: three requests.
    assert got["clipper_app_request_latency_seconds_count"][(("app", "a"),)] == 3


def test_the_shed_counter_comes_from_the_model_statistics() -> None:
    server = FakeServer()
    server.models = [dataclasses.replace(model_stats(), shed=41)]
    got = scrape(Metrics(server.statistics, registry=CollectorRegistry()))
    assert got["clipper_model_shed_total"][(("model", "m"), ("version", "1"))] == 41


def test_shedding_is_logged_once_when_it_starts_and_once_when_it_stops(caplog) -> None:
    caplog.set_level(logging.INFO, logger="clipper.overload")
    shed = ShedLog(quiet_s=10.0)
    other = ModelId("n", "2")
    shed.observe(0.0, [(MODEL, 0), (other, 5)])
    assert not caplog.records  # a first sight is not an episode
    for t, total in ((1.0, 800), (2.0, 2000), (3.0, 2900)):
        shed.observe(t, [(MODEL, total), (other, 5)])
    starts = [r for r in caplog.records if "is shedding" in r.getMessage()]
    assert len(starts) == 1 and starts[0].levelno == logging.WARNING
    assert "model m:1" in starts[0].getMessage() and "800 queries/s" in starts[0].getMessage()
    assert shed.shedding() == [MODEL]
    shed.observe(8.0, [(MODEL, 2900), (other, 5)])  # quiet for 5 s: still an episode
    assert shed.shedding() == [MODEL]
    shed.observe(13.0, [(MODEL, 2900), (other, 5)])  # quiet for 10 s: over
    stops = [r for r in caplog.records if "stopped shedding" in r.getMessage()]
    assert len(stops) == 1 and stops[0].levelno == logging.INFO
    assert "2900 queries shed" in stops[0].getMessage() and "peak 1200/s" in stops[0].getMessage()
    assert shed.shedding() == []
    assert len([r for r in caplog.records if r.name == "clipper.overload"]) == 2


def test_a_deleted_model_ends_its_episode(caplog) -> None:
    caplog.set_level(logging.INFO, logger="clipper.overload")
    shed = ShedLog()
    shed.observe(0.0, [(MODEL, 0)])
    shed.observe(1.0, [(MODEL, 10)])
    shed.observe(2.0, [])
    assert shed.shedding() == []
    assert any("stopped shedding" in r.getMessage() for r in caplog.records)


def test_the_event_loop_lag_is_exported_and_measured_by_the_sampler() -> None:
    import asyncio

    async def main() -> float:
        metrics = Metrics(FakeServer().statistics, registry=CollectorRegistry(),
                          sample_interval_s=0.05)  # fmt: skip
        metrics.start()
        try:
            await asyncio.sleep(0.02)
            # Hold the loop past the sampler's next wake-up: it wakes late.
            import time

            time.sleep(0.15)
            for _ in range(100):
                await asyncio.sleep(0.01)
                if metrics.loop_lag_s > 0.05:
                    break
            return scrape(metrics)["clipper_event_loop_lag_seconds"][()]
        finally:
            await metrics.stop()

    lag = asyncio.run(main())
    assert lag > 0.05
