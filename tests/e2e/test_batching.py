"""The abstraction layer end to end: adaptive batching, the cache, replicas."""

import concurrent.futures
import os
import signal
import threading

import pytest

from clipper.deployers.python import deploy_python_closure
from tests.e2e import models
from tests.helpers import wait_for

pytestmark = pytest.mark.slow


def deploy(clipper, name, func, slo=100_000, replicas=1):
    clipper.conn.register_application(name, "doubles", "-1", slo)
    deploy_python_closure(clipper.conn, name, "1", "doubles", func, num_replicas=replicas)
    clipper.conn.link_model_to_app(name, name)
    clipper.wait_live(name, replicas)


def model_stats(clipper, name):
    return next(m for m in clipper.status()["models"] if m["model"] == f"{name}:1")


class Load:
    """Closed-loop load from background threads until stopped; distinct inputs."""

    def __init__(self, clipper, app, clients=32):
        self.clipper, self.app = clipper, app
        self.stop = threading.Event()
        self.answers = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _run(self, n):
        i = 0
        while not self.stop.is_set():
            i += 1
            r = self.clipper.predict(self.app, {"input": [float(n), float(i)]})
            self.answers.append((r.status_code, r.json()))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)


def test_batches_grow_under_concurrent_load(clipper):
    deploy(clipper, "econ", models.batch_economics)
    with Load(clipper, "econ"):
        wait_for(lambda: model_stats(clipper, "econ")["batches"] >= 200, what="200 batches")
    stats = model_stats(clipper, "econ")
    assert stats["controller"]["policy"] == "aimd"
    assert stats["mean_batch_size"] > 1.5
    assert stats["max_batch_size"] > 2


def test_a_slow_replica_leaves_what_it_cannot_finish_in_time_to_a_fast_one(clipper, tmp_path):
    # One replica takes 1.5 s a batch (another machine, say), the SLO is
    # 400 ms. Judged by its own latency, it leaves the queries to its fast
    # sibling after its first two batches (the first is not counted: it might
    # be a model load), but for one query now and then to see whether it has
    # become faster (after 1 s idle, then 2 s, 4 s, ...). Judged by the
    # model's estimate, mixed from both replicas, it kept taking a batch
    # whenever idle (in one 10 s run: 8 defaults, against 4 this way).
    claim = tmp_path / "slow-replica"
    deploy(clipper, "hetero", models.make_one_slow_replica(str(claim), 1.5), 400_000, 2)

    def slow_batches():
        by_replica = model_stats(clipper, "hetero")["by_replica"]
        return max((r["batches"] for r in by_replica if r["latency_estimate_ms"] > 1000), default=0)

    with Load(clipper, "hetero", clients=8) as load:
        # Its first two batches, then two tries (after 1 s and 2 s idle).
        wait_for(lambda: slow_batches() >= 4, timeout=120, what="4 batches of the slow replica")
    assert all(code == 200 for code, _ in load.answers)
    answers = [body for _, body in load.answers]
    defaults = [a for a in answers if a["default"]]
    stats = model_stats(clipper, "hetero")
    slow, fast = sorted(stats["by_replica"], key=lambda r: r["batches"])
    assert slow["latency_estimate_ms"] > 1000 > 100 > fast["latency_estimate_ms"]
    assert slow["batches"] <= 5 and fast["batches"] > 100, stats
    # Its first two batches and the tries: a handful of queries, while the
    # fast replica answered hundreds in time.
    assert len(defaults) <= 12, f"{len(defaults)} of {len(answers)} answers were the default"
    assert len(answers) - len(defaults) > 100


def test_a_model_that_slows_down_drives_the_batch_size_down(clipper, tmp_path):
    flag = tmp_path / "slow-now"
    deploy(clipper, "slowable", models.make_slowable(str(flag)))
    with Load(clipper, "slowable") as load:
        wait_for(
            lambda: model_stats(clipper, "slowable")["max_batch_size"] >= 12,
            what="the batch size to grow",
        )
        flag.touch()
        # 20 ms + 3 ms per input fits the 50 ms batch target (half the SLO)
        # only up to 10 inputs: AIMD must back off below that.
        wait_for(
            lambda: model_stats(clipper, "slowable")["max_batch_size"] <= 10,
            what="the batch size to back off",
        )
    assert all(code == 200 for code, _ in load.answers)


def test_duplicate_concurrent_queries_run_the_model_once(clipper):
    deploy(clipper, "counting", models.make_counting(), slo=5_000_000)
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        bodies = list(
            pool.map(lambda _: clipper.predict("counting", {"input": [4.2]}).json(), range(10))
        )
    assert {b["output"] for b in bodies} == {1} and not any(b["default"] for b in bodies)
    stats = model_stats(clipper, "counting")
    assert stats["batches"] == 1 and stats["coalesced"] >= 1
    # Later, the same query is a cache hit; another input computes.
    hits = clipper.status()["cache"]["hits"]
    assert clipper.predict("counting", {"input": [4.2]}).json()["output"] == 1
    assert clipper.status()["cache"]["hits"] == hits + 1
    assert clipper.predict("counting", {"input": [4.3]}).json()["output"] == 2


def test_two_replicas_share_load_and_one_serves_alone_when_the_other_dies(clipper):
    deploy(clipper, "pair", models.pid, slo=5_000_000, replicas=2)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        outs = list(
            pool.map(lambda i: clipper.predict("pair", {"input": [float(i)]}).json(), range(80))
        )
    pids = {o["output"] for o in outs}
    live = {r["pid"] for r in clipper.live_replicas("pair")}
    assert pids == live and len(pids) == 2
    victim = sorted(pids)[0]
    os.kill(victim, signal.SIGKILL)
    outs = [clipper.predict("pair", {"input": [1000.0 + i]}).json() for i in range(20)]
    assert all(not o["default"] for o in outs)
    assert victim not in {o["output"] for o in outs}
