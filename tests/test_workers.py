"""Worker processes (``--workers``): the pieces, without starting a server.

The whole server with two workers is tested in tests/e2e/test_workers.py.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from clipper.batching.model_state import merge_statistics, retire_statistics
from clipper.cache.prediction_cache import CacheStatistics
from clipper.container.runtime import peer_addresses
from clipper.metrics import Metrics, ServerStatistics, retire_counters
from clipper.selection.rollout import Evidence
from clipper.selection.state import SHARED, PolicyStates
from clipper.settings import MAX_WORKERS, Settings, default_workers
from clipper.store import open_store
from clipper.types import AppSpec, InputType, ModelId
from clipper.workers import Channel, Retired
from tests.observability.test_metrics import model_stats

MODEL = ModelId("m", "1")


def test_the_default_is_a_quarter_of_the_cpus_and_at_least_one(tmp_path: Path) -> None:
    assert default_workers() >= 1
    assert Settings(state_dir=tmp_path).workers == default_workers()
    assert Settings(state_dir=tmp_path, workers=3).workers == 3
    for bad in (-1, MAX_WORKERS + 1):
        with pytest.raises(ValueError, match="workers must be 1 to"):
            Settings(state_dir=tmp_path, workers=bad)


def test_a_container_reaches_the_peers_on_the_host_it_was_given() -> None:
    assert peer_addresses("tcp://10.0.0.5:7000", [7101, 7102]) == [
        "tcp://10.0.0.5:7101",
        "tcp://10.0.0.5:7102",
    ]
    # Junk is skipped; duplicates once; only tcp:// addresses have peers.
    assert peer_addresses("tcp://h:1", [0, 70000, "x", True, 5, 5]) == ["tcp://h:5"]
    assert peer_addresses("ipc:///tmp/x", [5]) == []


def test_model_statistics_sum_counters_and_queues_over_workers() -> None:
    own = [model_stats(batches=10, tasks=40)]
    other = [model_stats(batches=30, tasks=30), model_stats(ModelId("n", "1"), 1, 1)]
    merged = {m.model: m for m in merge_statistics(own, [other])}
    m = merged[MODEL]
    assert m.batches == 40 and m.predictions == 70
    assert m.mean_batch_size == pytest.approx(70 / 40)  # weighted by batches
    assert m.queue.depth == 10 and m.queue.enqueued == 80
    assert m.max_batch_size == own[0].max_batch_size  # the supervisor's own controller
    assert ModelId("n", "1") in merged  # a model only a worker has seen
    assert merge_statistics(own, []) == own


def test_an_exited_workers_counters_stay_and_its_gauges_go() -> None:
    last = [model_stats(batches=30, tasks=30)]
    retired = retire_statistics([], last)
    assert retired[0].batches == 30 and retired[0].queue.enqueued == last[0].queue.enqueued
    assert retired[0].replicas == 0 and retired[0].queue.depth == 0
    assert retired[0].in_flight_batches == 0 and retired[0].by_replica == []
    twice = retire_statistics(retired, last)  # the same slot died again
    assert twice[0].batches == 60 and twice[0].queue.depth == 0
    merged = merge_statistics([model_stats(batches=10, tasks=40)], [twice])
    live = model_stats(batches=10, tasks=40).queue.depth
    assert merged[0].batches == 70 and merged[0].queue.depth == live  # no retired depth
    cache = CacheStatistics(hits=1, misses=2, entries=3, bytes=4, max_bytes=5, evictions=6)
    assert cache.counters_only().to_json() == {
        "hits": 1,
        "misses": 2,
        "entries": 0,
        "bytes": 0,
        "max_bytes": 0,
        "evictions": 6,
    }

    def stats() -> ServerStatistics:
        return ServerStatistics(uptime_s=1.0, models=[])

    worker = Metrics(stats)
    worker.observe_feedback("app", True)
    worker.observe_batch(MODEL, 4, 0.002)
    worker.loop_lag_s = 0.5
    gone = retire_counters(None, worker.counters())
    worker.observe_feedback("app", True)  # a retired copy does not follow the process
    assert gone.apps["app"].feedback == [0, 1] and gone.loop_lag_s == 0.0
    gone = retire_counters(gone, worker.counters())
    assert gone.apps["app"].feedback == [0, 3] and gone.batch_sizes[MODEL].total == 8


def test_retired_keeps_every_exited_workers_last_report() -> None:
    def stats() -> ServerStatistics:
        return ServerStatistics(uptime_s=1.0, models=[])

    worker = Metrics(stats)
    worker.observe_feedback("app", True)
    cache = CacheStatistics(hits=1, misses=2, entries=3, bytes=4, max_bytes=5, evictions=6)
    last = {
        "counters": worker.counters(),
        "models": [model_stats(batches=30, tasks=30)],
        "cache": cache,
    }
    retired = Retired()
    retired.add(last)
    retired.add({**last, "cache": None})  # a worker without a cache
    assert retired.counters is not None and retired.counters.apps["app"].feedback == [0, 2]
    assert retired.models[0].batches == 60 and retired.models[0].queue.depth == 0
    assert retired.cache is not None
    assert retired.cache.hits == 1 and retired.cache.entries == 0  # counters only, once


def test_cache_statistics_add_up() -> None:
    a = CacheStatistics(hits=1, misses=2, entries=3, bytes=4, max_bytes=5, evictions=6)
    assert (a + a).to_json() == {k: 2 * v for k, v in a.to_json().items()}


def test_metrics_sum_the_workers_counters() -> None:
    def stats() -> ServerStatistics:
        return ServerStatistics(uptime_s=1.0, models=[model_stats(batches=1, tasks=1)])

    supervisor, worker = Metrics(stats), Metrics(stats)
    supervisor.observe_feedback("app", True)
    worker.observe_feedback("app", True)
    worker.observe_feedback("other", False)
    worker.observe_batch(MODEL, 4, 0.002)
    worker.loop_lag_s = 0.25
    supervisor.peers = lambda: [worker.counters()]
    apps = supervisor.all_apps()
    assert apps["app"].feedback == [0, 2] and apps["other"].feedback == [1, 0]
    assert supervisor.apps["app"].feedback == [0, 1]  # its own counters stay its own
    assert supervisor.all_batch_sizes()[MODEL].total == 4
    text = supervisor.exposition()[0].decode()
    assert 'clipper_app_feedback_total{accepted="true",app="app"} 2.0' in text
    assert "clipper_event_loop_lag_seconds 0.25" in text
    rendered = supervisor.render_formats()
    assert set(rendered) == {
        "text/plain; version=0.0.4; charset=utf-8",
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    }


def test_feedback_through_one_worker_reaches_another_within_the_ttl(tmp_path: Path) -> None:
    """Two workers' policy states over one SQLite store (as two processes have)."""
    url = f"sqlite:///{tmp_path / 'clipper.db'}"
    one, two = open_store(url), open_store(url)
    one.add_app(AppSpec("app", InputType.DOUBLES, "-1", 50_000, policy="exp3"))
    a = PolicyStates(one, ttl_s=0.2)
    b = PolicyStates(two, ttl_s=0.2)
    try:
        initial = {"weights": [1.0, 1.0]}
        assert b.get("app", SHARED, lambda: initial) == initial
        a.update("app", [SHARED], lambda _old: {SHARED: {"weights": [2.0, 1.0]}})
        started = time.monotonic()
        while b.get("app", SHARED, lambda: initial) != {"weights": [2.0, 1.0]}:
            assert time.monotonic() - started < 10, "the update never reached the other worker"
            b.wait_fetches(1.0)
            time.sleep(0.01)
    finally:
        a.close()
        b.close()
        one.close()
        two.close()


def test_the_control_channel_carries_messages_until_closed() -> None:
    async def run() -> None:
        left, right = socket.socketpair()
        a, b = Channel(left), Channel(right)
        await a.open()
        await b.open()
        evidence = Evidence()
        evidence.new.queries = 3
        assert a.send({"type": "stats", "evidence": {"m": ([1], evidence)}})
        got = await b.recv()
        assert got is not None and got["evidence"]["m"][1].new.queries == 3
        a.close()
        assert await b.recv() is None
        assert not a.send({"type": "late"})
        b.close()

    asyncio.run(run())
