"""The rollout router with the query processor: a real dispatcher and scripted
replicas of two versions (no sockets; the end-to-end tests in
tests/e2e/test_rollouts.py use real replicas), on fake timers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from clipper.batching.controllers import FixedBatchSize
from clipper.batching.dispatcher import Dispatcher, ModelConfig
from clipper.cache.prediction_cache import PredictionCache
from clipper.rpc.server import Replica
from clipper.selection.processor import QueryProcessor
from clipper.selection.rollouts import SHADOW_QUEUE_PER_REPLICA, RolloutRouter
from clipper.selection.state import PolicyStates
from clipper.store.catalog import Catalog
from clipper.store.memory import MemoryStore
from clipper.timers import FakeTimers
from clipper.types import AppSpec, InputType, ModelId, ModelSpec, RolloutSpec

BASE, NEW = ModelId("m", "1"), ModelId("m", "2")


class Service:
    """Stands in for the management service: records the decisions."""

    def __init__(self, store: MemoryStore, catalog: Catalog) -> None:
        self.store, self.catalog = store, catalog
        self.stopped: list[tuple[str, bool, str]] = []

    async def stop_rollout(
        self, model: str, promote: bool = False, reason: str = "by hand"
    ) -> dict[str, Any]:
        self.stopped.append((model, promote, reason))
        self.store.delete_rollout(model)
        self.catalog.refresh()
        return {}


class World:
    """A processor and a router; version 1 answers sum(x) + ``base_error(sum(x))``,
    version 2 sum(x) + ``shift`` (or never, when ``new_answers`` is false); ``sent``
    records (version, batch size) for each batch sent."""

    def __init__(self, mode: str, fraction: float | None = None, **kw: Any) -> None:
        self.timers = FakeTimers(1000.0)
        config = ModelConfig(FixedBatchSize(kw.get("batch", 64)))
        self.dispatcher = Dispatcher(
            configure=lambda _m: config, timers=self.timers, cache=PredictionCache(1 << 20)
        )
        self.shift = kw.get("shift", 100.0)
        self.new_answers = kw.get("new_answers", True)
        self.base_error = kw.get("base_error", lambda _s: 0.0)
        self.sent: list[tuple[str, int]] = []
        world = self

        class Transport:
            def send_batch(self, to: Replica, batch_id: int, inputs: Any, *a: Any, **k: Any):
                world.sent.append((to.model.version, len(inputs)))
                if to.model == NEW and not world.new_answers:
                    return True

                def answer(x: Any) -> float:
                    if to.model == NEW:
                        return float(x.sum()) + world.shift
                    return float(x.sum()) + world.base_error(float(x.sum()))

                outputs = [answer(x) for x in inputs]
                loop = asyncio.get_running_loop()
                loop.call_soon(world.dispatcher.batch_done, to, batch_id, outputs)
                return True

        self.dispatcher.set_transport(Transport())
        for model in (BASE, NEW):
            self.dispatcher.replica_joined(
                Replica(model.version.encode(), model, "doubles", None, "t", time.time(), 0.0)
            )
        self.store = MemoryStore()
        for model in (BASE, NEW):
            self.store.add_model(ModelSpec("m", model.version, InputType.DOUBLES))
        self.store.set_current_version("m", "1")
        self.store.add_app(AppSpec("a", InputType.DOUBLES, "-1", 50_000))
        self.store.add_links("a", ["m"])
        spec = RolloutSpec.build("m", "1", "2", mode, fraction, kw.get("limits"), None, 0.0)
        self.store.put_rollout(spec)
        self.catalog = Catalog(self.store)
        self.service = Service(self.store, self.catalog)
        self.processor = QueryProcessor(
            self.catalog, self.dispatcher, PolicyStates(self.store), timers=self.timers
        )
        self.router = RolloutRouter(
            self.catalog, self.dispatcher, self.store, self.service, clock=self.timers.now
        )
        self.processor.rollouts = self.router
        self.route = self.catalog.app("a")

    async def started(self) -> World:
        self.router.sync()
        for _ in range(5):  # the stored evidence is read in a thread
            await asyncio.sleep(0.01)
        assert self.router.active["m"].loaded
        return self


def x(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def run(fn: Any) -> Any:
    return asyncio.run(asyncio.wait_for(fn(), 30))


def test_a_shadow_copy_goes_out_after_the_answer_and_never_changes_it():
    async def go() -> None:
        w = await World("shadow").started()
        settled: list[bool] = []
        future = w.processor.predict_soon(w.route, [x(1, 2)])
        future.add_done_callback(lambda _f: settled.append(True))
        answer = await future
        assert answer[0].output == 3.0 and not answer[0].default
        assert w.sent == [("1", 1)]  # the copy is not out yet
        await asyncio.sleep(0.01)
        assert settled and w.sent == [("1", 1), ("2", 1)]
        live = w.router.active["m"]
        assert live.evidence.base.queries == 1 and live.evidence.new.queries == 1
        assert live.evidence.compared == 1 and live.evidence.agreed == 0  # 3 vs 103
        # A label scores both versions on the same input, from the cache.
        await w.processor.feedback(w.route, "", x(1, 2), 3.0)
        assert live.evidence.paired == 1
        assert live.evidence.paired_loss_base == 0.0 and live.evidence.paired_loss_new == 1.0
        assert w.sent == [("1", 1), ("2", 1)]  # nothing computed again

    run(go)


def test_shadow_copies_are_dropped_while_the_new_version_is_busy():
    async def go() -> None:
        w = await World("shadow", new_answers=False, batch=1).started()
        for i in range(20):
            await w.processor.predict_soon(w.route, [x(float(i))])
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        live = w.router.active["m"]
        # One copy on the replica (it never answers), SHADOW_QUEUE_PER_REPLICA queued,
        # the rest dropped; every real query was answered meanwhile.
        assert live.evidence.shadow_dropped == 20 - 1 - SHADOW_QUEUE_PER_REPLICA
        assert w.dispatcher.queued(NEW) == SHADOW_QUEUE_PER_REPLICA
        assert [v for v, _ in w.sent].count("2") == 1
        assert live.evidence.base.queries == 20  # every real query answered

    run(go)


def test_a_canary_routes_by_uid_and_counts_each_version():
    async def go() -> None:
        w = await World("canary", 0.5).started()
        outputs = {}
        for i in range(200):
            (p,) = await w.processor.predict_soon(w.route, [x(1.0)], uid=f"u{i}")
            outputs[f"u{i}"] = p.output
        new = sum(1 for v in outputs.values() if v == 101.0)
        assert 70 < new < 130, new
        for uid in ("u1", "u2", "u3"):  # the same version again
            (p,) = await w.processor.predict_soon(w.route, [x(1.0)], uid=uid)
            assert p.output == outputs[uid]
        ev = w.router.active["m"].evidence
        assert ev.base.queries + ev.new.queries == 203
        # A label finds the version that answered this user's query.
        await w.processor.feedback(w.route, "u1", x(1.0), 101.0)
        scored = ev.new if outputs["u1"] == 101.0 else ev.base
        assert scored.feedback == 1
        # A pinned version stays out of the rollout.
        (p,) = await w.processor.predict_soon(w.route, [x(1.0)], version="2")
        assert p.output == 101.0 and ev.base.queries + ev.new.queries == 203

    run(go)


def test_the_bandit_promotes_through_the_service_and_logs_the_figures(caplog):
    async def go() -> None:
        # Labels are sum(x): version 2 is always right, version 1 on even sums only.
        w = await World(
            "bandit", 0.5, shift=0.0, base_error=lambda s: s % 2, limits={"min_feedback": 30}
        ).started()
        for i in range(400):
            uid = f"u{i}"
            await w.processor.predict_soon(w.route, [x(float(i))], uid=uid)
            await w.processor.feedback(w.route, uid, x(float(i)), float(i))
            await asyncio.sleep(0)
            if w.service.stopped:
                break
        assert w.service.stopped and w.service.stopped[0][:2] == ("m", True)
        assert "new version is better" in w.service.stopped[0][2]

    with caplog.at_level("WARNING", logger="clipper.rollouts"):
        run(go)
    assert any(
        "rollout_decision model=m" in r.message and "promote" in r.message for r in caplog.records
    )


def test_evidence_is_saved_and_read_back_by_a_new_router():
    async def go() -> None:
        w = await World("canary", 0.5).started()
        for i in range(10):
            await w.processor.predict_soon(w.route, [x(1.0)], uid=f"u{i}")
        await w.router.save()
        stored = w.store.get_rollout_evidence("m")
        assert stored is not None
        assert stored["base"]["queries"] + stored["new"]["queries"] == 10
        again = RolloutRouter(w.catalog, w.dispatcher, w.store, clock=w.timers.now)
        again.sync()
        for _ in range(5):
            await asyncio.sleep(0.01)
        ev = again.active["m"].evidence
        assert ev.base.queries + ev.new.queries == 10
        # A blob another rollout of the model left behind is not inherited.
        w.store.save_rollout_evidence("m", {**stored, "rollout": ["9", "1", 0.0]})
        third = RolloutRouter(w.catalog, w.dispatcher, w.store, clock=w.timers.now)
        third.sync()
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert third.active["m"].loaded and third.active["m"].evidence.base.queries == 0

    run(go)


def test_an_ended_rollout_is_forgotten_and_queries_go_back_to_the_current_version():
    async def go() -> None:
        w = await World("canary", 1.0).started()
        (p,) = await w.processor.predict_soon(w.route, [x(1.0)], uid="u")
        assert p.output == 101.0
        w.store.delete_rollout("m")
        w.catalog.refresh()
        w.router.sync()
        assert w.router.rollout_report("m") is None
        (p,) = await w.processor.predict_soon(w.route, [x(1.0)], uid="u")
        assert p.output == 1.0

    run(go)


def test_the_per_version_prometheus_series():
    from clipper.metrics import rollout_families

    async def go() -> None:
        w = await World("canary", 0.5).started()
        for i in range(40):
            await w.processor.predict_soon(w.route, [x(1.0)], uid=f"u{i}")
        await w.processor.feedback(w.route, "u1", x(1.0), 1.0)
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in rollout_families(w.router.snapshot())
            for s in family.samples
        }
        ev = w.router.active["m"].evidence
        for role, version, figures in (("base", "1", ev.base), ("new", "2", ev.new)):
            labels = (("mode", "canary"), ("model", "m"), ("role", role), ("version", version))
            assert samples[("clipper_rollout_queries_total", labels)] == figures.queries
            assert samples[("clipper_rollout_errors_total", labels)] == 0
        assert samples[("clipper_rollout_new_share", (("model", "m"),))] == 0.5
        assert sum(v for (n, _), v in samples.items() if n == "clipper_rollout_queries_total") == 40
        assert any(n == "clipper_rollout_latency_seconds" for n, _ in samples)

    run(go)
